"""Deciding how far to go beyond linear codes: the advisor places a dataset in one of the four situations (small
or large, like ImageNet or not), and the whole pipeline in one call keeps the better model."""
