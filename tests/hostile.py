"""Builders of hostile uploads for PUT /v1/prompts: each must be refused with the registry untouched."""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import save

Files = dict[str, bytes]


def good_files(folder: Path) -> Files:
    return {
        p.name: p.read_bytes()
        for p in folder.iterdir()
        if p.name in ("adapter_config.json", "adapter_model.safetensors", "task.json")
    }


def _config(files: Files, **changes: object) -> Files:
    raw = json.loads(files["adapter_config.json"])
    raw.update(changes)
    return {**files, "adapter_config.json": json.dumps(raw).encode()}


def _tensor(files: Files, tensors: dict[str, torch.Tensor]) -> Files:
    return {**files, "adapter_model.safetensors": save(tensors)}


def _nan(files: Files, hidden: int) -> Files:
    t = torch.zeros(5, hidden)
    t[1, 1] = float("nan")
    return _tensor(files, {"prompt_embeddings": t})


def _inf(files: Files, hidden: int) -> Files:
    t = torch.zeros(5, hidden)
    t[0, 0] = float("-inf")
    return _tensor(files, {"prompt_embeddings": t})


def cases(
    hidden: int, layers: int, heads: int, head_dim: int
) -> dict[str, tuple[Callable[[Files], Files], int]]:
    """name -> (mutation of a valid 5-token PROMPT_TUNING upload, expected status)."""
    prefix_gqa_wrong = layers * 2 * heads * head_dim  # num_heads instead of num_key_value_heads
    return {
        "truncated": (
            lambda f: {**f, "adapter_model.safetensors": f["adapter_model.safetensors"][:-7]},
            400,
        ),
        "corrupt-bytes": (lambda f: {**f, "adapter_model.safetensors": b"\x13\x37" * 50}, 400),
        "header-too-big": (
            lambda f: {
                **f,
                "adapter_model.safetensors": struct.pack("<Q", 1 << 30) + b"{" + b" " * 64,
            },
            400,
        ),
        "pickle-as-safetensors": (
            lambda f: {**f, "adapter_model.safetensors": b"\x80\x04\x95" + b"\x00" * 40 + b"."},
            400,
        ),
        "extra-key": (
            lambda f: _tensor(
                f, {"prompt_embeddings": torch.zeros(5, hidden), "evil": torch.zeros(2)}
            ),
            400,
        ),
        "missing-key": (lambda f: _tensor(f, {"other": torch.zeros(5, hidden)}), 400),
        "wrong-dtype": (
            lambda f: _tensor(
                f, {"prompt_embeddings": torch.zeros(5, hidden, dtype=torch.float64)}
            ),
            400,
        ),
        "int-dtype": (
            lambda f: _tensor(f, {"prompt_embeddings": torch.zeros(5, hidden, dtype=torch.int64)}),
            400,
        ),
        "wrong-hidden": (
            lambda f: _tensor(f, {"prompt_embeddings": torch.zeros(5, hidden + 8)}),
            400,
        ),
        "wrong-token-count": (
            lambda f: _tensor(f, {"prompt_embeddings": torch.zeros(6, hidden)}),
            400,
        ),
        "three-dims": (lambda f: _tensor(f, {"prompt_embeddings": torch.zeros(5, hidden, 1)}), 400),
        "prefix-wrong-layers": (
            lambda f: _tensor(
                _config(f, peft_type="PREFIX_TUNING"),
                {"prompt_embeddings": torch.zeros(5, (layers + 1) * 2 * 2 * head_dim)},
            ),
            400,
        ),
        "prefix-wrong-kv-heads": (
            lambda f: _tensor(
                _config(f, peft_type="PREFIX_TUNING"),
                {"prompt_embeddings": torch.zeros(5, prefix_gqa_wrong)},
            ),
            400,
        ),
        "config-layers": (lambda f: _config(f, num_layers=layers + 5), 400),
        "too-many-virtual-tokens": (lambda f: _config(f, num_virtual_tokens=10_000), 400),
        "nan": (lambda f: _nan(f, hidden), 400),
        "inf": (lambda f: _inf(f, hidden), 400),
        "lora-config": (lambda f: _config(f, peft_type="LORA"), 400),
        "config-not-json": (
            lambda f: {**f, "adapter_config.json": b"peft_type: PROMPT_TUNING"},
            400,
        ),
        "config-not-object": (lambda f: {**f, "adapter_config.json": b"[1, 2]"}, 400),
        "bad-task-json": (lambda f: {**f, "task.json": b'{"defaults": {"temperature": 9}}'}, 400),
        "unknown-task-json-key": (lambda f: {**f, "task.json": b'{"sytem_prompt": "typo"}'}, 400),
        "bin-file": (
            lambda f: {
                "adapter_config.json": f["adapter_config.json"],
                "adapter_model.bin": b"\x80\x04K\x01.",
            },
            400,
        ),
        "extra-field": (lambda f: {**f, "adapter_model.bin": b"\x80\x04K\x01."}, 400),
        "missing-config": (
            lambda f: {"adapter_model.safetensors": f["adapter_model.safetensors"]},
            400,
        ),
        "empty-tensor-file": (lambda f: {**f, "adapter_model.safetensors": b""}, 400),
        "over-upload-limit": (
            lambda f: {**f, "adapter_model.safetensors": b"\x00" * (300 * 1024)},
            413,
        ),
    }
