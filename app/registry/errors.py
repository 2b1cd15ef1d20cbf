"""Registry errors. Each names the file and the reason, so a log line or an HTTP 4xx can say it."""

from __future__ import annotations


class InvalidPrompt(ValueError):
    """A prompt entry (or an upload) failed validation. Nothing was written."""

    def __init__(self, reason: str, *, file: str | None = None, param: str | None = None) -> None:
        self.reason = reason
        self.file = file
        self.param = param or file
        super().__init__(f"{file}: {reason}" if file else reason)


class InvalidTaskName(InvalidPrompt):
    def __init__(self, reason: str) -> None:
        super().__init__(reason, param="task")


class UnknownTask(KeyError):
    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(name)
