"""User-facing errors: one exception type the CLI turns into a message instead of a stack trace."""

from __future__ import annotations


class FedrecError(Exception):
    """A mistake the user can fix (bad input, bad config); the message says what and how."""


class DataError(FedrecError):
    """Input data is unusable as given: the message names the file, the row/column and the fix."""


class ConfigError(FedrecError):
    """A configuration value is invalid: the message names the key, the value and the fix."""
