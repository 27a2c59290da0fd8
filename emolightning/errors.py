"""User-facing errors: one paragraph that names the file, line or option and the fix.

The CLI prints these without a traceback (set EMOLIGHTNING_TRACEBACK=1 to see one);
anything else that goes wrong is a bug and keeps its traceback.
"""


class EmolightningError(Exception):
    """A mistake in the user's input (data, config, checkpoint), explained in one paragraph."""


class DataError(EmolightningError):
    """A data file or directory that cannot be used as it is."""


class ConfigError(EmolightningError):
    """A config value, option or checkpoint that does not fit."""


class TrainingError(EmolightningError):
    """Training cannot go on as it is (e.g. a NaN or infinite loss); the message says what was kept."""


class StorageError(EmolightningError):
    """A file could not be written (full disk, read-only folder, no permission); the previous file is untouched."""
