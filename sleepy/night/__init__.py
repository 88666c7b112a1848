"""The night: verified training targets, LoRA training, subspaces."""
