"""Image transforms: detector input, top-down crops, normalisation, training augmentation."""
