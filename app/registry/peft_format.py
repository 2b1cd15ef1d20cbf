"""PEFT's on-disk prompt-learning format: `adapter_config.json` + `adapter_model.safetensors`.

Everything here is pure validation of bytes against the model's shapes; nothing touches disk.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from typing import Any

import torch
from safetensors.torch import load as load_safetensors

from app.model.kinds import PromptKind
from app.model.spec import ModelSpec
from app.registry.errors import InvalidPrompt

CONFIG_FILE = "adapter_config.json"
TENSOR_FILE = "adapter_model.safetensors"
TASK_FILE = "task.json"
TENSOR_KEY = "prompt_embeddings"

_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


@dataclass(frozen=True)
class Limits:
    max_virtual_tokens: int = 256
    max_config_bytes: int = 64 * 1024
    max_header_bytes: int = 64 * 1024
    max_tensor_bytes: int = 64 * 1024 * 1024


@dataclass(frozen=True)
class AdapterConfig:
    kind: PromptKind
    num_virtual_tokens: int


def _require_int(raw: dict[str, Any], key: str, low: int = 1) -> int:
    value = raw.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise InvalidPrompt(f"{key} must be an integer >= {low}, got {value!r}", file=CONFIG_FILE)
    return value


def _check_optional(raw: dict[str, Any], key: str, expected: int) -> None:
    value = raw.get(key)
    if value is not None and value != expected:
        raise InvalidPrompt(
            f"{key} is {value!r} but the base model needs {expected}", file=CONFIG_FILE
        )


def parse_adapter_config(data: bytes, spec: ModelSpec, limits: Limits) -> AdapterConfig:
    if len(data) > limits.max_config_bytes:
        raise InvalidPrompt(
            f"file is {len(data)} bytes, over the {limits.max_config_bytes}-byte limit",
            file=CONFIG_FILE,
        )
    try:
        raw = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidPrompt(f"not valid UTF-8 JSON ({exc})", file=CONFIG_FILE) from None
    if not isinstance(raw, dict):
        raise InvalidPrompt("must be a JSON object", file=CONFIG_FILE)
    peft_type = raw.get("peft_type")
    try:
        kind = PromptKind(str(peft_type))
    except ValueError:
        raise InvalidPrompt(
            f"peft_type {peft_type!r} is not a prompt-learning kind "
            "(expected PROMPT_TUNING, P_TUNING or PREFIX_TUNING)",
            file=CONFIG_FILE,
        ) from None
    task_type = raw.get("task_type")
    if task_type not in (None, "CAUSAL_LM"):
        raise InvalidPrompt(f"task_type {task_type!r} is not CAUSAL_LM", file=CONFIG_FILE)
    if raw.get("num_transformer_submodules") not in (None, 1):
        raise InvalidPrompt(
            "num_transformer_submodules must be 1 (decoder-only models)", file=CONFIG_FILE
        )
    num_virtual_tokens = _require_int(raw, "num_virtual_tokens")
    if num_virtual_tokens > limits.max_virtual_tokens:
        raise InvalidPrompt(
            f"num_virtual_tokens {num_virtual_tokens} is over the cap of "
            f"{limits.max_virtual_tokens}",
            file=CONFIG_FILE,
        )
    _check_optional(raw, "num_layers", spec.num_layers)
    if kind is PromptKind.PREFIX_TUNING:
        # PEFT stores GQA prefixes with num_key_value_heads heads of head_dim each.
        _check_optional(raw, "token_dim", spec.kv_dim)
        _check_optional(raw, "num_attention_heads", spec.num_kv_heads)
    else:
        _check_optional(raw, "token_dim", spec.hidden_size)
    return AdapterConfig(kind=kind, num_virtual_tokens=num_virtual_tokens)


def _read_header(data: bytes, limits: Limits) -> tuple[dict[str, Any], int]:
    """Check the safetensors framing ourselves before handing bytes to the parser.

    Returns the parsed header and the length of the data section after it."""
    if len(data) > limits.max_tensor_bytes:
        raise InvalidPrompt(
            f"file is {len(data)} bytes, over the {limits.max_tensor_bytes}-byte limit",
            file=TENSOR_FILE,
        )
    if len(data) < 8:
        raise InvalidPrompt("truncated: no safetensors header", file=TENSOR_FILE)
    (header_len,) = struct.unpack("<Q", data[:8])
    if header_len > limits.max_header_bytes:
        raise InvalidPrompt(
            f"safetensors header is {header_len} bytes, over the {limits.max_header_bytes} limit",
            file=TENSOR_FILE,
        )
    if 8 + header_len > len(data):
        raise InvalidPrompt("truncated: header runs past the end of the file", file=TENSOR_FILE)
    try:
        header = json.loads(data[8 : 8 + header_len].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise InvalidPrompt("corrupt safetensors header (not JSON)", file=TENSOR_FILE) from None
    if not isinstance(header, dict):
        raise InvalidPrompt("corrupt safetensors header", file=TENSOR_FILE)
    return header, len(data) - 8 - header_len


def _check_tensor_header(header: dict[str, Any], data_len: int) -> tuple[torch.dtype, list[int]]:
    keys = sorted(k for k in header if k != "__metadata__")
    if keys != [TENSOR_KEY]:
        raise InvalidPrompt(
            f"expected exactly one tensor {TENSOR_KEY!r}, found {keys}", file=TENSOR_FILE
        )
    info = header[TENSOR_KEY]
    if not isinstance(info, dict):
        raise InvalidPrompt("corrupt tensor entry in header", file=TENSOR_FILE)
    dtype = _DTYPES.get(info.get("dtype", ""))
    if dtype is None:
        raise InvalidPrompt(
            f"dtype {info.get('dtype')!r} not allowed (F32, F16 or BF16)", file=TENSOR_FILE
        )
    shape, offsets = info.get("shape"), info.get("data_offsets")
    if not (isinstance(shape, list) and len(shape) == 2 and all(isinstance(s, int) for s in shape)):
        raise InvalidPrompt(f"{TENSOR_KEY} must be 2-D, got shape {shape!r}", file=TENSOR_FILE)
    if not (isinstance(offsets, list) and len(offsets) == 2):
        raise InvalidPrompt("corrupt data_offsets", file=TENSOR_FILE)
    need = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
    if offsets != [0, need] or data_len != need:
        raise InvalidPrompt(
            f"tensor data is {data_len} bytes but shape {shape} needs {need} (truncated or corrupt)",
            file=TENSOR_FILE,
        )
    return dtype, shape


def read_prompt_table(
    data: bytes, config: AdapterConfig, spec: ModelSpec, limits: Limits
) -> torch.Tensor:
    """Parse and validate the tensor file. Returns a float32 [P, width] tensor."""
    header, data_len = _read_header(data, limits)
    _, shape = _check_tensor_header(header, data_len)
    width = spec.prefix_width if config.kind is PromptKind.PREFIX_TUNING else spec.hidden_size
    expected = [config.num_virtual_tokens, width]
    if shape != expected:
        what = (
            "num_virtual_tokens x (layers * 2 * kv_heads * head_dim)"
            if config.kind is PromptKind.PREFIX_TUNING
            else "num_virtual_tokens x hidden_size"
        )
        raise InvalidPrompt(
            f"{TENSOR_KEY} has shape {shape}, the model needs {expected} ({what})",
            file=TENSOR_FILE,
        )
    try:
        table = load_safetensors(data)[TENSOR_KEY]
    except Exception as exc:  # the parser's own errors: corrupt framing it caught before us
        raise InvalidPrompt(f"corrupt safetensors file ({exc})", file=TENSOR_FILE) from None
    table = table.to(torch.float32)
    if not bool(torch.isfinite(table).all()):
        raise InvalidPrompt(f"{TENSOR_KEY} contains NaN or Inf values", file=TENSOR_FILE)
    return table
