"""A group of submitted requests as seen from the event loop: their outputs, in order, as an
async iterator. Delivery crosses threads with `call_soon_threadsafe`, never a lock."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from types import TracebackType

from app.engine import RequestOutput


@dataclass(frozen=True)
class Failure:
    """A request the engine thread could not run (or the loop itself failed)."""

    request_id: str | None  # None: the whole loop failed, every request of the group with it
    error: BaseException


class Submission:
    """The outputs of a group of requests (n choices, several prompts). Leaving the `async with`
    block early (client gone, error) aborts whatever has not finished."""

    def __init__(self, abort: Callable[[str], None], request_ids: list[str]) -> None:
        self._abort = abort
        self._queue: asyncio.Queue[RequestOutput | Failure] = asyncio.Queue()
        self._loop = asyncio.get_running_loop()
        self._open = set(request_ids)

    def deliver(self, item: RequestOutput | Failure) -> None:
        """Called from the engine thread."""
        self._loop.call_soon_threadsafe(self._queue.put_nowait, item)

    def close(self) -> None:
        """Abort whatever has not finished. Idempotent; safe from any exit path."""
        for request_id in self._open:
            self._abort(request_id)
        self._open.clear()

    def __aiter__(self) -> AsyncIterator[RequestOutput]:
        return self

    async def __anext__(self) -> RequestOutput:
        if not self._open:
            raise StopAsyncIteration
        item = await self._queue.get()
        if isinstance(item, Failure):
            self._open.discard(item.request_id or "")
            raise item.error
        if item.finish_reason is not None:
            self._open.discard(item.request_id)
        return item

    async def __aenter__(self) -> Submission:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Unfinished rows are aborted; the engine thread releases their slots when they leave.
        self.close()
