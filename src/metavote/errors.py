"""Exceptions raised by metavote.

Every error a user can cause by bad input derives from :class:`MetavoteError`;
the CLI turns it into one line on stderr and a non-zero exit, with no traceback.
"""

from __future__ import annotations


class MetavoteError(Exception):
    """Base class of every error metavote raises on purpose."""


class ConfigError(MetavoteError, ValueError):
    """A parameter is out of range or inconsistent (ratio, width, seed, N...)."""


class DataNotFoundError(MetavoteError, FileNotFoundError):
    """No dataset was found in any of the places searched."""


class DataError(MetavoteError):
    """A data file exists but is truncated, corrupt or of an unexpected layout."""


class TaskError(MetavoteError, ValueError):
    """A task cannot be formed: unknown class names, N too large, duplicate classes."""


class CheckpointError(MetavoteError):
    """A weights file does not match the architecture (keys or shapes), or is unreadable."""


def one_line(error: BaseException | str, limit: int = 300) -> str:
    """An error message folded onto one line (library messages may span several), cut at ``limit``."""
    text = " ".join(str(error).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
