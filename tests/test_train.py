"""Training and evaluation of soft prompts on the tiny model."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file

from app.model import FrozenModel, PromptKind
from app.registry.store import Registry
from app.train.adapters import PromptInit, inference_model
from app.train.data import ChatExample, ChatMessage, TextExample
from app.train.evaluate import Subject, classify, generate_and_score
from app.train.save import LOSS_PLOT, StoreDtypeError, TaskInfo, save_prompt
from app.train.trainer import TrainConfig, train

TEMPLATE = "Q: {input}\nA:"


def toy_examples(n: int = 160) -> list[TextExample]:
    """Learnable: the answer is decided by the first character alone."""
    rng = random.Random(0)
    words = [rng.choice("ab") + "".join(rng.choice("xyz") for _ in range(4)) for _ in range(n)]
    return [TextExample(input=w, output="yes" if w[0] == "a" else "no") for w in words]


INITS = {"prompt": "text:decide yes or no", "p-tuning": "random", "prefix": "text:decide yes or no"}
LRS = {"prompt": 3e-2, "p-tuning": 3e-3, "prefix": 3e-2}


def quick_config(kind: str, **overrides: object) -> TrainConfig:
    fields: dict[str, object] = {
        "kind": PromptKind.parse(kind),
        "template": TEMPLATE,
        "virtual_tokens": 4,
        "init": PromptInit.parse(INITS[kind]),
        "epochs": 3,
        "batch_size": 16,
        "val_split": 32,
        "lr": LRS[kind],
        "progress": False,
    }
    fields.update(overrides)
    return TrainConfig(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", ["prompt", "p-tuning", "prefix"])
def test_training_lowers_the_validation_loss(tiny: FrozenModel, kind: str) -> None:
    frozen = {n: p.detach().clone() for n, p in tiny.model.named_parameters()}
    report = train(tiny, toy_examples(), quick_config(kind)).report
    assert report.initial_val_loss is not None and report.best.val_loss is not None
    assert report.best.val_loss < 0.8 * report.initial_val_loss, report
    assert report.steps == 24 and len(report.step_losses) == 24
    # The base stays frozen: not one of its weights moved.
    for name, p in tiny.model.named_parameters():
        assert torch.equal(p, frozen[name]), name


def test_chat_loss_is_taken_on_assistant_turns_only(tiny: FrozenModel) -> None:
    from app.train.encode import encode_chat

    chat = ChatExample(
        (
            ChatMessage("user", "hi"),
            ChatMessage("assistant", "yo"),
            ChatMessage("user", "ok?"),
            ChatMessage("assistant", "sure"),
        )
    )
    row = encode_chat(tiny.tokenizer, chat)
    text = tiny.tokenizer.decode(
        [t for t, is_target in zip(row.ids, row.targets, strict=False) if is_target]
    )
    assert text == "yo<|im_end|>\nsure<|im_end|>\n"


def test_early_stopping_keeps_the_best_checkpoint(tiny: FrozenModel) -> None:
    # Random answers: once the yes/no prior is learnt, validation can only get worse.
    rng = random.Random(1)
    noise = [TextExample(e.input, rng.choice(["yes", "no"])) for e in toy_examples()]
    config = quick_config("prompt", epochs=20, eval_every=2, patience=2)
    trained = train(tiny, noise, config)
    report = trained.report
    assert report.stopped_early and report.steps < 20 * 8
    losses = [v.val_loss for v in report.history]
    assert report.best.val_loss == min(losses)  # type: ignore[type-var]
    assert report.best.step < report.history[-1].step


def test_steps_win_over_epochs(tiny: FrozenModel) -> None:
    # 8 training rows in one batch: an epoch is one step, so 5 steps means 5 passes.
    trained = train(tiny, toy_examples(40), quick_config("prompt", epochs=1, max_steps=5))
    assert trained.report.steps == 5 and trained.report.train_examples == 8


def test_saved_folder_loads_in_peft_and_in_the_registry(tiny: FrozenModel, tmp_path: Path) -> None:
    for kind in ("prompt", "p-tuning", "prefix"):
        trained = train(tiny, toy_examples(40), quick_config(kind, epochs=1))
        info = TaskInfo(description="toy", template=TEMPLATE, labels=("yes", "no"))
        entry = save_prompt(tiny, trained.model, trained.report, tmp_path, f"toy-{kind}", info, {})
        folder = tmp_path / f"toy-{kind}"
        assert (folder / LOSS_PLOT).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        registry = Registry(tmp_path, tiny.spec)
        registry.load_all()
        loaded = registry.get(f"toy-{kind}")
        assert loaded.sha256 == entry.sha256
        assert loaded.meta.template == TEMPLATE and loaded.meta.labels == ("yes", "no")
        task = json.loads((folder / "task.json").read_text())
        assert task["info"]["training"]["steps"] == trained.report.steps
        # PEFT's own loader reads the folder, and scores exactly as the registry entry does.
        peft = PeftModel.from_pretrained(tiny.model, str(folder))
        ours = inference_model(tiny, loaded.soft_prompt)
        ids = torch.tensor([tiny.tokenizer("Q: axyz\nA:")["input_ids"]])
        with torch.no_grad():
            a = peft(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[:, -1]
            b = ours(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[:, -1]
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_a_float16_store_halves_the_file_and_serves_the_same_table(
    tiny: FrozenModel, tmp_path: Path
) -> None:
    trained = train(tiny, toy_examples(40), quick_config("prefix", epochs=1))
    info = TaskInfo(template=TEMPLATE)
    for name, dtype in (("f32", torch.float32), ("f16", torch.float16)):
        save_prompt(tiny, trained.model, trained.report, tmp_path, name, info, {}, dtype)
    f32, f16 = (tmp_path / name / "adapter_model.safetensors" for name in ("f32", "f16"))
    assert load_file(f16)["prompt_embeddings"].dtype == torch.float16
    assert f16.stat().st_size < 0.6 * f32.stat().st_size
    registry = Registry(tmp_path, tiny.spec)
    registry.load_all()
    full, half = (registry.get(name).soft_prompt.table for name in ("f32", "f16"))
    assert half.dtype == torch.float32 and not torch.equal(full, half)
    torch.testing.assert_close(half, full, rtol=1e-3, atol=1e-4)
    # A table float16 cannot hold is refused before anything is written.
    with torch.no_grad():
        next(trained.model.prompt_encoder.parameters()).mul_(0).add_(1e6)
    with pytest.raises(StoreDtypeError, match=r"does not fit torch\.float16"):
        save_prompt(tiny, trained.model, trained.report, tmp_path, "big", info, {}, torch.float16)
    assert not (tmp_path / "big").exists()


FIXED = [  # the toy task's words, one with the wrong answer
    TextExample("axyzx", "yes"),
    TextExample("bzzyx", "no"),
    TextExample("ayyxz", "no"),
    TextExample("bxxzy", "no"),
    TextExample("azzzy", "yes"),
]


def _hand_logprob(model: torch.nn.Module, prompt: list[int], answer: list[int]) -> float:
    ids = torch.tensor([prompt + answer])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].float()
    if isinstance(model, PeftModel):  # prompt tuning: logits of the virtual tokens come first
        logits = logits[model.active_peft_config.num_virtual_tokens :]
    logp = torch.log_softmax(logits, dim=-1)
    return sum(float(logp[len(prompt) - 1 + i, t]) for i, t in enumerate(answer))


@pytest.mark.parametrize("with_prompt", [False, True])
@pytest.mark.parametrize("labels", [("yes", "no"), ("y", "n")])  # 3 tokens each / 1 token each
def test_classification_matches_a_hand_computation(
    tiny: FrozenModel,
    make_adapter: object,
    tmp_path: Path,
    with_prompt: bool,
    labels: tuple[str, str],
) -> None:
    soft = None
    model: torch.nn.Module = tiny.model
    if with_prompt:
        folder = make_adapter(tmp_path, "cls", "prompt", 3)  # type: ignore[operator]
        registry = Registry(tmp_path, tiny.spec)
        registry.load_all()
        soft = registry.get("cls").soft_prompt
        model = PeftModel.from_pretrained(tiny.model, str(folder))
    tok = tiny.tokenizer
    gold, predicted = [], []
    for example in FIXED:
        prompt = tok(TEMPLATE.replace("{input}", example.input))["input_ids"]
        scores = [
            _hand_logprob(model, prompt, tok(label, add_special_tokens=False)["input_ids"])
            for label in labels
        ]
        gold.append(("yes", "no").index(example.output))
        predicted.append(max(range(2), key=lambda i: scores[i]))
    short = {"yes": labels[0], "no": labels[1]}
    fixed = [TextExample(e.input, short[e.output]) for e in FIXED]
    result = classify(tiny, Subject(soft_prompt=soft, template=TEMPLATE), fixed, labels, 3)
    assert result.total == 5
    assert result.correct == sum(g == p for g, p in zip(gold, predicted, strict=False))
    assert [c.predicted for c in result.classes] == [predicted.count(0), predicted.count(1)]
    assert [c.gold for c in result.classes] == [2, 3]


@pytest.fixture(scope="module")
def trained_toy(tiny: FrozenModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("trained")
    config = quick_config("prompt", virtual_tokens=8, epochs=12)
    trained = train(tiny, toy_examples(), config)
    save_prompt(tiny, trained.model, trained.report, root, "toy", TaskInfo(template=TEMPLATE), {})
    return root


def test_exact_match_and_token_loss_match_a_hand_computation(
    tiny: FrozenModel, trained_toy: Path
) -> None:
    registry = Registry(trained_toy, tiny.spec)
    registry.load_all()
    subject = Subject(soft_prompt=registry.get("toy").soft_prompt, template=TEMPLATE)
    peft = PeftModel.from_pretrained(tiny.model, str(trained_toy / "toy"))
    tok = tiny.tokenizer
    nll, count, exact, hits, prefix = 0.0, 0, 0, 0, 0.0
    for example in FIXED:
        prompt = tok(TEMPLATE.replace("{input}", example.input))["input_ids"]
        answer = [*tok(example.output, add_special_tokens=False)["input_ids"], tok.eos_token_id]
        ids = torch.tensor([prompt + answer])
        with torch.no_grad():
            out_ = peft(input_ids=ids, attention_mask=torch.ones_like(ids))
        logits = out_.logits[0, peft.active_peft_config.num_virtual_tokens :]  # drop virtual
        logp = torch.log_softmax(logits.float(), dim=-1)
        nll -= sum(float(logp[len(prompt) - 1 + i, t]) for i, t in enumerate(answer))
        hits += sum(int(logp[len(prompt) - 1 + i].argmax()) == t for i, t in enumerate(answer))
        count += len(answer)
        out = peft.generate(
            input_ids=torch.tensor([prompt]),
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            max_new_tokens=len(answer) + 1,
            do_sample=False,
            pad_token_id=0,
            eos_token_id=tok.eos_token_id,
        )
        text = tok.decode(out[0, len(prompt) :], skip_special_tokens=True).strip()
        exact += text == example.output
        same = 0
        while same < min(len(text), len(example.output)) and text[same] == example.output[same]:
            same += 1
        prefix += same / len(example.output)
    assert exact >= 3  # the trained prompt answers the toy task (FIXED has one wrong answer)
    result = generate_and_score(tiny, subject, FIXED, batch_size=2)
    assert result.total == 5 and result.exact == exact
    assert result.mean_token_loss == pytest.approx(nll / count, rel=1e-4)
    assert result.token_accuracy == pytest.approx(hits / count)
    assert result.prefix_match == pytest.approx(prefix / len(FIXED))
    assert 0 < result.prefix_match < 1  # one reference is wrong, so agreement is not full
