"""Errors a user can act on: each says what was wrong, where, and what to do."""


class FedSeqRecError(Exception):
    """Base class for errors that the CLI reports as one readable line (exit code 2)."""


class ConfigError(FedSeqRecError, ValueError):
    """An unknown, mistyped or out-of-range configuration key."""


class DataError(FedSeqRecError, ValueError):
    """An interactions file that cannot be read as user-item-time rows."""
