"""Errors raised while reading models and checkpoints (defined in :mod:`sbsnn.errors`)."""

from sbsnn.errors import (CheckpointError, CheckpointKindError, ConfigError, IntegrityError,
                          SafetensorsError)

__all__ = ["CheckpointError", "CheckpointKindError", "ConfigError", "IntegrityError",
           "SafetensorsError"]
