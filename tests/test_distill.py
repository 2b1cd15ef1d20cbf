"""Context distillation: the teacher's KV context, the KL objective, the question generator and
the persona checks (tiny model; the real training runs are in the README, not here)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from app.cli.distill_run import Answer, Keep
from app.model import FrozenModel, PromptKind
from app.render import ChatMessage, chat_ids
from app.train.adapters import PromptInit, trainable_model
from app.train.data import ChatExample
from app.train.encode import collate, encode_chat
from app.train.persona import Check, Fact, load_facts, load_persona, on_topic
from app.train.questions import EVAL_FORMS, TRAIN_FORMS, Question, generate, split_topics
from app.train.scoring import target_logits
from app.train.teacher import build_teacher, teacher_logits
from app.train.trainer import Loss, Objective, train
from tests.test_train import quick_config

CONTEXT = (
    ChatMessage("system", "Always answer yes."),
    ChatMessage("user", "Is it?"),
    ChatMessage("assistant", "yes yes"),
)


def _chats(n: int = 48) -> list[ChatExample]:
    words = ["fox", "dog", "Paris", "film", "line", "world"]
    return [
        ChatExample(
            (
                ChatMessage("user", f"{words[i % 6]} {i}?"),
                ChatMessage("assistant", ["yes yes", "no", "The capital"][i % 3]),
            )
        )
        for i in range(n)
    ]


def test_teacher_logits_equal_reading_the_whole_context(tiny: FrozenModel) -> None:
    """The context as a KV prefix gives the logits the model gives reading it as text."""
    teacher = build_teacher(tiny, CONTEXT, "toy")
    chats = _chats(3)
    got = teacher_logits(
        tiny, teacher, collate([teacher.encode(tiny.tokenizer, c) for c in chats], 0)
    )
    full = [encode_chat(tiny.tokenizer, ChatExample((*CONTEXT, *c.messages))) for c in chats]
    n = len(teacher.context_ids)
    rows = [type(r)(r.ids, (False,) * n + r.targets[n:]) for r in full]  # answer targets only
    want = target_logits(tiny.model, collate(rows, 0), 0)
    assert got.shape == want.shape and got.shape[0] > 3
    assert torch.allclose(got, want, atol=1e-4)
    tail = teacher.tail_ids(tiny.tokenizer, chats[0].messages[:1])
    assert teacher.context_ids + tail == chat_ids(tiny.tokenizer, (*CONTEXT, chats[0].messages[0]))


@pytest.mark.parametrize("kind", ["prompt", "p-tuning", "prefix"])
def test_the_kl_objective_lowers_kl_to_the_teacher(tiny: FrozenModel, kind: str) -> None:
    teacher = build_teacher(tiny, CONTEXT, "toy")
    config = quick_config(
        kind, template=None, objective=Objective.KL, val_split=12, max_steps=60, eval_every=20
    )
    report = train(tiny, _chats(), config, teacher).report
    assert report.initial_val_loss is not None and report.best.val_loss is not None
    # The validation loss is the mean KL(teacher || student) per answer token.
    assert report.best.val_loss < 0.85 * report.initial_val_loss, report


@pytest.mark.parametrize("weight", [1.0, 0.25])
def test_kl_plus_ce_is_the_two_losses_summed(tiny: FrozenModel, weight: float) -> None:
    """kl+ce adds, at each answer token, the text's cross-entropy (times its weight) to the KL:
    the two computed apart (the CE by the scoring path training by text uses) sum to it, token
    order included."""
    teacher = build_teacher(tiny, CONTEXT, "toy")
    model = trainable_model(tiny, PromptKind.PREFIX_TUNING, 4, PromptInit.parse("random"))
    rows = [
        dataclasses.replace(
            encode_chat(tiny.tokenizer, c), teacher=teacher.encode(tiny.tokenizer, c)
        )
        for c in _chats(5)
    ]
    with torch.no_grad():
        both, n = Loss(tiny, 0, teacher, ce_weight=weight).summed(model, rows)
        kl, n_kl = Loss(tiny, 0, teacher).summed(model, rows)
        ce, n_ce = Loss(tiny, 0).summed(model, rows)
    assert n == n_kl == n_ce > 5 and float(kl) > 0 and float(ce) > 0
    assert torch.allclose(both, kl + weight * ce, rtol=1e-4)


@pytest.mark.parametrize(
    ("objective", "weight", "error"),
    [
        (Objective.KL_CE, 0.0, "positive"),
        (Objective.KL_CE, float("nan"), "positive"),
        (Objective.KL_CE, -1.0, "positive"),
        (Objective.KL, 0.5, "kl\\+ce objective only"),
        (Objective.CE, 2.0, "kl\\+ce objective only"),
    ],
)
def test_ce_weight_is_checked(objective: Objective, weight: float, error: str) -> None:
    config = quick_config("prefix", template=None, objective=objective, ce_weight=weight)
    with pytest.raises(ValueError, match=error):
        config.validate()


def test_kl_plus_ce_trains_toward_teacher_and_text(tiny: FrozenModel) -> None:
    teacher = build_teacher(tiny, CONTEXT, "toy")
    config = quick_config(
        "prefix",
        template=None,
        objective=Objective.KL_CE,
        val_split=12,
        max_steps=60,
        eval_every=20,
    )
    report = train(tiny, _chats(), config, teacher).report
    assert report.initial_val_loss is not None and report.best.val_loss is not None
    assert report.best.val_loss < 0.85 * report.initial_val_loss, report


def test_kl_needs_a_teacher_and_ce_refuses_one(tiny: FrozenModel) -> None:
    teacher = build_teacher(tiny, CONTEXT, "toy")
    with pytest.raises(ValueError, match="teacher"):
        train(tiny, _chats(), quick_config("prefix", template=None, objective=Objective.KL))
    with pytest.raises(ValueError, match="teacher"):
        train(tiny, _chats(), quick_config("prefix", template=None, objective=Objective.KL_CE))
    with pytest.raises(ValueError, match="teacher"):
        train(tiny, _chats(), quick_config("prefix", template=None), teacher)


def test_teacher_prompt_is_a_prefix_table(tiny: FrozenModel) -> None:
    teacher = build_teacher(tiny, CONTEXT, "toy")
    spec = tiny.spec
    assert teacher.prompt.kind is PromptKind.PREFIX_TUNING
    assert teacher.prompt.table.shape == (
        len(teacher.context_ids),
        spec.num_layers * 2 * spec.num_kv_heads * spec.head_dim,
    )


def test_questions_are_deterministic_distinct_and_hold_out_forms_and_topics() -> None:
    first, again = generate(2000, 60, seed=3), generate(2000, 60, seed=3)
    assert first == again and generate(2000, 60, seed=4) != first
    assert len(first.train) == 2000 and len(first.eval) == 60
    texts = [q.text for q in first.train]
    assert len(set(texts)) == len(texts)
    train_topics, held = split_topics()
    assert not set(train_topics) & set(held)
    eval_starts = {f.split("{")[0] for f in EVAL_FORMS}
    for q in first.train:
        assert q.form not in EVAL_FORMS and not q.text.startswith(tuple(eval_starts))
        assert not any(t in q.text for t in held if len(t) > 4), q.text
    for q in first.eval:
        assert q.form in EVAL_FORMS and q.topic in held
    assert {q.form for q in first.train} >= set(TRAIN_FORMS)
    assert any(q.follow_up for q in first.train)


def test_checks_on_fixed_strings() -> None:
    pirate = Check.from_json({"rule": "vocabulary", "words": ["arr", "matey", "ye"], "min_hits": 2})
    assert pirate.passes("Arr, matey, the sea be wide!")
    assert not pirate.passes("Yes, the sea is wide. Arr.")  # "yes" is not "ye"
    assert not pirate.passes("")
    terse = Check.from_json({"rule": "terse", "max_sentences": 1, "max_words": 5})
    assert terse.passes("Paris.") and terse.passes("It is 3.5 km long.")
    assert not terse.passes("Paris. It is big.") and not terse.passes("one two three four five six")
    kind = Check.from_json(
        {"rule": "praise_opening", "praise": ["great", "wonderful"], "subject": ["question"]}
    )
    assert kind.passes("What a wonderful question! Bees make honey.")
    assert not kind.passes("Bees make honey. What a great question!")
    assert not kind.passes("Great! Bees make honey.")
    with pytest.raises(ValueError, match="rule"):
        Check.from_json({"rule": "vibes"})
    with pytest.raises(ValueError, match="unknown"):
        Check.from_json({"rule": "terse", "max_word": 3})
    assert on_topic("Volcanoes erupt.", "volcanoes") and on_topic("A volcano.", "volcanoes")
    assert on_topic("Gardens grow.", "gardening") and not on_topic("Paris.", "gardening")
    # A four-letter plural names its topic in the singular too, but not as the start of a word.
    assert on_topic("A cow is a big animal.", "cows") and on_topic("Owls hunt.", "owls")
    assert not on_topic("Take care of the card.", "cars") and not on_topic("A cow.", "cowboys")


def test_distill_keeps_only_the_answers_asked_for() -> None:
    pirate = load_persona(Path("examples/personas/pirate.txt"))
    volcano = Question("Why do volcanoes erupt?", "volcanoes", "why")
    voiced = Answer("Arr, matey, a volcano be blowin' its top!", 12, finished=True)
    astray = Answer("Arr, matey, ye be askin' a fine thing, aye!", 12, finished=True)
    plain = Answer("A volcano erupts when magma rises.", 8, finished=True)
    cut = dataclasses.replace(voiced, finished=False)
    every = (voiced, astray, plain, cut)

    def kept(keep: Keep) -> list[bool]:
        return [keep.keeps(a, volcano, pirate) for a in every]

    assert kept(Keep()) == [True, True, True, False]
    assert kept(Keep(passing=True)) == [True, True, False, False]
    assert kept(Keep(unfinished=True, passing=True, topical=True)) == [True, False, False, True]
    assert not Keep().keeps(Answer("", 0, finished=True), volcano, pirate)


def test_facts_match_whole_words_in_any_voice_and_bad_files_are_refused(tmp_path: Path) -> None:
    paris, four = Fact("Capital of France?", ("paris",)), Fact("2 + 2?", ("4", "four"))
    assert paris.answered_by("Arr, matey: the capital o' France be PARIS, arr!")
    assert not paris.answered_by("It is a Parisian city.") and not paris.answered_by("")
    assert four.answered_by("Two and two make four.") and four.answered_by("2 + 2 = 4")
    assert not four.answered_by("It is 44.") and not four.answered_by("fourteen")
    facts = tmp_path / "facts.jsonl"
    facts.write_text('{"question": " Capital of France? ", "answers": ["Paris"]}\n\n')
    assert load_facts(facts) == (Fact("Capital of France?", ("paris",)),)
    for bad in (
        '{"question": "Q?", "answers": []}',
        '{"question": "Q?", "answers": ["?!"]}',
        '{"question": "Q?", "answers": [4]}',
        '{"question": "", "answers": ["a"]}',
        '{"question": "Q?"}',
        "not json",
    ):
        facts.write_text('{"question": "Fine?", "answers": ["yes"]}\n' + bad + "\n")
        with pytest.raises(ValueError, match=r"facts\.jsonl:2"):
            load_facts(facts)
    facts.write_text('{"question": "Q?", "answers": ["a"]}\n' * 2)
    with pytest.raises(ValueError, match="twice"):
        load_facts(facts)


def test_shipped_facts_are_never_asked_in_training() -> None:
    """The facts measure correctness on questions the distillation data never holds."""
    facts = load_facts(Path(__file__).parent.parent / "examples" / "personas" / "facts.jsonl")
    assert len(facts) >= 30
    asked = {q.text.lower() for q in generate(3000, seed=0).train}
    assert not asked & {f.question.lower() for f in facts}


def test_shipped_personas_load_and_their_shots_pass_their_checks() -> None:
    folder = Path(__file__).parent.parent / "examples" / "personas"
    for name in ("pirate", "terse-expert", "kind-teacher"):
        persona = load_persona(folder / f"{name}.txt")
        assert persona.shots and persona.context()[0].role == "system"
        for shot in persona.shots:
            assert persona.check.passes(shot[-1].content), (name, shot[-1].content)
        saved = json.loads((folder / f"{name}.check.json").read_text())
        assert Check.from_json(persona.check.to_json()) == Check.from_json(saved)


def test_bad_persona_files_are_refused_with_their_name(tmp_path: Path) -> None:
    persona = tmp_path / "p.txt"
    with pytest.raises(ValueError, match="no persona file"):
        load_persona(persona)
    persona.write_text("You are terse.")
    with pytest.raises(ValueError, match="check"):
        load_persona(persona)
    (tmp_path / "p.check.json").write_text('{"rule": "terse"}')
    (tmp_path / "p.shots.jsonl").write_text('{"messages": [{"role": "system", "content": "x"}]}\n')
    with pytest.raises(ValueError, match=r"p\.shots\.jsonl:1"):
        load_persona(persona)
    (tmp_path / "p.shots.jsonl").write_text("not json\n")
    with pytest.raises(ValueError, match=r"p\.shots\.jsonl:1"):
        load_persona(persona)
    (tmp_path / "p.shots.jsonl").unlink()
    assert load_persona(persona).shots == ()
