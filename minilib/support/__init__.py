"""Support for the techniques: the measurement kit, devices, datasets, the cache, the training loop, optional packages, plots."""
