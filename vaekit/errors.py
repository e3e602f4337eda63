"""Errors vaekit raises for bad input; the CLI prints them as one line and exits with code 2."""

__all__ = ["VaekitError", "ConfigError", "DataError", "CheckpointError", "TrainingError"]


class VaekitError(ValueError):
    """Base class: a problem with what the user asked for, with the fix in the message."""


class ConfigError(VaekitError):
    """An invalid setting (likelihood, β, z_dim, image size, device ...)."""


class DataError(VaekitError):
    """Data that is missing, unreadable or out of range for the likelihood."""


class CheckpointError(VaekitError):
    """A run folder or checkpoint that cannot be read or does not match."""


class TrainingError(VaekitError):
    """Training that cannot go on (a non-finite loss); the last good checkpoint is kept."""
