"""The exceptions sppdet raises for problems a user can fix.

Every message names the offending file (or setting) and says what to do. The CLI turns any
``SppdetError`` into one line on stderr and exit code 1; anything else is a bug and keeps its
traceback.
"""


class SppdetError(Exception):
    """Base class: a user-fixable problem, reported as one line without a traceback."""


class DatasetError(SppdetError):
    """A dataset file is missing, malformed or inconsistent."""


class WorkdirError(SppdetError):
    """The work directory lacks a stage's output, or holds output from other settings."""


class ModelError(SppdetError):
    """A model or weights file cannot be loaded, or does not match the features it is used with."""


class ConfigError(SppdetError):
    """An option value or combination of options is invalid."""
