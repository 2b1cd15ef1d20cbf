"""The frozen base model: loading (HF folder, GGUF, embedded default) and its shape facts."""

from app.model.loader import (
    BaseModel,
    DType,
    ModelLoadError,
    Quantize,
    load_base_model,
    load_model_spec,
)
from app.model.soft_prompt import SoftPrompt, SoftPromptKind
from app.model.spec import ModelSpec

__all__ = [
    "BaseModel",
    "DType",
    "ModelLoadError",
    "ModelSpec",
    "Quantize",
    "SoftPrompt",
    "SoftPromptKind",
    "load_base_model",
    "load_model_spec",
]
