"""Write a trained prompt into a registry folder: PEFT's files plus task.json and a loss curve."""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from app.model.loader import FrozenModel
from app.registry.entry import PromptEntry, PromptFiles
from app.registry.peft_format import CONFIG_FILE, TENSOR_FILE
from app.registry.store import Registry
from app.train.trainer import TrainReport
from peft import PeftModel
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

LOSS_PLOT = "loss.png"


@dataclass(frozen=True)
class TaskInfo:
    """What task.json records about a trained prompt."""

    description: str | None = None
    template: str | None = None
    labels: tuple[str, ...] = ()
    system_prompt: str | None = None
    defaults: tuple[tuple[str, Any], ...] = ()  # sampling defaults, e.g. (("temperature", 0.0),)

    def to_json(self, report: TrainReport, extra: dict[str, Any]) -> bytes:
        task: dict[str, Any] = {
            key: value
            for key, value in (
                ("description", self.description),
                ("template", self.template),
                ("system_prompt", self.system_prompt),
            )
            if value is not None
        }
        if self.labels:
            task["labels"] = list(self.labels)
        if self.defaults:
            task["defaults"] = dict(self.defaults)
        task["info"] = {
            "training": {
                **extra,
                "steps": report.steps,
                "seconds": round(report.seconds, 1),
                "train_examples": report.train_examples,
                "val_examples": report.val_examples,
                "initial_val_loss": report.initial_val_loss,
                "best_step": report.best.step,
                "best_val_loss": report.best.val_loss,
                "stopped_early": report.stopped_early,
            }
        }
        return (json.dumps(task, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


class StoreDtypeError(ValueError):
    """The trained table does not fit the dtype asked for storing it (float16 tops out at 65504)."""


STORE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def peft_files(
    model: PeftModel, task_json: bytes, store_dtype: torch.dtype = torch.float32
) -> PromptFiles:
    """The files `save_pretrained` writes (PEFT's own format), read back as bytes; the table
    stored as `store_dtype` (half the bytes in float16; the registry reads it back as float32)."""
    with tempfile.TemporaryDirectory() as tmp:
        # save_embedding_layers=False: otherwise PEFT looks the base model up on the hub.
        model.save_pretrained(tmp, safe_serialization=True, save_embedding_layers=False)
        folder = Path(tmp)
        return PromptFiles(
            adapter_config=(folder / CONFIG_FILE).read_bytes(),
            adapter_model=_cast((folder / TENSOR_FILE).read_bytes(), store_dtype),
            task=task_json,
        )


def _cast(data: bytes, dtype: torch.dtype) -> bytes:
    tensors = load_safetensors(data)
    if all(t.dtype == dtype for t in tensors.values()):
        return data
    cast = {key: t.to(dtype).contiguous() for key, t in tensors.items()}
    for key, t in cast.items():
        if not bool(torch.isfinite(t).all()):
            top = float(tensors[key].abs().max())
            raise StoreDtypeError(f"{key} does not fit {dtype} (values up to {top:g})")
    return save_safetensors(cast, metadata={"format": "pt"})


def plot_losses(report: TrainReport, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    steps = range(1, len(report.step_losses) + 1)
    ax.plot(steps, report.step_losses, lw=0.8, alpha=0.6, label="train (per step)")
    points = [(v.step, v.val_loss) for v in report.history if v.val_loss is not None]
    if points:
        ax.plot(*zip(*points, strict=True), "o-", label="validation")
    ax.axvline(report.best.step, ls=":", c="grey", label=f"best (step {report.best.step})")
    ax.set(xlabel="step", ylabel="loss (nats/token)", title=title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def save_prompt(
    base: FrozenModel,
    model: PeftModel,
    report: TrainReport,
    root: Path,
    task: str,
    info: TaskInfo,
    extra: dict[str, Any],
    store_dtype: torch.dtype = torch.float32,
) -> PromptEntry:
    """Validate as the server would and write `root/task` atomically (a watching server picks it
    up); then put the loss curve next to it."""
    files = peft_files(model, info.to_json(report, extra), store_dtype)
    root.mkdir(parents=True, exist_ok=True)
    entry = Registry(root, base.spec).put(task, files)
    plot_losses(report, root / task / LOSS_PLOT, f"{task} ({extra.get('kind', '')})")
    return entry
