"""KitError: the base of every error the kit raises on purpose.

A KitError is a problem the user can fix (a setting, a path, the data, their model code) and its
message says how; the command line prints it as one line. Any other exception is a bug in the kit
and shows its traceback. Each subclass also keeps the built-in base it had before (ValueError,
RuntimeError, FileNotFoundError), so code that catches those still does.
"""


class KitError(Exception):
    """A problem the user can fix; the message names it and the fix."""


class MissingFileError(KitError, FileNotFoundError):
    """A file or folder the user named (a config, a dataset, a tokenizer, an export) is not there."""


class DataError(KitError, ValueError):
    """Data that cannot be used as configured; the message names it and the fix. Defined here, not in utils.data,
    because the model builder raises it too (a classifier needs two classes) and utils.models sits beside utils.data,
    not above it."""


class TokenizerError(KitError, ValueError):
    """A tokenizer that cannot be built or loaded as configured; the message says how to fix it (here for the same
    reason: utils.models.calling catches it)."""
