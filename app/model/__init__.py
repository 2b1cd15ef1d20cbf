"""The frozen base model: loading (HF folder, GGUF, embedded default) and its shape facts."""

from app.dtype import DType, Quantize
from app.model.kinds import PromptKind
from app.model.loader import FrozenModel, ModelLoadError, load_base_model, load_model_spec
from app.model.soft_prompt import SoftPrompt
from app.model.spec import ModelSpec

__all__ = [
    "DType",
    "FrozenModel",
    "ModelLoadError",
    "ModelSpec",
    "PromptKind",
    "Quantize",
    "SoftPrompt",
    "load_base_model",
    "load_model_spec",
]
