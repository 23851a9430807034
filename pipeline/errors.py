"""The errors the pipeline raises on purpose for its users.

Anything wrong with what a user gave it (a config key, a folder, a file, an image) or with
the machine it runs on (no network, no optional runtime) is a `UserError`: the command line
prints its message as one line, which names the key or file and the fix, and exits with
status 2. Every other exception is a bug in the pipeline and keeps its traceback.

Each type also derives from the built-in exception it refines, so `except ValueError`
around library calls keeps working.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input or a missing resource; the message says what was received and how to fix it."""


class ConfigError(UserError, ValueError):
    """A config file, key or value that cannot be used."""


class DataError(UserError, ValueError):
    """An input that cannot be used as given: a dataset's layout, a split, an image file, a
    model file that this pipeline did not export."""


class MissingInputError(UserError, FileNotFoundError):
    """A file or folder the user named, or an earlier stage's output, does not exist."""


class UnavailableError(UserError, RuntimeError):
    """Something the run needs cannot be had here: a download, pretrained weights, a runtime."""


class RunInUseError(UserError, RuntimeError):
    """Another process is writing the same run folder."""


class StageOrderError(UserError, RuntimeError):
    """A stage was asked to run before the stage whose output it reads."""
