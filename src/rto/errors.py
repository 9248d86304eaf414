"""User-facing errors: the CLI prints their message (no traceback) and exits with status 2."""


class RtoError(Exception):
    """Something the user can fix: bad input, bad config, incompatible models."""


class DataError(RtoError):
    """A data file or dataset that cannot be used as given (names the file, line or field)."""


class ConfigError(RtoError):
    """A configuration value or field that is invalid (names the field)."""


class NonFiniteError(RtoError):
    """A loss, reward, advantage or gradient became NaN/inf (names the quantity and the step)."""
