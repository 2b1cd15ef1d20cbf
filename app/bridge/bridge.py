"""The engine bridge: between asyncio request handlers and the single engine thread.

The event loop never runs model code: handlers put commands in an inbox; the engine thread
drains it, steps the engine, and hands each output back to the submitting loop with
`call_soon_threadsafe`. A group of requests (n choices, several prompts) shares one queue.

Admission happens here, once: a group is validated (`Engine.check`) and counted against the
in-flight and queued-token caps on the event loop, so it is refused (`RequestError`,
`Overloaded`) before anything is queued. The engine itself holds no cap in the server.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Protocol

from app.bridge.submission import Failure, Submission
from app.engine import Engine, EngineFull, EngineStats, GenerationRequest

log = logging.getLogger("softserve.bridge")


class Overloaded(RuntimeError):
    """A cap is reached: answer 429 with Retry-After. `reason` names the cap (a metric label):
    `in_flight` or `queued_tokens` here, `max_requests` at the API's door."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class BridgeStopped(RuntimeError):
    """The engine loop is not running (starting, draining or dead); answer 503."""


class BridgeObserver(Protocol):
    """What the bridge reports (metrics live above it; it never imports them)."""

    def on_step(self, batch_size: int, prefilled: int, seconds: float) -> None: ...

    def on_admitted(self, request: GenerationRequest, queued_s: float) -> None: ...


class _NoObserver:
    def on_step(self, batch_size: int, prefilled: int, seconds: float) -> None:
        return None

    def on_admitted(self, request: GenerationRequest, queued_s: float) -> None:
        return None


@dataclass(frozen=True)
class BridgeConfig:
    max_in_flight: int = 1024  # engine requests admitted and not yet finished (waiting + running)
    max_queued_tokens: int = 1 << 20  # prompt + max_tokens of requests not yet running
    idle_poll_s: float = 0.05


@dataclass(frozen=True)
class _Add:
    request: GenerationRequest
    submission: Submission


@dataclass(frozen=True)
class _Abort:
    request_id: str


@dataclass(frozen=True)
class BridgeStats:
    """What the bridge and its engine hold now (read by /metrics, from any thread)."""

    engine: EngineStats
    in_flight: int  # engine requests admitted and not finished (waiting + running)
    queued_tokens: int  # prompt + max_tokens of requests not yet running


@dataclass(frozen=True)
class _Queued:
    request: GenerationRequest
    tokens: int
    since: float


class EngineBridge:
    def __init__(
        self,
        engine: Engine,
        config: BridgeConfig | None = None,
        observer: BridgeObserver | None = None,
    ) -> None:
        self.engine = engine
        self.config = config or BridgeConfig()
        self.observer: BridgeObserver = observer or _NoObserver()
        self._inbox: list[_Add | _Abort] = []
        self._wake = threading.Condition()
        self._owners: dict[str, Submission] = {}
        self._queued: dict[str, _Queued] = {}
        self._in_flight = 0
        self._queued_tokens = 0
        self._count_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._running = threading.Event()  # cleared = paused (a test hook: a stalled loop)
        self._running.set()
        self.heartbeat = 0.0  # monotonic time of the loop's last sign of progress
        self.longest_step_s = 0.0  # the slowest engine step seen lately (health scales with it)

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

    @property
    def queued_tokens(self) -> int:
        return self._queued_tokens

    def stats(self) -> BridgeStats:
        return BridgeStats(
            engine=self.engine.stats(),
            in_flight=self._in_flight,
            queued_tokens=self._queued_tokens,
        )

    # -- called from the event loop ---------------------------------------------------------

    def submit(self, requests: list[GenerationRequest]) -> Submission:
        """Validate and enqueue a group; raises RequestError, Overloaded or BridgeStopped
        before anything is queued."""
        if not self.alive:
            raise BridgeStopped("the engine loop is not running")
        for request in requests:
            self.engine.check(request)
        tokens = [len(r.prompt_ids) + r.sampling.max_tokens for r in requests]
        now = time.monotonic()
        with self._count_lock:
            if self._in_flight + len(requests) > self.config.max_in_flight:
                cap = self.config.max_in_flight
                raise Overloaded(f"{self._in_flight} requests in flight (cap {cap})", "in_flight")
            if self._queued_tokens + sum(tokens) > self.config.max_queued_tokens:
                cap = self.config.max_queued_tokens
                raise Overloaded(
                    f"{self._queued_tokens} tokens queued (cap {cap})", "queued_tokens"
                )
            self._in_flight += len(requests)
            self._queued_tokens += sum(tokens)
            for request, count in zip(requests, tokens, strict=True):
                self._queued[request.request_id] = _Queued(request, count, now)
        submission = Submission(self.abort, [r.request_id for r in requests])
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
                    self._step()
        except BaseException as exc:  # the loop must never die silently
            log.exception("engine loop crashed")
            for submission in set(self._owners.values()):
                submission.deliver(Failure(None, RuntimeError(f"engine failure: {exc}")))
            self._owners.clear()
            raise

    def _step(self) -> None:
        started = time.monotonic()
        try:
            result = self.engine.step()
        except Exception as exc:
            # One bad step must not take the server down. After the reset the engine holds
            # nothing, so every request we own has failed, including any the step had already
            # taken off the waiting queue.
            log.exception("engine step failed; failing %d requests", len(self._owners))
            self.engine.reset()
            owners, self._owners = self._owners, {}
            for request_id, submission in owners.items():
                self._dequeue(request_id)
                self._release(1)
                submission.deliver(Failure(request_id, RuntimeError(f"engine step failed: {exc}")))
            self.heartbeat = time.monotonic()
            return
        self.heartbeat = time.monotonic()
        seconds = self.heartbeat - started
        self.longest_step_s = max(seconds, self.longest_step_s * 0.99)  # decays slowly
        if result.ran is not None:
            self.observer.on_step(len(result.ran.tasks), len(result.ran.prefilled), seconds)
        for out in result.outputs:
            owner = self._owners.get(out.request_id)
            if owner is None:
                continue
            queued = self._dequeue(out.request_id)
            if queued is not None and out.token_ids:
                self.observer.on_admitted(queued.request, started - queued.since)
            if out.finish_reason is not None:
                del self._owners[out.request_id]
                self._release(1)
            owner.deliver(out)

    def _apply(self, commands: list[_Add | _Abort]) -> None:
        for command in commands:
            if isinstance(command, _Abort):
                if command.request_id in self._owners:
                    self.engine.abort(command.request_id)
                continue
            try:
                self.engine.enqueue(command.request)  # checked in `submit`, not again
                self._owners[command.request.request_id] = command.submission
            except EngineFull as exc:  # only if the engine was built with its own cap
                self._dequeue(command.request.request_id)
                self._release(1)
                command.submission.deliver(Failure(command.request.request_id, exc))

    def _release(self, count: int) -> None:
        with self._count_lock:
            self._in_flight -= count

    def _dequeue(self, request_id: str) -> _Queued | None:
        """The request left the queue (admitted, failed or dropped): its tokens stop counting."""
        with self._count_lock:
            queued = self._queued.pop(request_id, None)
            if queued is not None:
                self._queued_tokens -= queued.tokens
            return queued
