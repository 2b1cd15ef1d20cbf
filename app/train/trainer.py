"""The training loop: only the soft prompt (and its PEFT encoder) learns; the base stays frozen."""

from __future__ import annotations

import copy
import logging
import math
import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum

import torch
from app.model.kinds import PromptKind
from app.model.loader import FrozenModel
from app.train.adapters import InitKind, PromptInit, prepends_embeddings, trainable_model
from app.train.compress import attention_to_context, compress_context
from app.train.data import ChatExample, Example
from app.train.encode import Encoded, collate, encode, pad_id
from app.train.scoring import kl_divergence, score_targets, target_logits_and_ids
from app.train.teacher import Teacher, teacher_logits
from peft import PeftModel
from tqdm import tqdm

log = logging.getLogger(__name__)

# Prompt tuning moves raw embeddings and wants a large step; the encoder MLP and the key/value
# table are more sensitive.
DEFAULT_LR = {
    PromptKind.PROMPT_TUNING: 3e-2,
    PromptKind.P_TUNING: 1e-3,
    PromptKind.PREFIX_TUNING: 3e-3,
}


class Objective(StrEnum):
    CE = "ce"  # cross-entropy on the answer text
    KL = "kl"  # KL(teacher || student) over the teacher's whole next-token distribution
    # Both, summed per answer token (Hinton et al. 2015's soft + hard targets): the teacher's
    # distribution, pulled toward the answers that passed the persona's check, so the student
    # learns the teacher without its habit of breaking the persona where the check filtered it.
    KL_CE = "kl+ce"

    @property
    def distills(self) -> bool:
        """Needs a teacher."""
        return self is not Objective.CE


@dataclass(frozen=True)
class TrainConfig:
    kind: PromptKind
    objective: Objective = Objective.CE
    template: str | None = None
    virtual_tokens: int = 20
    init: PromptInit = field(default_factory=lambda: PromptInit(InitKind.RANDOM))
    epochs: int = 3
    max_steps: int | None = None  # when set, train this many optimizer steps; epochs is ignored
    lr: float | None = None  # None: DEFAULT_LR[kind]
    batch_size: int = 8
    val_split: float = 0.1  # a fraction (< 1) or a number of examples (>= 1)
    eval_every: int | None = None  # steps between validations; None: once per epoch
    patience: int = 3  # validations without improvement before stopping
    max_tokens: int = 512  # longer examples are skipped (and counted)
    seed: int = 0
    # kl+ce: the text cross-entropy's weight beside the KL's 1. Per token the CE (~1-2 nats) dwarfs
    # the KL (~0.1), so at 1 the text sets the direction; below 1 the teacher gets more say.
    ce_weight: float = 1.0
    progress: bool = True

    @property
    def text_weight(self) -> float:
        """What the text cross-entropy adds to the KL per answer token: ce_weight under kl+ce,
        nothing under the other objectives (validate() keeps ce_weight at 1 there)."""
        return self.ce_weight if self.objective is Objective.KL_CE else 0.0

    def validate(self) -> None:
        for name in ("virtual_tokens", "epochs", "batch_size", "patience", "max_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"steps must be at least 1, got {self.max_steps}")
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a positive number, got {self.lr}")
        if not (math.isfinite(self.ce_weight) and self.ce_weight > 0):
            raise ValueError(f"ce_weight must be a positive number, got {self.ce_weight}")
        if self.ce_weight != 1.0 and self.objective is not Objective.KL_CE:
            raise ValueError(f"ce_weight applies to the kl+ce objective only, not {self.objective}")
        if not self.val_split >= 0 or (
            self.val_split >= 1 and self.val_split != int(self.val_split)
        ):
            raise ValueError(
                f"val_split must be a fraction in [0, 1) or a count, got {self.val_split}"
            )
        if self.template is not None and "{input}" not in self.template:
            raise ValueError(f"template {self.template!r} must contain {{input}}")
        self.init.check(self.kind)
        if self.init.kind is InitKind.TEACHER and not self.objective.distills:
            raise ValueError(
                "--init teacher compresses the distillation teacher's context: it needs "
                "--distill-from and the kl or kl+ce objective"
            )


@dataclass(frozen=True)
class Validation:
    step: int
    epoch: float
    train_loss: float  # mean over the steps since the previous validation
    val_loss: float | None


@dataclass(frozen=True)
class TrainReport:
    initial_val_loss: float | None  # before the first step
    history: tuple[Validation, ...]
    step_losses: tuple[float, ...]
    best: Validation
    steps: int
    seconds: float
    tokens: int
    train_examples: int
    val_examples: int
    skipped_too_long: int
    stopped_early: bool

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


@dataclass(frozen=True)
class Trained:
    model: PeftModel  # holds the best weights
    report: TrainReport


def _split(
    rows: list[Encoded], val_split: float, rng: random.Random
) -> tuple[list[Encoded], list[Encoded]]:
    rows = rows[:]
    rng.shuffle(rows)
    n_val = int(val_split) if val_split >= 1 else int(len(rows) * val_split)
    n_val = min(n_val, len(rows) - 1)
    return rows[n_val:], rows[:n_val]


def _batches(rows: Sequence[Encoded], size: int, rng: random.Random) -> Iterator[list[Encoded]]:
    """Shuffled batches of similar lengths: sorting within windows of 32 batches cuts padding."""
    order = list(rows)
    rng.shuffle(order)
    window = size * 32
    batches = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda r: len(r.ids))
        batches += [chunk[i : i + size] for i in range(0, len(chunk), size)]
    rng.shuffle(batches)
    yield from batches


@dataclass(frozen=True)
class Loss:
    """What one batch is trained on: the student, and the teacher when distilling."""

    base: FrozenModel
    pad_id: int
    teacher: Teacher | None = None
    ce_weight: float = 0.0  # add the answer text's cross-entropy, so weighted, to the KL (KL_CE)

    def summed(self, model: PeftModel, rows: Sequence[Encoded]) -> tuple[torch.Tensor, int]:
        """The loss summed over the rows' target tokens, and how many there are."""
        offset = prepends_embeddings(model)
        batch = collate(list(rows), self.pad_id)
        if self.teacher is None:
            scores = score_targets(model, batch, offset)
            return -(scores.logprobs * scores.mask).sum(), int(scores.mask.sum())
        taught = [r.teacher for r in rows]
        assert all(t is not None for t in taught)  # encoded with the teacher (_encode_all)
        target = teacher_logits(self.base, self.teacher, collate(taught, self.pad_id))  # type: ignore[arg-type]
        student, ids = target_logits_and_ids(model, batch, offset)  # [N, V], [N]
        if target.shape != student.shape:
            raise ValueError("teacher and student rows do not share their answer tokens")
        per = kl_divergence(target, student)  # [N]
        if self.ce_weight:
            ce = -torch.log_softmax(student.float(), -1).gather(-1, ids[:, None])[:, 0]  # [N]
            per = per + self.ce_weight * ce
        return per.sum(), int(student.shape[0])


@torch.no_grad()
def mean_loss(model: PeftModel, rows: Sequence[Encoded], batch_size: int, loss: Loss) -> float:
    total, count = 0.0, 0
    ordered = sorted(rows, key=lambda r: len(r.ids))
    for i in range(0, len(ordered), batch_size):
        summed, n = loss.summed(model, ordered[i : i + batch_size])
        total += float(summed)
        count += n
    return total / max(count, 1)


def _encode_all(
    base: FrozenModel, examples: Sequence[Example], config: TrainConfig, teacher: Teacher | None
) -> tuple[list[Encoded], int]:
    rows = [encode(base.tokenizer, e, config.template, config.max_tokens) for e in examples]
    if teacher is not None:
        rows = [
            replace(r, teacher=teacher.encode(base.tokenizer, e))
            if r is not None and isinstance(e, ChatExample)
            else None
            for r, e in zip(rows, examples, strict=True)
        ]
    kept = [r for r in rows if r is not None and any(r.targets)]
    return kept, len(rows) - len(kept)


def train(
    base: FrozenModel,
    examples: Sequence[Example],
    config: TrainConfig,
    teacher: Teacher | None = None,
) -> Trained:
    """Train a soft prompt on `examples`: by cross-entropy on their answers, (objective KL) to
    match `teacher`'s next-token distributions along them, or (KL_CE) both."""
    config.validate()
    if config.objective.distills != (teacher is not None):
        raise ValueError(
            f"the {config.objective} objective needs a teacher (--distill-from), and only kl and kl+ce do"
            if config.objective.distills
            else "the ce objective takes no teacher: use kl or kl+ce with --distill-from"
        )
    rng = random.Random(config.seed)
    torch.manual_seed(config.seed)
    rows, skipped = _encode_all(base, examples, config, teacher)
    if len(rows) < 2:
        raise ValueError(f"need at least 2 usable examples, got {len(rows)} ({skipped} too long)")
    train_rows, val_rows = _split(rows, config.val_split, rng)
    objective = Loss(base, pad_id(base.tokenizer), teacher, ce_weight=config.text_weight)
    init = config.init
    if init.kind is InitKind.TEACHER and teacher is not None:
        # What the answers read, measured on (at most) the first 64 training chats.
        reads = [r.teacher for r in train_rows[:64] if r.teacher is not None]
        scores = attention_to_context(base, teacher, reads, config.batch_size)
        init = replace(init, table=compress_context(base, teacher, scores, config.virtual_tokens))
    model = trainable_model(base, config.kind, config.virtual_tokens, init)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr or DEFAULT_LR[config.kind], weight_decay=0.0)
    per_epoch = math.ceil(len(train_rows) / config.batch_size)
    # Steps, when given, win over epochs: a small distillation set needs many passes.
    total = config.max_steps or per_epoch * config.epochs
    warmup = max(1, total // 10)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, max(0.0, (total - s) / max(1, total - warmup)))
    )
    eval_every = config.eval_every or per_epoch
    history: list[Validation] = []
    losses: list[float] = []
    best: Validation | None = None
    best_state = copy.deepcopy(model.prompt_encoder.state_dict())
    since_best, step, tokens, stopped_early = 0, 0, 0, False
    initial = mean_loss(model, val_rows, config.batch_size, objective) if val_rows else None
    started = time.perf_counter()
    bar = tqdm(total=total, disable=not config.progress, unit="step", dynamic_ncols=True)
    while step < total and not stopped_early:
        for rows_ in _batches(train_rows, config.batch_size, rng):
            summed, count = objective.summed(model, rows_)
            loss = summed / max(count, 1)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            scheduler.step()
            step += 1
            tokens += sum(len(r.ids) for r in rows_)
            losses.append(float(loss.detach()))
            elapsed = time.perf_counter() - started
            bar.set_postfix(loss=f"{losses[-1]:.3f}", tok_s=f"{tokens / elapsed:.0f}")
            bar.update(1)
            if step % eval_every == 0 or step == total:
                recent = losses[-(step - (history[-1].step if history else 0)) :]
                val = mean_loss(model, val_rows, config.batch_size, objective) if val_rows else None
                point = Validation(step, step / per_epoch, sum(recent) / len(recent), val)
                history.append(point)
                bar.write(
                    f"step {step} epoch {point.epoch:.2f}: train loss {point.train_loss:.4f}"
                    + (f", validation loss {val:.4f}" if val is not None else "")
                )
                score = val if val is not None else point.train_loss
                if best is None or score < (
                    best.val_loss if best.val_loss is not None else best.train_loss
                ):
                    best, since_best = point, 0
                    best_state = copy.deepcopy(model.prompt_encoder.state_dict())
                else:
                    since_best += 1
                    stopped_early = since_best >= config.patience
            if step >= total or stopped_early:
                break
    bar.close()
    model.prompt_encoder.load_state_dict(best_state)
    assert best is not None  # total >= 1, and the last step always validates
    report = TrainReport(
        initial_val_loss=initial,
        history=tuple(history),
        step_losses=tuple(losses),
        best=best,
        steps=step,
        seconds=time.perf_counter() - started,
        tokens=tokens,
        train_examples=len(train_rows),
        val_examples=len(val_rows),
        skipped_too_long=skipped,
        stopped_early=stopped_early,
    )
    return Trained(model=model, report=report)
