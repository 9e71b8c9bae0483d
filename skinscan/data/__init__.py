"""Data: storage (any fsspec URI, archives in place), image decoding, the one input path (`preprocess`),
manifests, lesion-grouped splits, oversampling, masks, synthetic data, class taxonomy, augmentation and the
torch Dataset. Imports only `skinscan.config` and `skinscan.errors` from the project."""
