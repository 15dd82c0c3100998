"""From a dataset to crops ready for training: decoding, cropping, the crop store, split protocols."""
