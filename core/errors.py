"""User-facing errors: the CLI prints them as one paragraph, with no traceback, and exits non-zero."""


class UserError(Exception):
    """Something the person running the command can fix (bad name, missing data, missing weights)."""

    exit_code = 2


class DatasetError(UserError):
    """A dataset name is invalid or its files are not where they should be."""


class WeightsError(UserError):
    """A weight file is missing or does not match its checksum."""


class WarehouseError(UserError):
    """The warehouse cannot be used safely as it is (lost or garbled manifest, full disk, unreadable
    files, another run holding the dataset). Nothing was changed by the command that raised it."""


class RunFolderError(UserError):
    """A training run's folder already holds another run's checkpoints: continue it or replace it, never mix."""


class ExportError(UserError):
    """An exported model folder cannot be written or read safely (a folder that is not an export, a
    file that differs from what the export recorded)."""
