"""Registry read path: every kind loads; every invalid entry is skipped with a reason."""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from app.model import FrozenModel
from app.registry import PromptKind, Registry, validate_task_name
from app.registry.errors import InvalidTaskName
from tests.conftest import KINDS, MakeAdapter

CONFIG = "adapter_config.json"
TENSOR = "adapter_model.safetensors"


def test_loads_every_kind(tiny: FrozenModel, make_adapter: MakeAdapter, tmp_path: Path) -> None:
    for kind in KINDS:
        make_adapter(tmp_path, f"t-{kind}", kind, num_virtual_tokens=6)
    (tmp_path / "t-prompt" / "task.json").write_text(
        json.dumps(
            {
                "description": "demo",
                "template": "Q: {input}\nA:",
                "labels": ["a", "b"],
                "defaults": {"temperature": 0.2, "max_tokens": 7, "stop": ["\n"]},
            }
        )
    )
    reg = Registry(tmp_path, tiny.spec)
    reg.load_all()
    assert reg.skipped == ()
    kinds = {e.name: e.kind for e in reg.entries()}
    assert kinds == {
        "t-prompt": PromptKind.PROMPT_TUNING,
        "t-p-tuning": PromptKind.P_TUNING,
        "t-prefix": PromptKind.PREFIX_TUNING,
    }
    prefix = reg.get("t-prefix")
    assert prefix.soft_prompt.kind is PromptKind.PREFIX_TUNING
    # GQA: PEFT stores num_key_value_heads * head_dim per layer half, not hidden_size.
    assert prefix.soft_prompt.table.shape == (
        6,
        tiny.spec.num_layers * 2 * tiny.spec.num_kv_heads * tiny.spec.head_dim,
    )
    assert tiny.spec.num_kv_heads < tiny.spec.num_heads
    entry = reg.get("t-prompt")
    assert entry.version == 1 and len(entry.sha256) == 64 and entry.num_virtual_tokens == 6
    assert entry.meta.template == "Q: {input}\nA:" and entry.meta.defaults.max_tokens == 7
    assert entry.meta.apply_template("hi") == "Q: hi\nA:"


def _write_table(folder: Path, table: torch.Tensor, key: str = "prompt_embeddings") -> None:
    save_file({key: table}, str(folder / TENSOR))


def _edit_config(folder: Path, **changes: object) -> None:
    raw = json.loads((folder / CONFIG).read_text())
    raw.update(changes)
    (folder / CONFIG).write_text(json.dumps(raw))


def _truncate(folder: Path) -> None:
    data = (folder / TENSOR).read_bytes()
    (folder / TENSOR).write_bytes(data[: len(data) - 10])


def _huge_header(folder: Path) -> None:
    (folder / TENSOR).write_bytes(struct.pack("<Q", 10**9) + b"{}")


def _nan(folder: Path) -> None:
    table = torch.zeros(5, 64)
    table[2, 3] = float("nan")
    _write_table(folder, table)


def _inf(folder: Path) -> None:
    table = torch.zeros(5, 64)
    table[0, 0] = float("inf")
    _write_table(folder, table)


def _pickle_only(folder: Path) -> None:
    (folder / TENSOR).unlink()
    (folder / "adapter_model.bin").write_bytes(b"\x80\x04K\x01.")


def _symlink(folder: Path) -> None:
    target = folder.parent / "elsewhere.safetensors"
    (folder / TENSOR).rename(target)
    os.symlink(target, folder / TENSOR)


CASES: dict[str, tuple[Callable[[Path], None], str]] = {
    "lora-config": (lambda f: _edit_config(f, peft_type="LORA"), "not a prompt-learning kind"),
    "not-json": (lambda f: (f / CONFIG).write_text("{nope"), "not valid UTF-8 JSON"),
    "wrong-hidden": (lambda f: _write_table(f, torch.zeros(5, 32)), "the model needs [5, 64]"),
    "wrong-count": (lambda f: _write_table(f, torch.zeros(4, 64)), "the model needs [5, 64]"),
    "over-cap": (lambda f: _edit_config(f, num_virtual_tokens=100_000), "over the cap"),
    "wrong-layers": (lambda f: _edit_config(f, num_layers=7), "num_layers is 7"),
    "int-dtype": (
        lambda f: _write_table(f, torch.zeros(5, 64, dtype=torch.int32)),
        "dtype 'I32' not allowed",
    ),
    "extra-key": (
        lambda f: save_file(
            {"prompt_embeddings": torch.zeros(5, 64), "x": torch.zeros(1)}, str(f / TENSOR)
        ),
        "exactly one tensor",
    ),
    "wrong-key": (
        lambda f: _write_table(f, torch.zeros(5, 64), key="weights"),
        "exactly one tensor",
    ),
    "truncated": (_truncate, "truncated"),
    "huge-header": (_huge_header, "over the 65536 limit"),
    "nan": (_nan, "NaN or Inf"),
    "inf": (_inf, "NaN or Inf"),
    "pickle-bin": (_pickle_only, "pickle (.bin) files are never loaded"),
    "no-config": (lambda f: (f / CONFIG).unlink(), "adapter_config.json: missing"),
    "symlink": (_symlink, "symlinks are not allowed"),
    "bad-task-json": (
        lambda f: (f / "task.json").write_text('{"template": "no placeholder"}'),
        "{input}",
    ),
    "seq2seq": (lambda f: _edit_config(f, task_type="SEQ_2_SEQ_LM"), "not CAUSAL_LM"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_invalid_entry_is_skipped_and_reported(
    case: str,
    tiny: FrozenModel,
    make_adapter: MakeAdapter,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    make_adapter(tmp_path, "good", "prompt", num_virtual_tokens=5)
    bad = make_adapter(tmp_path, "bad", "prompt", num_virtual_tokens=5)
    mutate, reason = CASES[case]
    mutate(bad)
    reg = Registry(tmp_path, tiny.spec)
    with caplog.at_level("WARNING", logger="softserve.registry"):
        reg.load_all()
    assert [e.name for e in reg.entries()] == ["good"]  # the server still starts with the rest
    assert len(reg.skipped) == 1 and reg.skipped[0].path.endswith("bad")
    assert reason in reg.skipped[0].reason
    assert any("bad" in r.getMessage() and reason in r.getMessage() for r in caplog.records)


def test_bad_folder_names_are_skipped(
    tiny: FrozenModel, make_adapter: MakeAdapter, tmp_path: Path
) -> None:
    make_adapter(tmp_path, "Upper-Case", "prompt")
    make_adapter(tmp_path, ".staging-x", "prompt")  # in-flight writes are not entries
    (tmp_path / "README.md").write_text("not a task")
    reg = Registry(tmp_path, tiny.spec)
    reg.load_all()
    assert len(reg) == 0
    assert [s.path.rsplit("/", 1)[-1] for s in reg.skipped] == ["Upper-Case"]


@pytest.mark.parametrize(
    "name", ["../x", "a/b", "/abs", "a\x00b", "x" * 65, "", "..", "a..b", "Abc", "-a", "a\n"]
)
def test_task_name_rejected(name: str) -> None:
    with pytest.raises(InvalidTaskName):
        validate_task_name(name)


@pytest.mark.parametrize("name", ["a", "sst2-sentiment", "pirate.v2", "x_1", "9" * 64])
def test_task_name_accepted(name: str) -> None:
    assert validate_task_name(name) == name
