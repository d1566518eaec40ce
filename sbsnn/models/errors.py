"""Errors raised while reading models and checkpoints."""


class CheckpointError(ValueError):
    """A checkpoint or config cannot be used; the message names the file and tensor."""
