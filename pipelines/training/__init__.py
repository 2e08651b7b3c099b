"""The one training engine and its recipes (classifier, MIL, slide fusion, MPCS), checkpoints, DDP and splits."""
