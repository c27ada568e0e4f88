"""The process and its machine: the process group and its collectives (the only user of
``torch.distributed``), the device and what depends on it, pre-emption signals, the random state,
host memory, and files that a crash cannot leave half-written. Nothing here knows the model."""
