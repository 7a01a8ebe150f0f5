"""Errors that mean "the input is wrong" or "the run failed", as opposed to a bug.

``centerloss.cli.main`` turns them into one line on stderr and an exit code (no traceback unless
``CENTERLOSS_DEBUG=1``):

====  ==========================================================================================
code  meaning
====  ==========================================================================================
0     success (``verify``: same person)
1     the run failed: training diverged, the disk filled up, an unexpected internal error
      (``verify``: different people)
2     bad input or usage: a missing/corrupt/malformed file, a bad config key or value, a refused
      output folder
130   interrupted (Ctrl-C); whatever was written is complete, and ``--resume`` continues exactly
====  ==========================================================================================
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class CenterLossError(Exception):
    """Base class for user-facing errors raised by centerloss; ``exit_code`` is what the CLI returns."""

    exit_code = EXIT_USAGE


class DataError(CenterLossError, ValueError):
    """A dataset, file or protocol is missing, unreadable or malformed (exit 2)."""


class ConfigError(CenterLossError, ValueError):
    """A config key, value, preset or command-line option is wrong (exit 2)."""


class RunError(CenterLossError):
    """The run itself failed although its input was acceptable (exit 1)."""

    exit_code = EXIT_FAILED


class NonFiniteLossError(RunError, FloatingPointError):
    """Training produced NaN/Inf; no optimizer step was taken from it, and the last good checkpoint is kept."""


class LockedError(DataError):
    """Another process holds the output folder (exit 2)."""


class Note(UserWarning):
    """A non-fatal message for the user (e.g. a feature cache that could not be written). The CLI prints it as
    ``warning: ...`` once the command has succeeded; a command that fails prints only its one error line."""
