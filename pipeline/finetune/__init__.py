"""The fine-tuning stage: a new head on the pretrained base, trained from cached activations (tail mode, the
CPU's) or on augmented pixels (full mode, the GPU's), with its activation cache, optimizers and curves."""
