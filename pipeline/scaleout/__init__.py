"""Extraction and batch prediction on a Ray cluster (README, "Scaling out"); needs the ``ray`` extra."""
