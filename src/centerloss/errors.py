"""Errors that mean "the input is wrong", as opposed to a bug. The CLI prints these without a traceback."""


class CenterLossError(Exception):
    """Base class for user-facing errors raised by centerloss."""


class DataError(CenterLossError, ValueError):
    """A dataset, file or protocol is missing, unreadable or malformed."""


class NonFiniteLossError(CenterLossError, FloatingPointError):
    """Training produced NaN/Inf; the last good checkpoint is kept."""
