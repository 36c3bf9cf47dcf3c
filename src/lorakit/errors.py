"""Exceptions a user can cause. The CLI prints these as one clear line, never a traceback."""

from __future__ import annotations


class LorakitError(ValueError):
    """A problem with the user's input: a config value, a model/adapter mismatch, a bad file."""


class ConfigError(LorakitError):
    """A config value or key is invalid."""


class TargetError(LorakitError):
    """target_modules (or a related setting) selected no layer, or a layer type lorakit cannot adapt."""


class AdapterError(LorakitError):
    """An adapter name is unknown or already taken, or an operation does not apply to its state."""


class AdapterFileError(LorakitError):
    """An adapter directory is missing, corrupt, or does not fit the model it is loaded onto."""


class MergeError(LorakitError):
    """A merge would write non-finite values, or the layer cannot be merged."""
