"""The engine: continuous batching of mixed-task rows. Each `step` reads
schedule -> execute (decode running rows, prefill admitted ones) -> update (sample, finish, merge).

Single-threaded by design: one caller (the bridge's engine thread) owns it.
"""

from __future__ import annotations

import random
import time
from collections import deque
from dataclasses import dataclass

import torch

from app.engine import kv as kvops
from app.engine.forward import ForwardResult, decode_step, prefill
from app.engine.prefix import PrefixCache
from app.engine.sampling import sample, token_logprob
from app.engine.text import TextStream
from app.engine.types import (
    EngineFull,
    EngineStats,
    FinishReason,
    GenerationRequest,
    RequestError,
    RequestOutput,
    StepRecord,
    StepResult,
    TokenLogprob,
)
from app.model import FrozenModel


@dataclass(frozen=True)
class EngineConfig:
    max_batch_size: int = 32
    max_waiting: int | None = None  # None: no cap here (the bridge admits; see EngineFull)
    kv_prefix_cache_mib: float = 256.0
    max_context: int | None = None  # default and upper bound: the model's own
    history_steps: int = 4096


@dataclass(frozen=True)
class SchedulerOutput:
    admitted: tuple[GenerationRequest, ...]
    decoding: tuple[str, ...]


@dataclass(eq=False)
class _Row:
    """A running request's mutable state; never leaves the engine."""

    request: GenerationRequest
    generator: torch.Generator
    text: TextStream
    next_position: int  # position of `last_token` when it is fed back in
    last_token: int = -1
    generated: int = 0


class Engine:
    def __init__(self, base: FrozenModel, config: EngineConfig | None = None) -> None:
        self.base = base
        self.config = config or EngineConfig()
        limit = self.config.max_context or base.spec.max_context
        self.max_context = min(limit, base.spec.max_context)
        self.prefixes = PrefixCache(base, int(self.config.kv_prefix_cache_mib * 2**20))
        self.history: deque[StepRecord] = deque(maxlen=self.config.history_steps)
        self._waiting: deque[GenerationRequest] = deque()
        self._rows: list[_Row] = []  # same order as the KV batch's rows
        self._kv: kvops.KVBatch | None = None
        self._aborted: set[str] = set()
        self._steps = 0
        self._seeds = random.SystemRandom()

    @property
    def num_running(self) -> int:
        return len(self._rows)

    @property
    def num_waiting(self) -> int:
        return len(self._waiting)

    @property
    def steps(self) -> int:
        return self._steps

    def has_work(self) -> bool:
        return bool(self._waiting or self._rows)

    def stats(self) -> EngineStats:
        return EngineStats(
            running=len(self._rows),
            waiting=len(self._waiting),
            steps=self._steps,
            prefix_cache=self.prefixes.stats(),
        )

    def check(self, request: GenerationRequest) -> None:
        """Raise RequestError (naming the parameter) for anything the engine cannot run: the one
        place requests are validated. Reads only immutable limits, so any thread may call it."""
        s = request.sampling
        if not request.prompt_ids:
            raise RequestError("the prompt is empty: send at least one token", param="prompt")
        if s.max_tokens < 1:
            raise RequestError(f"max_tokens must be >= 1, got {s.max_tokens}", param="max_tokens")
        if s.temperature < 0:
            raise RequestError(f"temperature must be >= 0, got {s.temperature}", "temperature")
        if not 0.0 < s.top_p <= 1.0:
            raise RequestError(f"top_p must be in (0, 1], got {s.top_p}", param="top_p")
        if s.top_k < 0:
            raise RequestError(f"top_k must be >= 0, got {s.top_k}", param="top_k")
        vocab = self.base.spec.vocab_size
        if min(request.prompt_ids) < 0 or max(request.prompt_ids) >= vocab:
            raise RequestError(f"token ids must be in [0, {vocab})", param="prompt")
        virtual = request.soft_prompt.num_virtual_tokens if request.soft_prompt else 0
        total = virtual + len(request.prompt_ids) + s.max_tokens
        if total > self.max_context:
            raise RequestError(
                f"this request needs {total} tokens of context ({virtual} soft-prompt + "
                f"{len(request.prompt_ids)} prompt + {s.max_tokens} max_tokens), over the "
                f"context length of {self.max_context}",
                param="max_tokens",
            )

    def add_request(self, request: GenerationRequest) -> None:
        self.check(request)
        self.enqueue(request)

    def enqueue(self, request: GenerationRequest) -> None:
        """Queue a request that already passed `check` (the bridge checks on submit, so a bad
        request is refused before anything is queued, and not checked again here)."""
        cap = self.config.max_waiting
        if cap is not None and len(self._waiting) >= cap:
            raise EngineFull(f"{len(self._waiting)} requests already waiting")
        self._waiting.append(request)

    def reset(self) -> None:
        """Drop every waiting and running request (after a failed step)."""
        self._waiting.clear()
        self._rows, self._kv = [], None
        self._aborted.clear()

    def abort(self, request_id: str) -> None:
        """Takes effect at the start of the next step: the row leaves before any compute."""
        self._aborted.add(request_id)

    @torch.inference_mode()
    def step(self) -> StepResult:
        outputs = self._drop_aborted(self._expired())
        plan = self._schedule()
        if not plan.admitted and not plan.decoding:
            return StepResult(outputs=tuple(outputs), ran=None)
        decoded = self._execute_decode() if plan.decoding else None
        prefilled = self._execute_prefill(plan.admitted) if plan.admitted else None
        in_step = [row.request for row in self._rows] + list(plan.admitted)
        outputs.extend(self._update(plan, decoded, prefilled))
        self._steps += 1
        record = StepRecord(
            step=self._steps,
            prefilled=tuple(r.request_id for r in plan.admitted),
            decoded=plan.decoding,
            tasks=tuple(r.soft_prompt.key if r.soft_prompt else None for r in in_step),
        )
        self.history.append(record)
        return StepResult(outputs=tuple(outputs), ran=record)

    # -- schedule ---------------------------------------------------------------------------

    def _schedule(self) -> SchedulerOutput:
        free = self.config.max_batch_size - len(self._rows)
        admitted = [self._waiting.popleft() for _ in range(min(free, len(self._waiting)))]
        return SchedulerOutput(
            admitted=tuple(admitted),
            decoding=tuple(r.request.request_id for r in self._rows),
        )

    def _expired(self) -> set[str]:
        """Requests past their deadline: they leave like aborted ones, with reason `timeout`."""
        now = time.monotonic()
        requests = [*self._waiting, *(row.request for row in self._rows)]
        return {r.request_id for r in requests if r.deadline is not None and r.deadline <= now}

    def _drop_aborted(self, expired: set[str]) -> list[RequestOutput]:
        if not self._aborted and not expired:
            return []
        gone = self._aborted | expired
        self._aborted = set()
        dropped = [r for r in self._waiting if r.request_id in gone]
        self._waiting = deque(r for r in self._waiting if r.request_id not in gone)
        keep = [i for i, row in enumerate(self._rows) if row.request.request_id not in gone]
        if len(keep) < len(self._rows):
            dropped += [row.request for row in self._rows if row.request.request_id in gone]
            self._keep_rows(keep)
        return [
            RequestOutput(
                r.request_id,
                (),
                "",
                (),
                FinishReason.TIMEOUT if r.request_id in expired else FinishReason.ABORT,
                len(r.prompt_ids),
                0,
            )
            for r in dropped
        ]

    # -- execute ----------------------------------------------------------------------------

    def _execute_decode(self) -> ForwardResult:
        assert self._kv is not None
        return decode_step(
            self.base,
            self._kv,
            [row.last_token for row in self._rows],
            [row.next_position for row in self._rows],
        )

    def _execute_prefill(self, admitted: tuple[GenerationRequest, ...]) -> ForwardResult:
        prefixes = [self.prefixes.get(r.soft_prompt) if r.soft_prompt else None for r in admitted]
        spec = self.base.spec
        stacked = kvops.from_prefixes(
            prefixes,
            num_layers=spec.num_layers,
            kv_shape=(spec.num_kv_heads, spec.head_dim),
            device=self.base.device,
            dtype=self.base.dtype,
        )
        return prefill(self.base, stacked, [r.prompt_ids for r in admitted])

    # -- update -----------------------------------------------------------------------------

    def _new_row(self, request: GenerationRequest) -> _Row:
        seed = request.sampling.seed
        generator = torch.Generator(device=self.base.device)
        generator.manual_seed(seed if seed is not None else self._seeds.getrandbits(63))
        virtual = request.soft_prompt.num_virtual_tokens if request.soft_prompt else 0
        return _Row(
            request=request,
            generator=generator,
            text=TextStream(self.base.tokenizer, request.sampling.stop),
            next_position=virtual + len(request.prompt_ids),
        )

    def _update(
        self,
        plan: SchedulerOutput,
        decoded: ForwardResult | None,
        prefilled: ForwardResult | None,
    ) -> list[RequestOutput]:
        for row in self._rows:
            row.next_position += 1  # its last token is now in the cache
        rows = self._rows + [self._new_row(r) for r in plan.admitted]
        results = [r for r in (decoded, prefilled) if r is not None]
        logits = torch.cat([r.logits for r in results])  # [B_decode + B_prefill, V]
        tokens = sample(logits, [r.request.sampling for r in rows], [r.generator for r in rows])
        outputs: list[RequestOutput] = []
        keep: list[int] = []
        for i, (row, token) in enumerate(zip(rows, tokens, strict=True)):
            outputs.append(self._advance(row, token, logits[i]))
            if outputs[-1].finish_reason is None:
                keep.append(i)
        merged = results[0].kv if len(results) == 1 else kvops.concat(results[0].kv, results[1].kv)
        self._rows, self._kv = rows, merged
        self._keep_rows(keep)
        return outputs

    def _advance(self, row: _Row, token: int, logits: torch.Tensor) -> RequestOutput:
        sampling = row.request.sampling
        row.generated += 1
        row.last_token = token
        finish: FinishReason | None = None
        if token in self.base.spec.eos_token_ids and not sampling.ignore_eos:
            finish, text = FinishReason.STOP, row.text.flush()
        else:
            text, stopped = row.text.add(token)
            if stopped:
                finish = FinishReason.STOP
            elif row.generated >= sampling.max_tokens:
                finish, text = FinishReason.LENGTH, text + row.text.flush()
        logprobs: tuple[TokenLogprob, ...] = ()
        if sampling.logprobs is not None:
            logprobs = (token_logprob(logits, token, sampling.logprobs),)
        return RequestOutput(
            request_id=row.request.request_id,
            token_ids=(token,),
            text=text,
            logprobs=logprobs,
            finish_reason=finish,
            prompt_tokens=len(row.request.prompt_ids),
            completion_tokens=row.generated,
        )

    def _keep_rows(self, keep: list[int]) -> None:
        if len(keep) == len(self._rows):
            return
        self._rows = [self._rows[i] for i in keep]
        self._kv = kvops.select(self._kv, keep) if keep and self._kv is not None else None
