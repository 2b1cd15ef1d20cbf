"""int8 activations as well as int8 weights (W8A8) for the lean forward's larger steps, on CPU:
SmoothQuant-smoothed, one dynamic scale per token, per-output-channel int8 weights, oneDNN's int8
GEMM (VNNI: four int8 products per lane and instruction where bf16 does two, and half the bytes).

Why smoothing: a few input channels of each linear carry values 10-100x the rest, and one scale
per token would spend its 8 bits on them. SmoothQuant (Xiao et al. 2022) divides input channel
j by s_j = max|X_j|^a / max|W_:,j|^(1-a) and multiplies weight column j by it: the product is
unchanged and the activation's range flattened. max|X_j| comes from one calibration pass of the
model over a fixed text (`CALIBRATION`) at start-up; the division happens at run time, in the
same multiplication that turns the input to float32 for quantizing, so it costs no extra pass.

Contract: `quantize(model, calibration_ids, int8_max_tokens)` is the same model whose linears
carry a `W8A8` for steps of more than `int8_max_tokens` tokens (weight-only int8 at or below, as
`weights.quantize_int8`). Each token has its own scale, so rows stay independent of each other.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import torch

from app.engine.lean import LeanModel, LeanUnsupported, Linear, run_alone

ALPHA = 0.5  # SmoothQuant's migration strength; 0.3 and 0.7 agreed less with fp32 here

# Varied everyday English (explanation, dialogue, list, numbers, code): what the model reads in
# service, for the activations' per-channel ranges. Its exact content matters little.
CALIBRATION = """\
User: Why is the sky blue during the day but red at sunset?
Assistant: Sunlight is made of many colours. Air molecules scatter short, blue wavelengths much \
more than long, red ones, so blue light reaches your eyes from every part of the sky. At sunset \
the light crosses far more air, most of the blue is scattered away, and the reds remain.
User: Give me three tips for a job interview.
Assistant: 1. Research the company and the role. 2. Prepare short stories that show your skills. \
3. Ask thoughtful questions at the end, and follow up with a thank-you note.
Once upon a time, in a small village by the sea, there lived an old fisherman named Tomas. Every \
morning at 5:30 he pushed his wooden boat into the waves, and every evening he came home with \
enough fish for his family and his neighbours.
The recipe serves 4: 200 g of flour, 2 eggs, 300 ml of milk, a pinch of salt and 1 tbsp of butter.
def fibonacci(n):
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a
Review: a gorgeous, witty film that never talks down to its audience. Sentiment: positive
Photosynthesis turns water, carbon dioxide and light into glucose and oxygen; it happens in the \
chloroplasts of plant cells. What is the capital of France? Paris, of course!
"""


@dataclass(frozen=True, eq=False)
class W8A8:
    """One linear with int8 weights and int8 activations."""

    packed: torch.Tensor  # oneDNN's prepacked int8 weight, W * s quantized per output channel
    scales: torch.Tensor  # [out] float32 weight scales
    zero_points: torch.Tensor  # [out] zeros: symmetric weights
    inv_smooth: torch.Tensor  # [in] float32, 1 / s
    offset: torch.Tensor  # 128.5: uint8 activations with zero point 128, rounded by truncation
    unit: torch.Tensor  # 1.0: the activations' scale in the kernel (each token's is applied after)
    zero_point: torch.Tensor  # 128

    def __call__(self, x: torch.Tensor) -> torch.Tensor:  # [N, in] bf16 -> [N, out] bf16
        # Every op here is in one dtype: mixed-dtype ops copy their inputs first.
        xs = x.float().mul_(self.inv_smooth)  # [N, in] float32: smoothed
        amax = xs.abs().amax(-1, keepdim=True).clamp_(min=1e-8)  # [N, 1]: one scale per token
        # round(xs * 127 / amax) + 128 in [1, 255]: +128.5 then truncation (all positive here).
        q = torch.addcmul(self.offset, xs, 127.0 / amax).to(torch.uint8)  # [N, in]
        y = torch.ops.onednn.qlinear_pointwise.tensor(
            q, self.unit, self.zero_point, self.packed, self.scales, self.zero_points,
            None, 1.0, 0, torch.float32, "none", [], "",
        )  # fmt: skip
        # The token's scale in float32 and one rounding to bf16 at the end: a scale rounded to
        # bf16 would bias its whole row by up to 0.4% (SST-2 0.893 instead of 0.899).
        return y.mul_(amax / 127.0).to(x.dtype)  # [N, out]


@dataclass(frozen=True, eq=False)
class _Observed(Linear):
    """A linear that records the per-channel |max| of every input it sees (calibration)."""

    seen: list[torch.Tensor] = field(default_factory=list)

    def __call__(self, x: torch.Tensor, small: bool) -> torch.Tensor:
        self.seen.append(x.detach().float().abs().amax(0))  # [in]
        return super().__call__(x, small)


def available(device: torch.device) -> bool:
    """oneDNN's int8 linear exists in this torch build and runs here (CPU only)."""
    if device.type != "cpu" or not torch.backends.mkldnn.is_available():
        return False
    try:
        weight = torch.ones(4, 8, dtype=torch.int8)
        layer = _pack(weight, torch.ones(4), torch.ones(8))
        out = layer(torch.ones(2, 8, dtype=torch.bfloat16))
    except (RuntimeError, AttributeError, NotImplementedError):
        return False
    return bool(torch.allclose(out.float(), torch.full((2, 4), 8.0), rtol=0.02))


def _pack(qweight: torch.Tensor, scales: torch.Tensor, inv_smooth: torch.Tensor) -> W8A8:
    out = qweight.shape[0]
    return W8A8(
        packed=torch.ops.onednn.qlinear_prepack(qweight, None),
        scales=scales.float().contiguous(),
        zero_points=torch.zeros(out, dtype=torch.long, device=qweight.device),
        inv_smooth=inv_smooth.float().contiguous(),
        offset=torch.tensor(128.5, device=qweight.device),
        unit=torch.tensor(1.0, device=qweight.device),
        zero_point=torch.tensor(128, dtype=torch.int32, device=qweight.device),
    )


def _w8a8(linear: Linear, x_max: torch.Tensor) -> W8A8:
    """Smooth by the input's per-channel range, then int8 per output channel."""
    assert linear.weight is not None
    weight = linear.weight.float()  # [out, in]
    w_max = weight.abs().amax(0).clamp(min=1e-5)  # [in]
    smooth = (x_max.clamp(min=1e-5) ** ALPHA / w_max ** (1 - ALPHA)).clamp(min=1e-5)  # [in]
    smoothed = weight * smooth  # [out, in]: x/s @ (W*s)^T == x @ W^T
    scales = smoothed.abs().amax(1).clamp(min=1e-8) / 127.0  # [out]
    qweight = torch.round(smoothed / scales[:, None]).clamp(-127, 127).to(torch.int8)
    return _pack(qweight.contiguous(), scales, 1.0 / smooth)


def _linears(model: LeanModel) -> list[tuple[int, str]]:
    """(layer index, name) of every linear; index -1 is the LM head."""
    names = ("qkv", "o", "gate_up", "down")
    return [(i, n) for i in range(len(model.layers)) for n in names] + [(-1, "lm_head")]


def _get(model: LeanModel, at: tuple[int, str]) -> Linear:
    index, name = at
    linear: Linear = model.lm_head if index < 0 else getattr(model.layers[index], name)
    return linear


def _with(model: LeanModel, linears: dict[tuple[int, str], Linear]) -> LeanModel:
    layers = tuple(
        replace(
            layer,
            qkv=linears[(i, "qkv")],
            o=linears[(i, "o")],
            gate_up=linears[(i, "gate_up")],
            down=linears[(i, "down")],
        )
        for i, layer in enumerate(model.layers)
    )
    return replace(model, layers=layers, lm_head=linears[(-1, "lm_head")])


def calibrate(model: LeanModel, ids: Sequence[int]) -> dict[tuple[int, str], torch.Tensor]:
    """Per-channel |max| [in] of every linear's input over one pass of `ids` (bf16 weights)."""
    observed = {
        at: _Observed(weight=linear.weight, bias=linear.bias)
        for at, linear in ((at, _get(model, at)) for at in _linears(model))
    }
    every = replace(_with(model, dict(observed)), int8_max_tokens=-1)  # the bf16 weights
    ids = tuple(ids)[: model.cos.shape[0]]  # within the positions the model has
    run_alone(every, ids, logits=True)  # the LM head reads every token too
    return {at: torch.stack(linear.seen).amax(0) for at, linear in observed.items()}


def quantize(model: LeanModel, calibration_ids: Sequence[int], int8_max_tokens: int) -> LeanModel:
    """`model` (bf16, with weight-only int8 from `weights.quantize_int8(..., keep bf16)`) plus
    W8A8 linears for steps of more than `int8_max_tokens` tokens; the bf16 weights are dropped."""
    if model.dtype != torch.bfloat16:
        raise LeanUnsupported("int8 activations need bfloat16 weights (--dtype bfloat16)")
    stats = calibrate(model, calibration_ids)
    linears = {
        at: replace(linear, weight=None, w8a8=_w8a8(linear, stats[at]))
        for at, linear in ((at, _get(model, at)) for at in _linears(model))
    }
    return replace(_with(model, linears), int8_max_tokens=int8_max_tokens)
