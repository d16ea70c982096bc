"""The exporter's errors: each names the problem and what to do about it."""


class ExportError(ValueError):
    """An export that cannot proceed; the message is meant for the user as is."""


class CheckpointError(ExportError):
    """The checkpoint folder is missing a file, holds an unknown architecture or a mis-shaped tensor."""


class OptionError(ExportError):
    """An export option that webgemma does not support for this model."""
