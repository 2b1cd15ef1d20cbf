"""Typed records at the engine's boundary: requests in, per-step outputs and step records out."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from app.engine.constraint import TokenConstraint
from app.engine.prefix import PrefixCacheStats
from app.model import SoftPrompt

MIN_TEMPERATURE = 1e-5


class FinishReason(StrEnum):
    STOP = "stop"  # EOS or a stop string
    LENGTH = "length"  # max_tokens reached
    ABORT = "abort"  # cancelled by the caller
    TIMEOUT = "timeout"  # its deadline passed (waiting or running)


class RequestError(ValueError):
    """A request the engine cannot take; `param` names the offending field for the API."""

    def __init__(self, message: str, param: str | None = None) -> None:
        self.param = param
        super().__init__(message)


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 16
    temperature: float = 1.0  # 0 means greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 means off
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False
    logprobs: int | None = None  # None: off; k: the chosen token plus the top k
    # None: off; k: every prompt token's own log-probability plus the top k (the first token
    # has none: nothing before it is scored; soft-prompt virtual tokens are never listed)
    prompt_logprobs: int | None = None
    constraint: TokenConstraint | None = None  # constrained decoding: each row gets a matcher

    @property
    def greedy(self) -> bool:
        # Below ~1e-5 dividing the logits overflows to inf/NaN; the limit is argmax anyway.
        return self.temperature < MIN_TEMPERATURE or self.top_k == 1


@dataclass(frozen=True, eq=False)
class GenerationRequest:
    request_id: str
    prompt_ids: tuple[int, ...]
    sampling: SamplingParams
    soft_prompt: SoftPrompt | None = None  # None: the bare base model
    deadline: float | None = None  # time.monotonic() after which the request is dropped


@dataclass(frozen=True)
class TopLogprob:
    token_id: int
    logprob: float


@dataclass(frozen=True)
class TokenLogprob:
    token_id: int
    logprob: float
    top: tuple[TopLogprob, ...]


@dataclass(frozen=True)
class RequestOutput:
    """What one engine step produced for one request."""

    request_id: str
    token_ids: tuple[int, ...]  # new tokens this step
    text: str  # new text this step (held back while it may still become a stop string)
    logprobs: tuple[TokenLogprob, ...]  # one per new token when requested
    finish_reason: FinishReason | None
    prompt_tokens: int
    completion_tokens: int  # so far
    # In the row's first output, when asked for: one per prompt token, None for the first.
    prompt_logprobs: tuple[TokenLogprob | None, ...] = ()
    cached_tokens: int = 0  # prompt tokens read from a KV slot, not computed (<= the prompt's)


@dataclass(frozen=True)
class StepRecord:
    """Who took part in one engine step: the evidence for continuous batching."""

    step: int
    prefilled: tuple[str, ...]
    decoded: tuple[str, ...]
    tasks: tuple[str | None, ...]  # soft-prompt key of every row in the step (None: bare model)


@dataclass(frozen=True)
class StepResult:
    """What one `Engine.step()` did: its outputs, and which rows ran (None: no compute ran, e.g.
    only aborted or expired requests left)."""

    outputs: tuple[RequestOutput, ...]
    ran: StepRecord | None


@dataclass(frozen=True)
class EngineStats:
    """The engine's live figures, as one consistent-enough snapshot for metrics."""

    running: int
    waiting: int
    steps: int
    prefix_cache: PrefixCacheStats


class EngineFull(RuntimeError):
    """The waiting queue is at its cap (`EngineConfig.max_waiting`, off by default: the server
    caps in-flight requests once, in the bridge, before they reach the engine)."""
