"""`--init teacher`: the teacher's context compressed into a prefix (tiny model)."""

from __future__ import annotations

import pytest
import torch

from app.model import FrozenModel
from app.train.adapters import PromptInit, key_values_table
from app.train.compress import SINKS, _rotate, attention_to_context, compress_context, rope_inv_freq
from app.train.teacher import build_teacher
from app.train.trainer import Objective, train
from tests.test_distill import CONTEXT, _chats
from tests.test_train import quick_config


def _layer0_key(base: FrozenModel, table: torch.Tensor, row: int) -> torch.Tensor:
    spec = base.spec
    return table[row].view(spec.num_layers, 2, spec.num_kv_heads, spec.head_dim)[0, 0]  # [H, D]


def test_rotating_a_key_moves_it_along_rope(tiny: FrozenModel) -> None:
    """Layer 0's key of a token depends on the token and its position only: the key read at
    position 2, rotated back by 2, is the key the same token has at position 0."""
    ids = torch.tensor(tiny.tokenizer("fox dog Paris", add_special_tokens=False)["input_ids"])
    assert len(ids) >= 3
    at_2 = _layer0_key(tiny, key_values_table(tiny, ids[:3]), 2)
    at_0 = _layer0_key(tiny, key_values_table(tiny, ids[2:3]), 0)
    assert not torch.allclose(at_2, at_0, atol=1e-3)  # RoPE did move it
    moved = _rotate(at_2, torch.full((at_2.shape[0],), -2), rope_inv_freq(tiny))
    assert torch.allclose(moved, at_0, atol=1e-5)


def test_keeping_every_position_is_the_teacher_itself(tiny: FrozenModel) -> None:
    teacher = build_teacher(tiny, CONTEXT, "toy")
    spec, n = tiny.spec, len(teacher.context_ids)
    scores = torch.rand(spec.num_layers, spec.num_kv_heads, n)
    table = compress_context(tiny, teacher, scores, n)
    assert torch.allclose(table, teacher.prompt.table, atol=1e-6)


def test_each_head_keeps_the_sinks_and_its_own_most_read_position(tiny: FrozenModel) -> None:
    teacher = build_teacher(tiny, CONTEXT, "toy")
    spec, n = tiny.spec, len(teacher.context_ids)
    layers, heads, dim = spec.num_layers, spec.num_kv_heads, spec.head_dim
    scores = torch.zeros(layers, heads, n)
    chosen = torch.randint(SINKS, n, (layers, heads))
    scores.scatter_(-1, chosen[..., None], 1.0)
    table = compress_context(tiny, teacher, scores, SINKS + 1)  # [P, W]
    got = table.view(SINKS + 1, layers, 2, heads, dim)
    full = teacher.prompt.table.view(n, layers, 2, heads, dim)
    inv = rope_inv_freq(tiny)
    for layer in range(layers):
        for head in range(heads):
            c = int(chosen[layer, head])
            assert torch.equal(got[:SINKS, layer, :, head], full[:SINKS, layer, :, head])
            assert torch.equal(got[SINKS, layer, 1, head], full[c, layer, 1, head])  # value
            key = _rotate(full[c, layer, 0, head], torch.tensor(SINKS - c), inv)
            assert torch.allclose(got[SINKS, layer, 0, head], key, atol=1e-5)


def test_the_answers_attention_is_measured_and_sdpa_restored(tiny: FrozenModel) -> None:
    teacher = build_teacher(tiny, CONTEXT, "toy")
    rows = [teacher.encode(tiny.tokenizer, c) for c in _chats(5)]
    scores = attention_to_context(tiny, teacher, rows, batch_size=2)
    spec = tiny.spec
    answers = sum(sum(r.targets) for r in rows)  # one query predicts each answer token
    query_heads = spec.num_layers * spec.num_heads  # each query's weights sum to 1 per head
    assert scores.shape == (spec.num_layers, spec.num_kv_heads, len(teacher.context_ids))
    assert 0 < float(scores.sum()) < answers * query_heads
    assert tiny.model.config._attn_implementation == "sdpa"


def test_teacher_init_starts_nearer_the_teacher_and_trains(tiny: FrozenModel) -> None:
    teacher = build_teacher(tiny, CONTEXT, "toy")
    common = {"template": None, "objective": Objective.KL, "val_split": 12, "eval_every": 20}
    compressed = quick_config(
        "prefix", init=PromptInit.parse("teacher"), max_steps=40, virtual_tokens=6, **common
    )
    random = quick_config(
        "prefix", init=PromptInit.parse("random"), max_steps=1, virtual_tokens=6, **common
    )
    ours = train(tiny, _chats(), compressed, teacher).report
    theirs = train(tiny, _chats(), random, teacher).report
    assert ours.initial_val_loss is not None and theirs.initial_val_loss is not None
    assert ours.initial_val_loss < theirs.initial_val_loss, (ours, theirs)
    assert ours.best.val_loss is not None and ours.best.val_loss < ours.initial_val_loss


@pytest.mark.parametrize(
    ("kind", "objective", "tokens", "error"),
    [
        ("prefix", Objective.CE, 4, "needs --distill-from"),
        ("prompt", Objective.KL, 4, "does not apply to --kind prompt"),
        ("prefix", Objective.KL, 999, "the teacher's context has"),
    ],
)
def test_teacher_init_is_refused_where_it_cannot_apply(
    tiny: FrozenModel, kind: str, objective: Objective, tokens: int, error: str
) -> None:
    teacher = build_teacher(tiny, CONTEXT, "toy")
    config = quick_config(
        kind,
        template=None,
        objective=objective,
        init=PromptInit.parse("teacher"),
        virtual_tokens=tokens,
        max_steps=1,
    )
    with pytest.raises(ValueError, match=error):
        train(tiny, _chats(), config, teacher if objective.distills else None)
