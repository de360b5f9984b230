"""Images in: finding them (class folders, CSV manifests, unlabelled folders), decoding any file robustly into a
backbone's input, batching them on a thread pool, and the label-preserving views and augmentation of them."""
