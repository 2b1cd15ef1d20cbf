"""The one generation pipeline behind /v1/completions and /v1/chat/completions:

admit (a slot) -> resolve the task -> render (`app.render`) -> sampling (request, task, OpenAI
defaults) -> fan out one engine request per (prompt, choice) -> submit to the bridge -> collect
or stream. An `Endpoint` supplies only what differs: its checks, how its body renders, and the
response shapes. The pipeline fills the request's `Tracker` and maps every failure to one
HTTP answer (`errors.domain_error`).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Protocol

from app.api.delivery import ChoiceResult, collect, finish_text, stream
from app.api.errors import DOMAIN_ERRORS, ApiError, domain_error
from app.api.grammar import Grammar, Grammars
from app.api.inputs import Prompts
from app.api.sampling import deadline, note_ignored
from app.api.schemas import PromptTokensDetails, SamplingFields, Usage
from app.api.state import Runtime, Services
from app.api.tracking import Tracker
from app.bridge import Overloaded, Submission
from app.engine import GenerationRequest, RequestError, RequestOutput, SamplingParams
from app.model import SoftPrompt
from app.registry import TaskMeta, UnknownTask
from app.render import TaskStyle
from fastapi import Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel


@dataclass(frozen=True)
class Target:
    """The task a request names, read once at admission: it finishes with this version."""

    name: str
    soft_prompt: SoftPrompt | None
    meta: TaskMeta
    fingerprint: str  # OpenAI's system_fingerprint: the exact task version that served it


@dataclass(frozen=True)
class Prepared:
    """One engine request and the choice it answers (index = prompt_index * n + j)."""

    index: int
    request: GenerationRequest


@dataclass(frozen=True)
class Reply:
    """What every response (or chunk) of one HTTP request shares."""

    request_id: str  # the tracker's: logged, and the response id's suffix
    created: int
    target: Target
    prompts: Prompts


@dataclass(frozen=True)
class ChoiceOutput:
    """One engine output while streaming, with its choice index."""

    index: int
    first: bool  # the choice's first output (chat sends the role, completions the echo)
    output: RequestOutput
    usage: Usage | None = None  # the usage so far (`stream_options.continuous_usage_stats`)


class Endpoint(Protocol):
    """What differs between completions and chat; everything else is the pipeline's."""

    @property
    def name(self) -> str: ...  # metric and log label

    @property
    def body(self) -> SamplingFields: ...

    def check(self) -> None: ...

    def render(self, style: TaskStyle) -> Prompts: ...

    def sampling(self, meta: TaskMeta) -> SamplingParams: ...

    def constraint(self, meta: TaskMeta, grammars: Grammars) -> Grammar | None: ...

    def chunks(self, reply: Reply, choice: ChoiceOutput) -> list[str]: ...

    def usage_chunk(self, reply: Reply, usage: Usage) -> str: ...

    def respond(self, reply: Reply, results: list[ChoiceResult], usage: Usage) -> BaseModel: ...


def resolve_target(services: Services, model: str) -> Target:
    if model == services.base.spec.model_id:
        return Target(name=model, soft_prompt=None, meta=TaskMeta(), fingerprint=model)
    try:
        entry = services.registry.get(model)
    except UnknownTask:
        raise ApiError(
            404,
            f"The model '{model}' does not exist: use a task from GET /v1/models "
            f"or the base model '{services.base.spec.model_id}'",
            param="model",
            code="model_not_found",
        ) from None
    return Target(
        name=model,
        soft_prompt=entry.soft_prompt,
        meta=entry.meta,
        fingerprint=f"{model}@{entry.version}:{entry.sha256[:12]}",
    )


def fan_out(
    prompts: Prompts,
    n: int,
    params: SamplingParams,
    soft_prompt: SoftPrompt | None,
    deadline_at: float | None,
) -> list[Prepared]:
    """One engine request per (prompt, choice). A seeded request gives choice j the seed + j,
    so choices differ but stay reproducible."""
    group = uuid.uuid4().hex
    prepared = []
    for p, ids in enumerate(prompts.ids):
        for j in range(n):
            seed = None if params.seed is None else (params.seed + j) % 2**63
            index = p * n + j
            request = GenerationRequest(
                f"{group}-{index}", ids, replace(params, seed=seed), soft_prompt, deadline_at
            )
            prepared.append(Prepared(index=index, request=request))
    return prepared


def _refused(runtime: Runtime, exc: RequestError | RuntimeError) -> ApiError:
    """A request refused before it ran: one 429 for every cap, counted by the cap's name."""
    if isinstance(exc, Overloaded):
        runtime.metrics.rejections.labels(exc.reason).inc()
    return domain_error(exc)


def _admit(runtime: Runtime, endpoint: str) -> Tracker:
    """Take an admission slot first (429/503 at once), before any tokenizing or lookup."""
    try:
        slot = runtime.gate.acquire()
    except Overloaded as exc:
        raise _refused(runtime, exc) from None
    return Tracker(
        metrics=runtime.metrics,
        endpoint=endpoint,
        slot=slot,
        log_prompts=runtime.settings.log_prompts,
    )


async def generate(
    runtime: Runtime, services: Services, request: Request, endpoint: Endpoint
) -> Any:
    """Run one generation request; whatever way it ends is counted and logged."""
    tracker = _admit(runtime, endpoint.name)
    try:
        return await _run(runtime, services, request, endpoint, tracker)
    except ApiError as exc:
        tracker.finish(exc.status)
        raise
    except BaseException:
        tracker.finish(500)
        raise


async def _run(
    runtime: Runtime, services: Services, request: Request, endpoint: Endpoint, tracker: Tracker
) -> Any:
    body, settings = endpoint.body, services.settings
    note_ignored(body, runtime.ignored_fields)
    endpoint.check()
    tracker.model = body.model
    target = resolve_target(services, body.model)
    tracker.task = target.name
    prompts = endpoint.render(target.meta.style)
    tracker.prompt_tokens, tracker.prompt_text = prompts.tokens, "\n".join(prompts.texts)
    deadline_at = deadline(tracker.arrived, body, settings.request_timeout_s)
    params = replace(
        endpoint.sampling(target.meta),
        constraint=endpoint.constraint(target.meta, services.grammars),
    )
    prepared = fan_out(prompts, body.n, params, target.soft_prompt, deadline_at)
    try:
        submission = services.bridge.submit([p.request for p in prepared])
    except DOMAIN_ERRORS as exc:
        raise _refused(runtime, exc) from None
    reply = Reply(tracker.request_id, int(time.time()), target, prompts)
    indices = {p.request.request_id: p.index for p in prepared}

    def usage() -> Usage:
        made = tracker.completion_tokens
        # Counted once per prompt, as prompt_tokens is (not once per choice).
        cached = sum(tracker.cached.get(r, 0) for r, i in indices.items() if i % body.n == 0)
        return Usage(
            prompt_tokens=prompts.tokens,
            completion_tokens=made,
            total_tokens=prompts.tokens + made,
            prompt_tokens_details=PromptTokensDetails(cached_tokens=cached),
        )

    if body.stream:
        return _stream(endpoint, reply, submission, tracker, indices, usage)
    results = await collect(submission, request, indices, tracker)
    response = endpoint.respond(reply, results, usage())
    tracker.finish(200, finish_text(results[0].finish_reason))
    return response


def _stream(
    endpoint: Endpoint,
    reply: Reply,
    submission: Submission,
    tracker: Tracker,
    indices: dict[str, int],
    usage: Callable[[], Usage],
) -> StreamingResponse:
    started: set[int] = set()
    options = endpoint.body.stream_options
    continuous = options is not None and options.continuous_usage_stats

    def render(out: RequestOutput) -> list[str]:
        index = indices[out.request_id]
        first = index not in started
        started.add(index)
        return endpoint.chunks(
            reply, ChoiceOutput(index, first, out, usage() if continuous else None)
        )

    def closing() -> list[str]:
        return [endpoint.usage_chunk(reply, usage())] if options and options.include_usage else []

    return stream(submission, tracker, render, closing)
