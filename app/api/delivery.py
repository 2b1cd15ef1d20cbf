"""Engine outputs back to the client: collected into one JSON body, or streamed as SSE. Either
way a client that goes away aborts its rows, and errors leave through `errors.domain_error`."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from app.api.errors import DOMAIN_ERRORS, ApiError, domain_error, error_body
from app.api.schemas import FinishText
from app.api.tracking import Tracker
from app.bridge import Submission
from app.engine import FinishReason, RequestOutput, TokenLogprob
from fastapi import Request
from fastapi.responses import StreamingResponse
from starlette.background import BackgroundTask

DISCONNECT_POLL_S = 0.1


@dataclass
class ChoiceResult:
    """One choice, accumulated over its outputs (collect mode)."""

    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: FinishReason | None = None
    prompt_logprobs: tuple[TokenLogprob | None, ...] = ()

    def add(self, out: RequestOutput) -> None:
        self.prompt_logprobs = out.prompt_logprobs or self.prompt_logprobs
        self.text += out.text
        self.token_ids.extend(out.token_ids)
        self.logprobs.extend(out.logprobs)
        self.finish_reason = out.finish_reason or self.finish_reason


def finish_text(reason: FinishReason | None) -> FinishText | None:
    if reason is None:
        return None
    return "length" if reason is FinishReason.LENGTH else "stop"


def _track(tracker: Tracker, out: RequestOutput) -> None:
    tracker.on_output(out)
    if out.finish_reason is FinishReason.TIMEOUT:
        raise ApiError(408, "the request did not finish before its deadline", code="timeout")


async def _until_disconnected(request: Request) -> None:
    while not await request.is_disconnected():
        await asyncio.sleep(DISCONNECT_POLL_S)


async def collect(
    submission: Submission, request: Request, indices: dict[str, int], tracker: Tracker
) -> list[ChoiceResult]:
    """Gather every choice (`indices`: request id -> choice index); if the client disconnects
    first, abort the rows and stop."""
    results = [ChoiceResult() for _ in indices]

    async def gather() -> None:
        async with submission:
            async for out in submission:
                _track(tracker, out)
                results[indices[out.request_id]].add(out)

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
    except DOMAIN_ERRORS as exc:
        raise domain_error(exc) from None
    return results


def _event(data: str) -> str:
    return f"data: {data}\n\n"


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
                        yield _event(chunk)
                for chunk in closing():
                    yield _event(chunk)
                status = 200
            except (ApiError, *DOMAIN_ERRORS) as exc:
                error = exc if isinstance(exc, ApiError) else domain_error(exc)
                status = error.status
                body = error_body(error.status, error.message, error.param, error.code)
                yield _event(json.dumps(body))
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
