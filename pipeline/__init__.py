"""Transfer learning from ImageNet-pretrained convnets: extract CNN codes, fit, fine-tune, report."""

import os

# Before TensorFlow is first imported: keep its C++ start-up chatter off the user's terminal.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

__version__ = "0.1.0"
