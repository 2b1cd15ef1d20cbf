"""Per-request accounting: the admission slot, timings, metrics and the one log line."""

from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import dataclass, field

from app.api.errors import ApiError
from app.api.metrics import Metrics
from app.bridge import Overloaded
from app.engine import RequestOutput

access_log = logging.getLogger("softserve.requests")


class Gate:
    """Caps concurrent generation requests (`max_requests`: HTTP requests, each of up to
    max_n x prompts engine rows; the bridge caps the rows). A slot is taken before any
    tokenizing or prompt lookup, so a burst past the cap costs almost nothing: 429 at once."""

    def __init__(self, capacity: int, metrics: Metrics) -> None:
        self.capacity = capacity
        self.active = 0
        self.draining = False
        self._metrics = metrics

    def acquire(self) -> Slot:
        if self.draining:
            self._metrics.rejections.labels("draining").inc()
            raise ApiError(
                503,
                "the server is shutting down",
                code="shutting_down",
                headers={"Retry-After": "5"},
            )
        if self.active >= self.capacity:
            # The same 429 as the bridge's caps (`errors.domain_error`), counted where it is caught.
            raise Overloaded(
                f"{self.active} requests in progress (cap {self.capacity})", "max_requests"
            )
        self.active += 1
        return Slot(self)


class Slot:
    def __init__(self, gate: Gate) -> None:
        self._gate: Gate | None = gate

    def release(self) -> None:
        if self._gate is not None:  # idempotent: several exit paths may call it
            self._gate.active -= 1
            self._gate = None


@dataclass
class Tracker:
    """Follows one HTTP generation request from arrival to its last token."""

    metrics: Metrics
    endpoint: str
    slot: Slot
    log_prompts: bool = False
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    model: str = "-"  # as the client named it (logged)
    task: str | None = None  # once resolved to a real task (a metric label; junk names never are)
    arrived: float = field(default_factory=time.monotonic)
    first_token: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    prompt_text: str | None = None
    finished: bool = False
    cached: dict[str, int] = field(default_factory=dict)  # engine request id -> cached tokens

    def on_output(self, out: RequestOutput) -> None:
        if out.token_ids and self.first_token is None:
            self.first_token = time.monotonic()
        self.completion_tokens += len(out.token_ids)
        if out.cached_tokens:
            self.cached[out.request_id] = out.cached_tokens

    def finish(self, status: int, reason: str | None = None) -> None:
        if self.finished:
            return
        self.finished = True
        self.slot.release()
        now = time.monotonic()
        task = self.metrics.label(self.task) if self.task is not None else "unresolved"
        self.metrics.requests.labels(task, self.endpoint, str(status)).inc()
        self.metrics.prompt_tokens.labels(task).inc(self.prompt_tokens)
        self.metrics.output_tokens.labels(task).inc(self.completion_tokens)
        if status == 200:
            self.metrics.e2e.labels(task).observe(now - self.arrived)
            if self.first_token is not None:
                self.metrics.ttft.labels(task).observe(self.first_token - self.arrived)
                if self.completion_tokens > 1:
                    self.metrics.tpot.labels(task).observe(
                        (now - self.first_token) / (self.completion_tokens - 1)
                    )
        line = {
            "request_id": self.request_id,
            "endpoint": self.endpoint,
            "task": self.model,
            "status": status,
            "finish_reason": reason,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "ttft_s": None
            if self.first_token is None
            else round(self.first_token - self.arrived, 4),
            "e2e_s": round(now - self.arrived, 4),
        }
        if self.log_prompts and self.prompt_text is not None:
            line["prompt"] = self.prompt_text
        access_log.info(json.dumps(line))
