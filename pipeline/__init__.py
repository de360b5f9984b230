"""Transfer learning from ImageNet-pretrained convnets: extract CNN codes, fit, fine-tune, report."""

__version__ = "0.1.0"
