"""Bridge between asyncio request handlers and the single engine thread.

The event loop never runs model code: handlers put commands in an inbox; the engine thread
drains it, steps the engine, and hands each output back to the submitting loop with
`call_soon_threadsafe`. A group of requests (n choices, several prompts) shares one queue.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import TracebackType

from app.engine import Engine, EngineFull, GenerationRequest, RequestError, RequestOutput

log = logging.getLogger("softserve.scheduler")


class SchedulerFull(RuntimeError):
    """Too many requests in flight; answer 429 with Retry-After."""


class SchedulerStopped(RuntimeError):
    """The engine loop is not running (starting, draining or dead); answer 503."""


@dataclass(frozen=True)
class SchedulerConfig:
    max_in_flight: int = 256  # requests admitted and not yet finished (waiting + running)
    idle_poll_s: float = 0.05


@dataclass(frozen=True)
class _Add:
    request: GenerationRequest
    submission: Submission


@dataclass(frozen=True)
class _Abort:
    request_id: str


@dataclass(frozen=True)
class Failure:
    """A request the engine thread could not run (or the loop itself failed)."""

    request_id: str | None
    error: BaseException


class Submission:
    """The outputs of a group of requests, as an async iterator. Leaving the `async with` block
    early (client gone, error) aborts whatever has not finished."""

    def __init__(self, scheduler: Scheduler, request_ids: list[str]) -> None:
        self._scheduler = scheduler
        self._queue: asyncio.Queue[RequestOutput | Failure] = asyncio.Queue()
        self._loop = asyncio.get_running_loop()
        self._open = set(request_ids)

    def deliver(self, item: RequestOutput | Failure) -> None:
        """Called from the engine thread."""
        self._loop.call_soon_threadsafe(self._queue.put_nowait, item)

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
        for request_id in self._open:
            self._scheduler.abort(request_id)
        self._open.clear()


class Scheduler:
    def __init__(self, engine: Engine, config: SchedulerConfig | None = None) -> None:
        self.engine = engine
        self.config = config or SchedulerConfig()
        self._inbox: list[_Add | _Abort] = []
        self._wake = threading.Condition()
        self._owners: dict[str, Submission] = {}
        self._in_flight = 0
        self._count_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._running = threading.Event()  # cleared = paused (a test hook: a stalled loop)
        self._running.set()
        self.heartbeat = 0.0  # monotonic time of the loop's last sign of progress

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        self._stopping = False
        self.heartbeat = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="softserve-engine", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(timeout)

    def pause(self) -> None:
        """Test hook: the loop stops stepping and stops reporting progress, as if hung."""
        self._running.clear()

    def resume(self) -> None:
        self._running.set()
        with self._wake:
            self._wake.notify()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stopping

    @property
    def in_flight(self) -> int:
        return self._in_flight

    # -- called from the event loop ---------------------------------------------------------

    def submit(self, requests: list[GenerationRequest]) -> Submission:
        """Validate and enqueue a group; raises RequestError, SchedulerFull or SchedulerStopped
        before anything is queued."""
        if not self.alive:
            raise SchedulerStopped("the engine loop is not running")
        for request in requests:
            self.engine.check(request)
        with self._count_lock:
            if self._in_flight + len(requests) > self.config.max_in_flight:
                raise SchedulerFull(
                    f"{self._in_flight} requests in flight (cap {self.config.max_in_flight})"
                )
            self._in_flight += len(requests)
        submission = Submission(self, [r.request_id for r in requests])
        with self._wake:
            self._inbox.extend(_Add(r, submission) for r in requests)
            self._wake.notify()
        return submission

    def abort(self, request_id: str) -> None:
        with self._wake:
            self._inbox.append(_Abort(request_id))
            self._wake.notify()

    # -- the engine thread ------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                with self._wake:
                    if not self._inbox and not self.engine.has_work() and not self._stopping:
                        self._wake.wait(self.config.idle_poll_s)
                    if self._stopping:
                        break
                    if not self._running.is_set():
                        self._wake.wait(self.config.idle_poll_s)
                        continue
                    commands, self._inbox = self._inbox, []
                self.heartbeat = time.monotonic()
                self._apply(commands)
                if self.engine.has_work():
                    self._dispatch(self.engine.step())
                    self.heartbeat = time.monotonic()
        except BaseException as exc:  # the loop must never die silently
            log.exception("engine loop crashed")
            for submission in set(self._owners.values()):
                submission.deliver(Failure(None, RuntimeError(f"engine failure: {exc}")))
            self._owners.clear()
            raise

    def _apply(self, commands: list[_Add | _Abort]) -> None:
        for command in commands:
            if isinstance(command, _Abort):
                if command.request_id in self._owners:
                    self.engine.abort(command.request_id)
                continue
            try:
                self.engine.add_request(command.request)
                self._owners[command.request.request_id] = command.submission
            except (RequestError, EngineFull) as exc:
                self._release(1)
                command.submission.deliver(Failure(command.request.request_id, exc))

    def _release(self, count: int) -> None:
        with self._count_lock:
            self._in_flight -= count

    def _dispatch(self, outputs: list[RequestOutput]) -> None:
        for out in outputs:
            owner = self._owners.get(out.request_id)
            if owner is None:
                continue
            if out.finish_reason is not None:
                del self._owners[out.request_id]
                self._release(1)
            owner.deliver(out)
