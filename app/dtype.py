"""`DType`: the weight dtype setting. Torch-free, so `app.settings` (and anything reading it, such
as the `softserve prompts` commands) does not pay the torch import just to name a dtype."""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


class DType(StrEnum):
    FLOAT32 = "float32"
    BFLOAT16 = "bfloat16"
    FLOAT16 = "float16"

    @property
    def torch(self) -> torch.dtype:
        """The torch dtype. Only the loader and benchmarks ask, and they have torch already."""
        import torch

        dtype: torch.dtype = getattr(torch, self.value)
        return dtype


class Quantize(StrEnum):
    AUTO = (
        "auto"  # w8a8 where the lean forward runs in bfloat16 on a CPU (int8 elsewhere), else none
    )
    NONE = "none"
    INT8 = "int8"  # weight-only, per output channel, bfloat16 activations (lean forward only)
    # int8 as above for small steps, and int8 activations too (per token, SmoothQuant-smoothed,
    # oneDNN) for steps of more tokens (lean forward on a CPU only)
    W8A8 = "w8a8"
