"""What completions and chat share: resolve the task, build engine requests, run them through the
engine bridge, and collect or stream the outputs (aborting rows whose client went away)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any

from app.api.errors import ApiError
from app.api.schemas import FinishText, SamplingFields
from app.api.state import Runtime, Services
from app.api.tracking import Tracker
from app.bridge import BridgeStopped, Overloaded, Submission
from app.engine import (
    FinishReason,
    GenerationRequest,
    RequestError,
    RequestOutput,
    SamplingParams,
    TokenLogprob,
)
from app.model import SoftPrompt
from app.registry import TaskMeta, UnknownTask
from fastapi import Request
from fastapi.responses import StreamingResponse
from starlette.background import BackgroundTask

DISCONNECT_POLL_S = 0.1


@dataclass(frozen=True)
class Target:
    """The task a request names, read once at admission: it finishes with this version."""

    name: str
    soft_prompt: SoftPrompt | None
    meta: TaskMeta
    fingerprint: str  # OpenAI's system_fingerprint: the exact task version that served it


def start(runtime: Runtime, endpoint: str) -> Tracker:
    """Take an admission slot first (429/503 at once), before any tokenizing or lookup."""
    slot = runtime.gate.acquire()
    return Tracker(
        metrics=runtime.metrics,
        endpoint=endpoint,
        slot=slot,
        log_prompts=runtime.settings.log_prompts,
    )


async def tracked(runtime: Runtime, endpoint: str, run: Callable[[Tracker], Awaitable[Any]]) -> Any:
    """Run a generation handler with its tracker; whatever way it ends is counted and logged."""
    tracker = start(runtime, endpoint)
    try:
        return await run(tracker)
    except ApiError as exc:
        tracker.finish(exc.status)
        raise
    except BaseException:
        tracker.finish(500)
        raise


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


def check_supported(body: SamplingFields, max_n: int) -> None:
    if body.presence_penalty or body.frequency_penalty:
        name = "presence_penalty" if body.presence_penalty else "frequency_penalty"
        raise ApiError(400, f"{name} is not supported (use 0)", param=name)
    if body.logit_bias:
        raise ApiError(400, "logit_bias is not supported", param="logit_bias")
    if body.n > max_n:
        raise ApiError(400, f"n must be <= {max_n}, got {body.n}", param="n")


def stop_strings(stop: str | list[str] | None, default: tuple[str, ...] | None) -> tuple[str, ...]:
    if stop is None:
        return default or ()
    items = [stop] if isinstance(stop, str) else stop
    if len(items) > 4 or any(not s for s in items):
        raise ApiError(400, "stop must be at most 4 non-empty strings", param="stop")
    return tuple(items)


def _pick(value: float | None, default: float | None, fallback: float) -> float:
    return value if value is not None else (default if default is not None else fallback)


def sampling_params(
    body: SamplingFields,
    meta: TaskMeta,
    *,
    max_tokens: int | None,
    default_max_tokens: int,
    logprobs: int | None,
) -> SamplingParams:
    """Request values win, then the task's task.json defaults, then OpenAI's defaults."""
    d = meta.defaults
    return SamplingParams(
        max_tokens=max_tokens or d.max_tokens or default_max_tokens,
        temperature=_pick(body.temperature, d.temperature, 1.0),
        top_p=_pick(body.top_p, d.top_p, 1.0),
        top_k=body.top_k if body.top_k is not None else (d.top_k or 0),
        seed=body.seed,
        stop=stop_strings(body.stop, d.stop),
        ignore_eos=body.ignore_eos,
        logprobs=logprobs,
    )


def deadline(tracker: Tracker, body: SamplingFields, server_limit_s: float) -> float:
    """The server's timeout; a request may only lower it."""
    return tracker.arrived + min(body.timeout or server_limit_s, server_limit_s)


def fan_out(
    prompts: list[tuple[int, ...]],
    n: int,
    params: SamplingParams,
    soft_prompt: SoftPrompt | None,
    deadline_at: float | None,
) -> list[GenerationRequest]:
    """One engine request per (prompt, choice); choice index = prompt_index * n + j. A seeded
    request gives choice j the seed + j, so choices differ but stay reproducible."""
    group = uuid.uuid4().hex
    requests = []
    for p, prompt in enumerate(prompts):
        for j in range(n):
            seed = None if params.seed is None else (params.seed + j) % 2**63
            requests.append(
                GenerationRequest(
                    f"{group}-{p * n + j}",
                    prompt,
                    replace(params, seed=seed),
                    soft_prompt,
                    deadline_at,
                )
            )
    return requests


def finish_text(reason: FinishReason | None) -> FinishText | None:
    if reason is None:
        return None
    return "length" if reason is FinishReason.LENGTH else "stop"


def choice_index(request_id: str) -> int:
    return int(request_id.rsplit("-", 1)[1])


def submit(services: Services, requests: list[GenerationRequest], runtime: Runtime) -> Submission:
    try:
        return services.bridge.submit(requests)
    except RequestError as exc:
        raise ApiError(400, str(exc), param=exc.param, code="invalid_request") from None
    except Overloaded as exc:
        runtime.metrics.rejections.labels(exc.reason).inc()
        raise ApiError(
            429, f"server overloaded: {exc}", code="overloaded", headers={"Retry-After": "1"}
        ) from None
    except BridgeStopped as exc:
        raise ApiError(503, str(exc), code="unavailable", headers={"Retry-After": "5"}) from None


def _timeout() -> ApiError:
    return ApiError(408, "the request did not finish before its deadline", code="timeout")


@dataclass
class ChoiceResult:
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: FinishReason | None = None

    def add(self, out: RequestOutput) -> None:
        self.text += out.text
        self.token_ids.extend(out.token_ids)
        self.logprobs.extend(out.logprobs)
        self.finish_reason = out.finish_reason or self.finish_reason


def _track(tracker: Tracker, out: RequestOutput) -> None:
    tracker.on_output(out)
    tracker.completion_tokens += len(out.token_ids)
    if out.finish_reason is FinishReason.TIMEOUT:
        raise _timeout()


async def _until_disconnected(request: Request) -> None:
    while not await request.is_disconnected():
        await asyncio.sleep(DISCONNECT_POLL_S)


async def collect(
    submission: Submission, request: Request, count: int, tracker: Tracker
) -> list[ChoiceResult]:
    """Gather every choice; if the client disconnects first, abort the rows and stop."""
    results = [ChoiceResult() for _ in range(count)]

    async def gather() -> None:
        async with submission:
            async for out in submission:
                _track(tracker, out)
                results[choice_index(out.request_id)].add(out)

    work = asyncio.ensure_future(gather())
    watch = asyncio.ensure_future(_until_disconnected(request))
    try:
        await asyncio.wait({work, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
        if not work.done():
            work.cancel()  # leaving `async with submission` aborts the unfinished rows
    try:
        await work
    except asyncio.CancelledError:
        raise ApiError(499, "client disconnected") from None
    except RequestError as exc:
        raise ApiError(400, str(exc), param=exc.param) from None
    except RuntimeError as exc:
        raise ApiError(503, str(exc), code="engine_error", headers={"Retry-After": "5"}) from None
    return results


async def _events(
    submission: Submission,
    tracker: Tracker,
    render: Callable[[RequestOutput], list[str]],
    closing: Callable[[], list[str]],
) -> AsyncIterator[str]:
    status, reason = 499, None  # unless it runs to the end: the client went away
    try:
        async with submission:
            try:
                async for out in submission:
                    _track(tracker, out)
                    reason = finish_text(out.finish_reason) or reason
                    for chunk in render(out):
                        yield f"data: {chunk}\n\n"
                for chunk in closing():
                    yield f"data: {chunk}\n\n"
                status = 200
            except (ApiError, RequestError, RuntimeError) as exc:
                status = exc.status if isinstance(exc, ApiError) else 500
                kind = "timeout" if status == 408 else "server_error"
                error = {"message": str(exc), "type": kind, "param": None, "code": kind}
                yield f"data: {json.dumps({'error': error})}\n\n"
        yield "data: [DONE]\n\n"
    finally:
        tracker.finish(status, reason)


def stream(
    submission: Submission,
    tracker: Tracker,
    render: Callable[[RequestOutput], list[str]],
    closing: Callable[[], list[str]],
) -> StreamingResponse:
    """Server-Sent Events: one `data:` line per chunk, then `data: [DONE]`. If the client goes
    away (even before the first byte), the rows are aborted and the slot is released."""

    def cleanup() -> None:
        submission.close()
        tracker.finish(499)

    return StreamingResponse(
        _events(submission, tracker, render, closing),
        media_type="text/event-stream",
        background=BackgroundTask(cleanup),
    )
