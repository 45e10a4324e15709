"""User-facing errors: the CLI prints their message (no traceback) and exits non-zero."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class CilbenchError(Exception):
    """Bad input or a missing resource the user can fix; the message says how."""


class RegistryError(CilbenchError, KeyError):
    """An unknown or duplicate registered name."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class ConfigError(CilbenchError, ValueError):
    """A configuration key or value that does not fit the schema."""


class DataError(CilbenchError):
    """Data set files missing, incomplete or damaged."""


class CorruptFileError(CilbenchError):
    """A cache, checkpoint or result file failed validation."""


class WeightsUnavailableError(CilbenchError):
    """Backbone weights that are neither cached locally nor downloadable now."""


class DiskFullError(CilbenchError, OSError):
    """No space left while writing a file; nothing was half-written."""


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """' Did you mean 'x'?' for the closest choice, or '' when nothing is close."""
    close = difflib.get_close_matches(name, list(choices), n=3, cutoff=0.6)
    if not close:
        return ""
    return " Did you mean " + " or ".join(repr(c) for c in close) + "?"
