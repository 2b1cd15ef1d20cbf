"""The native single-row decode step (`decode.c`): what a lone stream runs each token, on an x86-64
CPU with AVX-512 VNNI, for a lean model whose linears all carry per-channel int8 weights.

Contract: `build(model, folder)` returns a `NativeDecode`, or None (with the reason logged) where
the CPU, the compiler, the model's shapes or its weights rule it out; the caller then keeps the
torch kernels. The C source is compiled once per source, flags and compiler into `folder` (a
cache: written to a temporary name, then renamed, so a half-written library is never loaded), and
loaded with ctypes, which drops the GIL for the call. `NativeDecode.decode` computes what
`lean.forward` computes for one decode segment, within the error of quantizing each linear's
input to int8 in blocks of 32 (as llama.cpp's Q8_0 activations): logits [1, V] float32.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from app.engine.lean import LeanModel, Linear

log = logging.getLogger("softserve.engine")

SOURCE = Path(__file__).with_name("decode.c")
FLAGS = ("-O3", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512vnni", "-mfma", "-fopenmp")
CPU_FLAGS = ("avx512f", "avx512bw", "avx512vl", "avx512_vnni")
BLOCK = 64  # a linear's input size must be a multiple of this (one AVX-512 register of int8)
SCALE_BLOCK = 32  # values of a linear's input per int8 scale (as llama.cpp's Q8_0)


class _Q8(ctypes.Structure):
    _fields_ = [
        ("weight", ctypes.c_void_p),
        ("scale", ctypes.c_void_p),
        ("bias", ctypes.c_void_p),
        ("out", ctypes.c_int64),
        ("inp", ctypes.c_int64),
    ]


class _Layer(ctypes.Structure):
    _fields_ = [
        ("attn_norm", ctypes.c_void_p),
        ("qkv", _Q8),
        ("o", _Q8),
        ("mlp_norm", ctypes.c_void_p),
        ("gate_up", _Q8),
        ("down", _Q8),
    ]


class _Model(ctypes.Structure):
    _fields_ = [
        ("layers", ctypes.POINTER(_Layer)),
        ("num_layers", ctypes.c_int64),
        ("dim", ctypes.c_int64),
        ("heads", ctypes.c_int64),
        ("kv_heads", ctypes.c_int64),
        ("head_dim", ctypes.c_int64),
        ("inter", ctypes.c_int64),
        ("norm", ctypes.c_void_p),
        ("lm_head", _Q8),
        ("eps", ctypes.c_double),
    ]


@dataclass(frozen=True, eq=False)
class NativeDecode:
    """The C model description (pointers into `model`'s tensors, which it keeps alive)."""

    model: LeanModel
    struct: _Model
    layers: ctypes.Array[_Layer]
    function: Callable[..., int]

    def decode(
        self, token: int, pos: int, k: torch.Tensor, v: torch.Tensor, slot: int
    ) -> torch.Tensor:
        """The token at `pos` of `slot`: its K/V written to column `pos` of the slot's cache
        `k`/`v` [L, slots, Hkv, cap, hd], attention over columns 0..pos. -> [1, V] float32."""
        lean = self.model
        assert k.is_contiguous() and v.is_contiguous() and k.shape == v.shape
        assert k.dtype == v.dtype == torch.bfloat16
        # The C code trusts its pointers: what torch's indexing would check, checked here.
        if not (0 <= token < lean.embed.shape[0] and 0 <= slot < k.shape[1]):
            raise IndexError(f"token {token} or slot {slot} out of range")
        if not 0 <= pos < min(k.shape[3], lean.cos.shape[0]):
            raise IndexError(f"position {pos} past the cache or the rotary table")
        logits = torch.empty(1, lean.embed.shape[0], dtype=torch.float32)
        row, rope = lean.embed.stride(0) * 2, lean.cos.stride(0) * 2  # bytes per row (bf16)
        status = self.function(
            ctypes.byref(self.struct),
            ctypes.c_void_p(lean.embed.data_ptr() + token * row),
            ctypes.c_void_p(lean.cos.data_ptr() + pos * rope),
            ctypes.c_void_p(lean.sin.data_ptr() + pos * rope),
            ctypes.c_void_p(k[0, slot].data_ptr()),
            ctypes.c_void_p(v[0, slot].data_ptr()),
            k.stride(0),
            k.stride(2),
            pos,
            ctypes.c_void_p(logits.data_ptr()),
        )
        if status != 0:
            raise RuntimeError(f"native decode failed ({status}: -1 shapes, -2 out of memory)")
        return logits


def build(model: LeanModel, folder: Path) -> NativeDecode | None:
    reason = _unsupported(model)
    if reason is None:
        try:
            function = _load(folder).softserve_decode
        except (OSError, subprocess.SubprocessError) as exc:
            reason = f"building {SOURCE.name} failed: {exc}"
    if reason is not None:
        log.info("native decode off: %s", reason)
        return None
    log.info("native decode on: a lone stream's steps run %s", SOURCE.name)
    function.restype = ctypes.c_int
    function.argtypes = [ctypes.c_void_p] * 6 + [ctypes.c_int64] * 3 + [ctypes.c_void_p]
    layers = (_Layer * len(model.layers))(
        *(
            _Layer(
                _ptr(layer.attn_norm),
                _q8(layer.qkv),
                _q8(layer.o),
                _ptr(layer.mlp_norm),
                _q8(layer.gate_up),
                _q8(layer.down),
            )
            for layer in model.layers
        )
    )
    inter = model.layers[0].down.qweight.shape[1]  # type: ignore[union-attr]
    struct = _Model(
        layers=layers,
        num_layers=len(model.layers),
        dim=model.embed.shape[1],
        heads=model.num_heads,
        kv_heads=model.num_kv_heads,
        head_dim=model.head_dim,
        inter=inter,
        norm=_ptr(model.norm),
        lm_head=_q8(model.lm_head),
        eps=model.eps,
    )
    return NativeDecode(model, struct, layers, function)


def cpu_unsupported() -> str | None:
    """Why this machine's CPU cannot run the C code, or None."""
    if platform.machine() not in ("x86_64", "AMD64"):
        return f"a {platform.machine()} CPU"
    missing = [f for f in CPU_FLAGS if f not in _cpu_flags()]
    return "the CPU lacks " + ", ".join(missing) if missing else None


def _unsupported(model: LeanModel) -> str | None:
    """Why the C code cannot run this model here, or None."""
    cpu = cpu_unsupported()
    if cpu is not None:
        return cpu
    if model.embed.device.type != "cpu" or model.dtype != torch.bfloat16:
        return f"{model.dtype} weights on {model.embed.device.type} (it needs bfloat16 on a CPU)"
    if not all(t.is_contiguous() for t in (model.embed, model.cos, model.sin)):
        return "embedding or rotary tables not contiguous"
    if model.cos.dtype != torch.bfloat16 or model.sin.dtype != torch.bfloat16:
        return "rotary tables not in bfloat16"
    linears = [model.lm_head] + [
        lin for layer in model.layers for lin in (layer.qkv, layer.o, layer.gate_up, layer.down)
    ]
    if any(lin.qweight is None or lin.scales is None for lin in linears):
        return "weights not quantized to int8"
    if any(int(lin.qweight.shape[1]) % BLOCK for lin in linears):  # type: ignore[union-attr]
        return f"a linear's input size is not a multiple of {BLOCK}"
    if model.head_dim % 16 or model.head_dim > 256:
        return f"head size {model.head_dim} (it needs a multiple of 16, at most 256)"
    if shutil.which(_compiler()) is None:
        return f"no C compiler ({_compiler()})"
    return None


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    return set(line.partition(":")[2].split())


def _compiler() -> str:
    return os.environ.get("CC", "cc")


def _load(folder: Path) -> ctypes.CDLL:
    compiler = _compiler()
    version = subprocess.run(
        [compiler, "--version"], capture_output=True, text=True, check=True, timeout=30
    ).stdout
    digest = hashlib.sha256(
        SOURCE.read_bytes() + " ".join(FLAGS).encode() + version.encode()
    ).hexdigest()[:16]
    target = folder / f"decode-{digest}.so"
    if not target.exists():
        folder.mkdir(parents=True, exist_ok=True)
        fd, staging = tempfile.mkstemp(prefix=".decode-", suffix=".so", dir=folder)
        os.close(fd)
        try:
            command = [compiler, *FLAGS, "-fPIC", "-shared", "-o", staging, str(SOURCE), "-lm"]
            subprocess.run(command, capture_output=True, check=True, timeout=120)
            os.replace(staging, target)
        finally:
            Path(staging).unlink(missing_ok=True)
    return ctypes.CDLL(str(target))


def _ptr(tensor: torch.Tensor) -> int:
    assert tensor.is_contiguous() and tensor.dtype == torch.bfloat16
    return tensor.data_ptr()


def _q8(linear: Linear) -> _Q8:
    assert linear.qweight is not None and linear.scales is not None
    assert linear.qweight.is_contiguous() and linear.qweight.dtype == torch.int8
    bias = None if linear.bias is None else _ptr(linear.bias)
    out, inp = linear.qweight.shape
    return _Q8(linear.qweight.data_ptr(), _ptr(linear.scales), bias, out, inp)
