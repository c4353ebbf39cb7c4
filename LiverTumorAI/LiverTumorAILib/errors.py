"""User-facing error types.

Anything raised as a `LiverTumorAIError` is printed by the CLI as one line
(`livertumorai: error: <message>`) with a non-zero exit status, never as a traceback.
Messages name the file and the problem, e.g. "ct.nii.gz: image is 2D (512x512); a 3D volume is needed".
"""


class LiverTumorAIError(Exception):
    """Base class: an expected failure with a message meant for the user."""

    exit_code = 2


class InputError(LiverTumorAIError):
    """An input file or folder is missing, unreadable, or not a usable image/segmentation."""

    exit_code = 2


class WeightsError(LiverTumorAIError):
    """Model weights are missing, tampered with (hash mismatch) or inconsistent with their manifest."""

    exit_code = 3


class OutputError(LiverTumorAIError):
    """The output location cannot be written (exists without --overwrite, unwritable, disk full)."""

    exit_code = 4


class RunCancelled(LiverTumorAIError):
    """The run was interrupted (Ctrl-C, SIGTERM, Cancel in Slicer); nothing partial is left behind."""

    exit_code = 130
