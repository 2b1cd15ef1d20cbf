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


class WriteConflict(RuntimeError):
    """Another writer changed the task while this write was in progress; this one lost.

    Nothing of this write is served (its objects are removed); the caller may retry."""

    def __init__(self, name: str, detail: str) -> None:
        self.name = name
        super().__init__(
            f"prompt '{name}' was changed by another writer while this write was in progress "
            f"({detail}); this write was not applied: check the current version and retry"
        )


class StoreUnavailable(RuntimeError):
    """The prompt store (e.g. the object-storage endpoint) could not be reached or refused."""
