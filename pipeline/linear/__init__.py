"""Linear models on cached codes: the registry of model kinds, scaling, nested cross-validation, the streamed fit
for codes over the memory budget, near-duplicates, the "unknown" threshold, and the fit stage with its bundles."""
