"""Evaluation reports: the grid that compares backbones, layers, classifiers and fine-tuning on shared folds, a
saved bundle's report on new images, their typed content, figures, and report.json, report.md and report.html."""
