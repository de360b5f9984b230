"""Extraction and batch prediction on a Ray cluster (docs/scaleout.md); needs the ``ray`` extra."""
