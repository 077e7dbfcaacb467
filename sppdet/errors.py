"""The exceptions sppdet raises for problems a user can fix.

Every message names the offending file (or setting) and says what to do. The CLI turns any
``SppdetError`` into one line on stderr and exit code 1, and so any ``OSError`` (a full or
read-only disk, a permission: the environment, not a bug); anything else is a bug and keeps its
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


class TrainingError(SppdetError):
    """Training diverged (a NaN or infinite loss); nothing was saved and settings must change."""


class WorkerError(SppdetError):
    """A worker process of a pool died (killed, e.g. out of memory) while on an item; what the
    other workers finished is kept, so a re-run continues."""


class SppdetWarning(UserWarning):
    """Something a user should know that does not stop the run (e.g. a repaired annotation, a
    corrupt cached file computed again). The CLI shows these as one line ``warning: MESSAGE``."""
