"""Errors a user can cause. The CLI prints their message on one line and exits non-zero.

``UsageError`` (exit 2) is for what the user typed; ``XlsteerError`` (exit 1) for what went
wrong at run time with valid arguments (bad files, missing statistics, ...).
"""

from __future__ import annotations


class XlsteerError(Exception):
    """A failure the user can fix; the message says what is wrong and how to fix it."""

    exit_code = 1


class UsageError(XlsteerError):
    """Invalid arguments or options (exit code 2, as for any usage error)."""

    exit_code = 2


class DataError(XlsteerError):
    """Missing, malformed or misaligned data files."""


class ModelError(XlsteerError):
    """A model that cannot be loaded, or an architecture that is not supported."""


class SiteError(UsageError):
    """An unknown site name or a layer out of range."""


class LanguageError(UsageError):
    """An unknown or ambiguous language code, or a language without statistics."""


class PluginError(UsageError):
    """A plugin that cannot be found or fails while it loads (one line naming the plugin and the error)."""


class FingerprintError(XlsteerError):
    """An artifact was made for another model (or another width)."""


class ArtifactError(XlsteerError):
    """A corrupted, truncated or incomplete artifact file."""


class XlsteerWarning(UserWarning):
    """Something the user should know that does not stop the run (the CLI prints it as one line)."""


class Terminated(BaseException):
    """SIGTERM arrived (raised by the CLI's handler): unwind like Ctrl-C, so nothing is half-written."""
