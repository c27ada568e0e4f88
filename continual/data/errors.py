"""The errors of the data layer: a dataset that cannot be read, an image that cannot be decoded.

main.py prints either as one line ``error: ...`` and exits with status 2.
"""
from __future__ import annotations

IMAGE_READ_PREFIX = "cannot decode image "


class DatasetError(RuntimeError):
    """A dataset is missing, incomplete or malformed on disk.

    The message always names the path that was read and the layout expected
    there, so the user can fix the folder without reading the code.
    """

    @property
    def line(self) -> str:
        """The message as main.py prints it."""
        return str(self)


class ImageReadError(DatasetError):
    """An image file that cannot be opened or decoded when it is read, lazily, during a run.

    The message is ``cannot decode image PATH: REASON``. It is the only argument: an error raised in a
    DataLoader worker reaches the main process re-created from one string (torch calls the type on the
    worker's traceback text), so the constructor must take exactly one message.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)

    @classmethod
    def of(cls, path: str, error: BaseException) -> ImageReadError:
        reason = " ".join(f"{type(error).__name__}: {error}".split())  # one line, whatever PIL says
        return cls(f"{IMAGE_READ_PREFIX}{path}: {reason}")

    @property
    def line(self) -> str:
        """``cannot decode image PATH: REASON``, also when the error was re-raised from a DataLoader worker,
        whose message is then the worker's traceback ending with that line."""
        text = str(self)
        found = [line for line in text.splitlines() if IMAGE_READ_PREFIX in line]
        if not found:
            return " ".join(text.split())
        return found[-1][found[-1].index(IMAGE_READ_PREFIX):]
