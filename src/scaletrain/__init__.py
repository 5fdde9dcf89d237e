"""scaletrain: train large models with torch.distributed, from raw data to a deployable model."""
__version__ = "0.1.0"
