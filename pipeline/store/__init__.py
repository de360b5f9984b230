"""The HDF5 feature store (layout, reading, crash-safe writing) and the extract stage that fills it from images,
here or on a cluster; also a scikit-learn transformer from image paths to cached codes."""
