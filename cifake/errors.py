"""Errors that the entry points report as one clear message instead of a traceback."""


class CifakeError(Exception):
    """Base class: something the user can fix (data, config, checkpoint)."""


class DataError(CifakeError):
    """The dataset is missing, laid out wrongly, or holds files that cannot be used."""


class ConfigError(CifakeError, ValueError):
    """A configuration value is missing, of the wrong kind or out of range (also a ``ValueError``,
    so library callers can catch it as one)."""
