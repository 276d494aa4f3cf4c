"""The one exception family of pcv. CLIs print the message (no traceback) and exit non-zero."""

from __future__ import annotations


class PcvError(Exception):
    """Base of every error pcv raises on purpose; the message says what to do."""


class InputError(PcvError):
    """An input file cannot be read at all (missing, unknown format, wrong field names)."""


class ModelError(PcvError):
    """A model file or directory cannot be used (missing, corrupt, untrusted, wrong contract)."""


class ConfigError(PcvError, ValueError):
    """An option or setting out of range (a ValueError too, as Python code expects of a bad argument)."""


class ProviderError(PcvError):
    """An execution provider that was asked for is not available."""
