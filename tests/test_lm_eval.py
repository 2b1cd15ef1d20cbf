"""lm-evaluation-harness itself (`local-completions`, its remote tokenizer: no hub) against a
live server on the tiny model, a soft-prompt task and local data files: per-example
log-likelihoods equal what `softserve eval` computes (`label_loglikelihoods`) within 1e-4 in fp32,
so the accuracies agree too; and generation answers equal the engine's own greedy answers."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lm_eval
import pytest

from app.api.app import create_app
from app.engine import Engine, GenerationRequest, SamplingParams
from app.model import FrozenModel
from app.settings import Settings
from app.train.evaluate import Subject, label_loglikelihoods
from tests.conftest import run_to_completion, text_of, write_adapter
from tests.live import LiveServer, live

DATA = Path(__file__).parent / "data" / "lm_eval"
TEMPLATE = "Review: {input}\nSentiment:"  # the task's template, and the lm-eval task's doc_to_text
TASK = "review"


@pytest.fixture(scope="module")
def server(tiny: FrozenModel, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    root = tmp_path_factory.mktemp("prompts")
    folder = write_adapter(tiny, root, TASK, "prefix", num_virtual_tokens=5, seed=71)
    (folder / "task.json").write_text(json.dumps({"template": TEMPLATE}))
    with live(create_app(Settings(prompts=root), base=tiny)) as srv:
        yield srv


def _evaluate(server: LiveServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """lm-eval's own entry point, with the task files pointing at the local data."""
    import datasets
    from lm_eval.tasks import TaskManager

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True, raising=False)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets")
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    for name in ("tiny_sentiment.yaml", "tiny_generate.yaml"):
        text = (DATA / name).read_text().replace("DATA_DIR", str(DATA))
        (tasks / name).write_text(text)
    return lm_eval.simple_evaluate(
        model="local-completions",
        model_args={
            "base_url": f"{server.url}/v1/completions",
            "model": TASK,
            "tokenizer_backend": "auto",  # finds /tokenizer_info: the remote tokenizer
            "max_length": 400,
            "max_retries": 1,
        },
        tasks=["tiny_sentiment", "tiny_generate"],
        task_manager=TaskManager(include_path=str(tasks), include_defaults=False),
        log_samples=True,
        random_seed=0,
        numpy_random_seed=0,
        torch_random_seed=0,
        fewshot_random_seed=0,
    )


def test_lm_eval_against_the_server(
    server: LiveServer, tiny: FrozenModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    results = _evaluate(server, tmp_path, monkeypatch)
    soft = server.services.registry.get(TASK).soft_prompt

    # Multiple choice: the same per-example log-likelihoods as softserve eval, so the same accuracy.
    samples = sorted(results["samples"]["tiny_sentiment"], key=lambda s: s["doc_id"])
    texts = [s["doc"]["text"] for s in samples]
    assert len(texts) == 6 and len(results["samples"]["tiny_generate"]) == 3
    ours = label_loglikelihoods(
        tiny, Subject(soft_prompt=soft, template=TEMPLATE), texts, [" negative", " positive"]
    )
    theirs = [[float(choice[0][0]) for choice in s["resps"]] for s in samples]
    for row, got in zip(ours.tolist(), theirs, strict=True):
        assert all(abs(a - b) < 1e-4 for a, b in zip(row, got, strict=True)), (row, got)
    gold = [s["doc"]["label"] for s in samples]
    accuracy = sum(int(r.index(max(r)) == g) for r, g in zip(ours.tolist(), gold, strict=True))
    assert results["results"]["tiny_sentiment"]["acc,none"] == pytest.approx(accuracy / len(gold))

    # Generation: lm-eval's answers are the engine's own greedy answers for the same ids.
    for sample in results["samples"]["tiny_generate"]:
        prompt = f"Q: {sample['doc']['question']}\nA:"
        ids = tuple(tiny.tokenizer(prompt, add_special_tokens=False)["input_ids"])
        params = SamplingParams(max_tokens=8, temperature=0.0, stop=("\n", "<|im_end|>"))
        alone = run_to_completion(Engine(tiny), GenerationRequest("g", ids, params, soft))["g"]
        assert sample["resps"][0][0] == text_of(alone)
