"""The engine: continuous batching of mixed-task rows. Each `step` reads
schedule (every decoding row one token; prompt chunks within a token budget) -> execute (one
forward over all of them, by the runner) -> update (sample, finish, free slots).

Single-threaded by design: one caller (the bridge's engine thread) owns it.
"""

from __future__ import annotations

import functools
import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path

import torch

from app.engine import lean, native, w8a8, weights
from app.engine.constraint import TokenMatcher, apply_masks
from app.engine.lean import LeanUnsupported, Segment
from app.engine.prefix import PrefixCache
from app.engine.runner import HFRunner, LeanRunner, Runner, Scored, StepLogits
from app.engine.sampling import prompt_logprobs, sample, token_logprob
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
from app.model import FrozenModel, Quantize

log = logging.getLogger("softserve.engine")

_BARE = "base model"  # the KV-cache content key of rows without a soft prompt


class Backend(StrEnum):
    AUTO = "auto"  # the lean forward where the architecture allows, else HF's
    LEAN = "lean"
    HF = "hf"


@dataclass(frozen=True)
class EngineConfig:
    max_batch_size: int = 32  # KV slots: rows running at once
    max_waiting: int | None = None  # None: no cap here (the bridge admits; see EngineFull)
    kv_prefix_cache_mib: float = 256.0
    max_context: int | None = None  # default and upper bound: the model's own
    history_steps: int = 4096
    backend: Backend = Backend.AUTO
    quantize: Quantize = Quantize.NONE
    # int8 / w8a8: steps of at most this many tokens use weight-only int8 kernels, larger ones
    # bf16 (int8) or int8 activations too (w8a8)
    int8_max_tokens: int = 1 << 30
    # Prompt tokens per step (lean forward): a long prompt never stalls the decoding rows.
    prefill_chunk: int = 256
    # Quantize on a background thread and serve bf16 meanwhile (a server starts ~2 s sooner).
    quantize_in_background: bool = False
    # Where the native single-row decode kernel is built (README "Native decode"); None: torch's.
    native_dir: Path | None = None


@dataclass(frozen=True)
class SchedulerOutput:
    segments: tuple[Segment, ...]
    admitted: tuple[GenerationRequest, ...]
    prefilled: tuple[str, ...]  # rows with a prompt chunk in this step
    decoding: tuple[str, ...]


@dataclass(eq=False)
class _Row:
    """A running request's mutable state; never leaves the engine."""

    request: GenerationRequest
    slot: int
    generator: torch.Generator
    text: TextStream
    virtual: int  # soft-prompt columns at the start of its slot
    # Prompt tokens whose K/V the row's slot still held (not computed). The soft prompt's
    # columns are not counted: they are not prompt tokens, and OpenAI clients compute
    # prompt_tokens - cached_tokens.
    cached: int = 0
    prefilled: int = 0  # prompt tokens already in the cache
    last_token: int = -1
    generated: int = 0
    scores: list[TokenLogprob | None] = field(default_factory=list)  # prompt log-probabilities
    matcher: TokenMatcher | None = None  # constrained decoding: which tokens may come next

    @property
    def decoding(self) -> bool:
        return self.prefilled == len(self.request.prompt_ids)

    @property
    def next_position(self) -> int:
        """Position of the next token fed in (the last sampled one, once decoding)."""
        return self.virtual + self.prefilled + max(self.generated - 1, 0)


def make_runner(base: FrozenModel, config: EngineConfig, max_context: int) -> Runner:
    if config.backend is not Backend.HF:
        try:
            model = weights.build(
                base.config, base.weights.tensors(), dtype=base.dtype, max_positions=max_context
            )
            mode = _quantize_mode(config.quantize, base)
            quantized = functools.partial(_quantized, base, model, mode, config)
            if mode is not Quantize.NONE:
                weights.require_int8_dtype(model.dtype)  # a bad setting fails at start-up
            if mode is not Quantize.NONE and not config.quantize_in_background:
                model = quantized()
            runner = LeanRunner(model, base, config.max_batch_size, max_context)
            if mode is not Quantize.NONE and config.quantize_in_background:
                _quantize_later(runner, quantized)
            return runner
        except LeanUnsupported as exc:
            if config.backend is Backend.LEAN or config.quantize in (Quantize.INT8, Quantize.W8A8):
                raise
            log.info("lean forward unavailable (%s): using the model's own forward", exc)
    return HFRunner(base, config.max_batch_size)


def _quantize_mode(setting: Quantize, base: FrozenModel) -> Quantize:
    """`auto`: int8 activations too where the weights are bfloat16 and oneDNN runs them (a CPU),
    weight-only int8 for bfloat16 elsewhere, nothing for other dtypes."""
    if setting is Quantize.W8A8 and not w8a8.available(base.device):
        raise LeanUnsupported("int8 activations need a CPU torch build with oneDNN")
    if setting is not Quantize.AUTO:
        return setting
    if base.dtype != torch.bfloat16:
        return Quantize.NONE
    return Quantize.W8A8 if w8a8.available(base.device) else Quantize.INT8


def _quantized(
    base: FrozenModel, model: lean.LeanModel, mode: Quantize, config: EngineConfig
) -> lean.LeanModel:
    quantized = weights.quantize_int8(model, config.int8_max_tokens)
    if mode is Quantize.W8A8 and quantized.layers[0].qkv.weight is not None:  # larger steps too
        ids = base.tokenizer(w8a8.CALIBRATION, add_special_tokens=False)["input_ids"]
        quantized = w8a8.quantize(quantized, ids, config.int8_max_tokens)
    single = None if config.native_dir is None else native.build(quantized, config.native_dir)
    return quantized if single is None else replace(quantized, single=single)


def _quantize_later(runner: LeanRunner, quantized: Callable[[], lean.LeanModel]) -> None:
    def work() -> None:
        started = time.perf_counter()
        try:
            model = quantized()
        except Exception:  # the server goes on with the unquantized weights, and says so
            log.exception("quantizing the weights failed: serving them unquantized")
            return
        runner.upgrade(model)
        log.info("quantized weights ready after %.1f s", time.perf_counter() - started)

    threading.Thread(target=work, name="softserve-quantize", daemon=True).start()


class Engine:
    def __init__(self, base: FrozenModel, config: EngineConfig | None = None) -> None:
        self.base = base
        self.config = config or EngineConfig()
        limit = self.config.max_context or base.spec.max_context
        self.max_context = min(limit, base.spec.max_context)
        self.runner = make_runner(base, self.config, self.max_context)
        # The lean forward computes prompt-tuning prefixes itself: the HF model is never built.
        virtual = self.runner.virtual_kv if isinstance(self.runner, LeanRunner) else None
        self.prefixes = PrefixCache(base, int(self.config.kv_prefix_cache_mib * 2**20), virtual)
        self.history: deque[StepRecord] = deque(maxlen=self.config.history_steps)
        self._waiting: deque[GenerationRequest] = deque()
        self._rows: list[_Row] = []  # in admission order
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
        if s.max_tokens < 0:
            raise RequestError(f"max_tokens must be >= 0, got {s.max_tokens}", param="max_tokens")
        if s.prompt_logprobs is not None and s.prompt_logprobs < 0:
            raise RequestError("prompt_logprobs must be >= 0", param="prompt_logprobs")
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
        self._rows = []
        self._aborted.clear()
        self.runner.reset()

    def abort(self, request_id: str) -> None:
        """Takes effect at the start of the next step: the row leaves before any compute."""
        self._aborted.add(request_id)

    @torch.inference_mode()
    def step(self) -> StepResult:
        outputs = self._drop_aborted(self._expired())
        plan = self._schedule()
        if not plan.segments:
            return StepResult(outputs=tuple(outputs), ran=None)
        logits = self.runner.forward(list(plan.segments))  # execute
        outputs.extend(self._update(plan, logits))
        self._steps += 1
        record = StepRecord(
            step=self._steps,
            prefilled=plan.prefilled,
            decoded=plan.decoding,
            tasks=tuple(
                r.request.soft_prompt.key if r.request.soft_prompt else None
                for r in self._rows_in(plan)
            ),
        )
        self.history.append(record)
        return StepResult(outputs=tuple(outputs), ran=record)

    # -- schedule ---------------------------------------------------------------------------

    def _schedule(self) -> SchedulerOutput:
        """Every decoding row takes one token; prompts fill the prefill budget, rows already
        part-way first, then new rows while slots are free (a row's first chunk is its admission)."""
        segments = [
            Segment(r.slot, (r.last_token,), r.next_position, emit=True)
            for r in self._rows
            if r.decoding
        ]
        decoding = tuple(r.request.request_id for r in self._rows if r.decoding)
        budget = self.config.prefill_chunk if self.runner.chunked_prefill else 1 << 62
        prefilled: list[str] = []
        for row in [r for r in self._rows if not r.decoding]:
            if budget <= 0:
                break
            segments.append(self._chunk(row, budget))
            budget -= len(segments[-1].tokens)
            prefilled.append(row.request.request_id)
        admitted: list[GenerationRequest] = []
        while self._waiting and self.runner.free_slots and budget > 0:
            row = self._new_row(self._waiting.popleft())
            self._rows.append(row)
            admitted.append(row.request)
            segments.append(self._chunk(row, budget))
            budget -= len(segments[-1].tokens)
            prefilled.append(row.request.request_id)
        return SchedulerOutput(tuple(segments), tuple(admitted), tuple(prefilled), decoding)

    def _chunk(self, row: _Row, budget: int) -> Segment:
        prompt = row.request.prompt_ids
        tokens = prompt[row.prefilled : row.prefilled + budget]
        done = row.prefilled + len(tokens) == len(prompt)
        score = row.request.sampling.prompt_logprobs is not None
        return Segment(row.slot, tokens, row.virtual + row.prefilled, emit=done, score=score)

    def _rows_in(self, plan: SchedulerOutput) -> list[_Row]:
        ids = set(plan.decoding) | set(plan.prefilled)
        return [r for r in self._rows if r.request.request_id in ids]

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
        leaving = [row for row in self._rows if row.request.request_id in gone]
        dropped += [row.request for row in leaving]
        self._remove(leaving)
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

    # -- update -----------------------------------------------------------------------------

    def _new_row(self, request: GenerationRequest) -> _Row:
        seed = request.sampling.seed
        generator = torch.Generator(device=self.base.device)
        generator.manual_seed(seed if seed is not None else self._seeds.getrandbits(63))
        soft = request.soft_prompt
        virtual = soft.num_virtual_tokens if soft else 0
        prefix = self.prefixes.get(soft) if soft else None
        # A slot may still hold this prompt's first tokens (after the same soft prompt) from an
        # earlier row: those are not computed again. At least the last token is, for the logits
        # that choose the first answer token; a scored prompt needs every token's logits.
        scored = request.sampling.prompt_logprobs is not None
        reusable = () if scored else request.prompt_ids[:-1]
        admission = self.runner.admit(prefix, soft.key if soft else _BARE, reusable)
        return _Row(
            request=request,
            slot=admission.slot,
            generator=generator,
            text=TextStream(self.base.tokenizer, request.sampling.stop),
            virtual=virtual,
            cached=admission.reused,
            prefilled=admission.reused,
            matcher=request.sampling.constraint.matcher() if request.sampling.constraint else None,
        )

    def _update(self, plan: SchedulerOutput, step: StepLogits) -> list[RequestOutput]:
        by_slot = {row.slot: row for row in self._rows}
        for scored in step.scored:  # before `prefilled` moves: the chunk starts there
            self._score(by_slot[scored.slot], scored)
        for seg in plan.segments:
            row = by_slot[seg.slot]
            if not row.decoding:
                row.prefilled += len(seg.tokens)
        logits = step.logits
        rows = [by_slot[slot] for slot in step.slots]  # the rows that sample, in logits order
        constrained = [(i, r.matcher) for i, r in enumerate(rows) if r.matcher is not None]
        choosing = (
            apply_masks(logits, constrained, self.base.spec.eos_token_ids)
            if constrained
            else logits
        )
        tokens = sample(choosing, [r.request.sampling for r in rows], [r.generator for r in rows])
        outputs = [
            self._advance(row, token, logits[i])
            for i, (row, token) in enumerate(zip(rows, tokens, strict=True))
        ]
        self._remove([row for row, out in zip(rows, outputs, strict=True) if out.finish_reason])
        return outputs

    def _score(self, row: _Row, scored: Scored) -> None:
        """Prompt log-probabilities of one chunk: the logits at prompt token i score token i+1
        (those at the last prompt token score the first generated one: not a prompt token)."""
        prompt, start = row.request.prompt_ids, row.prefilled
        if start == 0:
            row.scores.append(None)  # nothing before the first token scores it
        targets = list(prompt[start + 1 : start + 1 + len(scored.logits)])
        if targets:
            top = row.request.sampling.prompt_logprobs or 0
            row.scores.extend(prompt_logprobs(scored.logits, targets, top))

    def _advance(self, row: _Row, token: int, logits: torch.Tensor) -> RequestOutput:
        sampling = row.request.sampling
        first = row.generated == 0
        if sampling.max_tokens == 0:  # prompt only (scored, echoed): nothing is generated
            return self._output(row, (), "", (), FinishReason.LENGTH, first)
        row.generated += 1
        row.last_token = token
        finish: FinishReason | None = None
        is_eos = token in self.base.spec.eos_token_ids
        if row.matcher is not None and not is_eos:
            row.matcher.consume(token)
        if is_eos and not sampling.ignore_eos:
            finish, text = FinishReason.STOP, row.text.flush()
        else:
            text, stopped = row.text.add(token)
            if stopped:
                finish = FinishReason.STOP
            elif row.matcher is not None and row.matcher.finished():
                # The grammar is complete: the answer ends here, whatever the model would add.
                finish, text = FinishReason.STOP, text + row.text.flush()
            elif row.generated >= sampling.max_tokens:
                finish, text = FinishReason.LENGTH, text + row.text.flush()
        logprobs: tuple[TokenLogprob, ...] = ()
        if sampling.logprobs is not None:
            logprobs = (token_logprob(logits, token, sampling.logprobs),)
        return self._output(row, (token,), text, logprobs, finish, first)

    def _output(
        self,
        row: _Row,
        tokens: tuple[int, ...],
        text: str,
        logprobs: tuple[TokenLogprob, ...],
        finish: FinishReason | None,
        first: bool,
    ) -> RequestOutput:
        """The row's first output also carries what concerns its prompt."""
        return RequestOutput(
            request_id=row.request.request_id,
            token_ids=tokens,
            text=text,
            logprobs=logprobs,
            finish_reason=finish,
            prompt_tokens=len(row.request.prompt_ids),
            completion_tokens=row.generated,
            prompt_logprobs=tuple(row.scores) if first else (),
            cached_tokens=row.cached if first else 0,
        )

    def _remove(self, leaving: list[_Row]) -> None:
        if not leaving:
            return
        gone = {id(row) for row in leaving}
        self._rows = [row for row in self._rows if id(row) not in gone]
        self.runner.release([row.slot for row in leaving])
