"""Data: the datasets and their on-disk layouts, the augmentation, continuum's class-incremental
scenarios and the memory task sets, the samplers and loaders of the training phases."""
