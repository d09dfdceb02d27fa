"""User-facing errors: the CLI prints their message (no traceback) and exits non-zero."""


class FaceDistillError(Exception):
    """An error caused by the user's input; the message says what is wrong and how to fix it."""


class RecipeError(FaceDistillError):
    """A recipe (YAML) is invalid: the message names the file and the key path."""


class DataError(FaceDistillError):
    """Input data is missing, corrupt or inconsistent."""


class CheckpointError(FaceDistillError):
    """A checkpoint does not match the architecture it is loaded into."""


class ExportError(FaceDistillError):
    """An export failed a gate (parity, int8 accuracy) or could not be written."""
