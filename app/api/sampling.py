"""Sampling parameters for one request: the request's values, then the task's task.json
defaults, then OpenAI's defaults; and the OpenAI fields Softserve refuses."""

from __future__ import annotations

import logging

from app.api.errors import ApiError
from app.api.schemas import SamplingFields
from app.engine import SamplingParams
from app.registry import SamplingDefaults

log = logging.getLogger("softserve.api")


def check_supported(body: SamplingFields, max_n: int) -> None:
    if body.presence_penalty or body.frequency_penalty:
        name = "presence_penalty" if body.presence_penalty else "frequency_penalty"
        raise ApiError(400, f"{name} is not supported (use 0)", param=name)
    if body.logit_bias:
        raise ApiError(400, "logit_bias is not supported", param="logit_bias")
    if body.n > max_n:
        raise ApiError(400, f"n must be <= {max_n}, got {body.n}", param="n")


def note_ignored(body: SamplingFields, seen: set[str]) -> None:
    """Unknown top-level fields are ignored, as vLLM does; each name is logged once per server."""
    for name in sorted(set(body.model_extra or ()) - seen):
        seen.add(name)
        log.warning("ignoring unknown request field %r (logged once)", name)


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
    defaults: SamplingDefaults,
    *,
    max_tokens: int | None,
    default_max_tokens: int,
    logprobs: int | None,
    prompt_logprobs: int | None = None,
) -> SamplingParams:
    """Request values win, then the task's task.json defaults, then OpenAI's defaults."""
    d = defaults
    return SamplingParams(
        max_tokens=max_tokens if max_tokens is not None else d.max_tokens or default_max_tokens,
        temperature=_pick(body.temperature, d.temperature, 1.0),
        top_p=_pick(body.top_p, d.top_p, 1.0),
        top_k=body.top_k if body.top_k is not None else (d.top_k or 0),
        seed=body.seed,
        stop=stop_strings(body.stop, d.stop),
        ignore_eos=body.ignore_eos,
        logprobs=logprobs,
        prompt_logprobs=prompt_logprobs,
    )


def deadline(arrived: float, body: SamplingFields, server_limit_s: float) -> float:
    """The server's timeout; a request may only lower it."""
    return arrived + min(body.timeout or server_limit_s, server_limit_s)
