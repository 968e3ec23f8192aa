"""Support for the techniques: the measurement kit, devices, datasets, the cache, the training loop, optional packages, plots."""

from minilib.support.threads import use_usable_cpus

use_usable_cpus()   # PyTorch sees the host's cores; a quota (Binder, a hub) or taskset may allow fewer
