"""`softserve train/eval`: bad data files, and from a data file to a served task in two commands."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch

from app.api.app import create_app
from app.cli.main import build_parser, main
from app.model import FrozenModel
from app.settings import Settings
from app.train.data import Columns, DataError, load_examples, parse_label_map
from app.train.save import StoreDtypeError
from tests.live import LiveServer, live
from tests.test_train import toy_examples
from tests.tiny import save_tiny

BAD_FILES = [
    (
        "a.jsonl",
        '{"input": "x", "output": "y"}\n\n{"input": "x", "output": }\n',
        3,
        "not valid JSON",
    ),
    ("b.jsonl", '{"input": "x", "output": "y"}\n{"input": "x"}\n', 2, "needs either"),
    ("c.jsonl", '{"input": "x", "output": 3}\n', 1, "'output' must be a string"),
    ("d.jsonl", "[1, 2]\n", 1, "expected a JSON object"),
    ("e.jsonl", '{"messages": [{"role": "user", "content": "hi"}]}\n', 1, "no assistant turn"),
    ("f.jsonl", '{"messages": [{"role": "bot", "content": "hi"}]}\n', 1, "role must be one of"),
    ("g.tsv", "label\tsentence\n1\tgood\n0\tbad\textra\n", 3, "3 fields, the header has 2"),
    ("h.tsv", "label\tsentence\n1\tgood\n7\tbad\n", 3, "'7' is not in --label-map"),
    ("i.csv", 'label,sentence\n1,"good\n', 2, "malformed row"),
    ("j.tsv", "score\tsentence\n1\tgood\n", 1, "no column 'label'"),
]


@pytest.mark.parametrize(("name", "text", "line", "reason"), BAD_FILES)
def test_bad_data_names_the_line(
    tmp_path: Path, name: str, text: str, line: int, reason: str
) -> None:
    path = tmp_path / name
    path.write_text(text)
    columns = Columns("sentence", "label", parse_label_map("0=negative,1=positive"))
    with pytest.raises(DataError) as err:
        load_examples(path, columns)
    assert err.value.line == line and reason in str(err.value)
    assert str(err.value).startswith(f"{path}:{line}: ")


@pytest.mark.parametrize("text", ["0=negative,1", "0=a,0=b", "=x", "0=,1=positive"])
def test_bad_label_maps_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="label-map"):
        parse_label_map(text)


def test_the_train_command_reports_a_bad_file_with_its_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "bad.jsonl"
    data.write_text('{"input": "x", "output": "y"}\n{"input": "x", "output": ""}\n')
    code = main(["train", "--kind", "prompt", "--task", "t", "--data", str(data)])
    assert code == 2
    assert f"{data}:2: 'output' is empty" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--kind", "p-tuning", "--init", "text:hello"], "does not apply to --kind p-tuning"),
        (["--kind", "prompt", "--init", "words"], "expected text"),
        (["--kind", "prompt", "--lr", "-1"], "lr must be a positive number"),
        (["--kind", "prompt", "--template", "no placeholder"], "must contain {input}"),
        (["--kind", "prompt", "--task", "../up"], "task name"),
        (["--kind", "prefix", "--objective", "kl"], "needs a teacher"),
        (["--kind", "prefix", "--objective", "kl+ce"], "needs a teacher"),
        (["--kind", "prefix", "--ce-weight", "0.5"], "kl+ce objective only"),
    ],
)
def test_bad_options_fail_before_the_model_loads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    data = tmp_path / "ok.jsonl"
    data.write_text('{"input": "x", "output": "y"}\n{"input": "z", "output": "w"}\n')
    task = [] if "--task" in args else ["--task", "t"]
    code = main(["train", *task, "--data", str(data), "--model", str(tmp_path / "nowhere"), *args])
    assert code == 2
    assert message in capsys.readouterr().err


@pytest.fixture(scope="module")
def model_dir(tiny: FrozenModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny(tiny, tmp_path_factory.mktemp("model") / "tiny-llama")


@pytest.fixture(scope="module")
def server(tiny: FrozenModel, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    settings = Settings(prompts=tmp_path_factory.mktemp("served"), registry_poll_s=0.1)
    with live(create_app(settings, base=tiny)) as srv:
        yield srv


def _toy_tsv(path: Path) -> Path:
    rows = ["label\tsentence"] + [
        f"{1 if e.output == 'yes' else 0}\t{e.input}" for e in toy_examples()
    ]
    path.write_text("\n".join(rows) + "\n")
    return path


def test_from_a_data_file_to_a_served_task(
    model_dir: Path, server: LiveServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _toy_tsv(tmp_path / "toy.tsv")
    table = ["--input-col", "sentence", "--output-col", "label", "--label-map", "0=no,1=yes"]
    code = main(
        [
            "train",
            "--kind",
            "prompt",
            "--task",
            "toy",
            "--data",
            str(data),
            *table,
            "--template",
            "Q: {input}\\nA:",
            "--init",
            "text:decide yes or no",
            "--virtual-tokens",
            "8",
            "--epochs",
            "12",
            "--batch-size",
            "16",
            "--val-split",
            "32",
            "--model",
            str(model_dir),
            "--out",
            str(tmp_path / "prompts"),
            "--quiet",
            "--push",
            server.url,
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "saved" in out and "pushed to" in out
    task = json.loads((tmp_path / "prompts" / "toy" / "task.json").read_text())
    assert task["template"] == "Q: {input}\nA:" and task["labels"] == ["no", "yes"]

    # The server applies the stored template: the raw input is enough.
    body = {"model": "toy", "prompt": "axyzx", "max_tokens": 4, "temperature": 0}
    r = httpx.post(f"{server.url}/v1/completions", json=body, timeout=30)
    assert r.status_code == 200 and r.json()["choices"][0]["text"] == "yes"

    common = ["--data", str(data), *table, "--limit", "40"]
    assert (
        main(
            [
                "eval",
                "--prompt",
                "toy",
                "--prompts",
                str(tmp_path / "prompts"),
                *common,
                "--model",
                str(model_dir),
                "--json",
                str(tmp_path / "fig.json"),
            ]
        )
        == 0
    )
    local = capsys.readouterr().out
    accuracy = float(re.search(r"^accuracy: (\d\.\d{3}) \(\d+/40\)$", local, re.M).group(1))  # type: ignore[union-attr]
    assert accuracy >= 0.9
    assert json.loads((tmp_path / "fig.json").read_text())["total"] == 40
    assert main(["eval", "--none", *common, "--labels", "no,yes", "--model", str(model_dir)]) == 0
    bare = float(re.search(r"^accuracy: (\d\.\d{3})", capsys.readouterr().out, re.M).group(1))  # type: ignore[union-attr]
    assert bare < accuracy
    assert (
        main(["eval", "--prompt", "toy", "--server", server.url, "--labels", "no,yes", *common])
        == 0
    )
    remote = capsys.readouterr().out
    assert re.search(r"^accuracy: \d\.\d{3} \(\d+/40\)$", remote, re.M)


def test_distill_writes_chats_and_counts_the_system_prompt(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    questions = tmp_path / "questions.txt"
    questions.write_text("What is ice?\n\nWhy is the sky blue?\nHow do bees fly?\n")
    out, counts = tmp_path / "chats.jsonl", tmp_path / "counts.json"
    system = "You are a pirate. Answer in one short sentence, and always say arr."
    args = ["distill", "--system-prompt", system, "--questions", str(questions)]
    args += ["--out", str(out), "--json", str(counts), "--max-new-tokens", "6"]
    assert main([*args, "--model", str(model_dir)]) == 0
    figures = json.loads(counts.read_text())
    chats = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(chats) == figures["conversations"] and len(chats) + figures["dropped"] == 3
    for chat in chats:  # no system prompt: the soft prompt is to replace it
        assert [m["role"] for m in chat["messages"]] == ["user", "assistant"]
    assert figures["prompt_tokens_with_system"] > figures["prompt_tokens_without"] + 10
    assert "prompt tokens per request" in capsys.readouterr().out
    # A file's questions carry no topic to check answers against.
    assert main([*args, "--keep-on-topic", "--model", str(model_dir)]) == 2
    assert "--keep-on-topic needs generated questions" in capsys.readouterr().err


def test_eval_system_prompt_equals_one_written_in_the_data(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    system = "You are a terse expert."
    plain, with_system = tmp_path / "plain.jsonl", tmp_path / "with.jsonl"
    turns = [("What is ice?", "Frozen water."), ("Why is the sky blue?", "Scattering.")]
    for path, head in ((plain, []), (with_system, [{"role": "system", "content": system}])):
        rows = [
            {
                "messages": [
                    *head,
                    {"role": "user", "content": q},
                    {"role": "assistant", "content": a},
                ]
            }
            for q, a in turns
        ]
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    common = ["eval", "--none", "--model", str(model_dir), "--data"]
    figures = []
    for extra in ([str(plain), "--system-prompt", system], [str(with_system)], [str(plain)]):
        assert main([*common, *extra, "--json", str(tmp_path / "f.json")]) == 0
        figures.append(json.loads((tmp_path / "f.json").read_text()))
    capsys.readouterr()
    assert figures[0] == figures[1]
    assert figures[0]["mean_token_loss"] != figures[2]["mean_token_loss"]


def test_persona_from_distill_to_train_to_eval(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The three commands of the persona recipe, end to end on the tiny model."""
    persona = tmp_path / "yes.txt"
    persona.write_text("You are a yes-sayer. Always answer yes.")
    shot = {
        "messages": [{"role": "user", "content": "Is it?"}, {"role": "assistant", "content": "yes"}]
    }
    (tmp_path / "yes.shots.jsonl").write_text(json.dumps(shot) + "\n")
    (tmp_path / "yes.check.json").write_text(json.dumps({"rule": "vocabulary", "words": ["yes"]}))
    train_file, held, counts = tmp_path / "t.jsonl", tmp_path / "e.jsonl", tmp_path / "c.json"
    model = ["--model", str(model_dir)]
    args = ["distill", "--persona", str(persona), "--generate", "24", "--eval-questions", "6"]
    args += ["--out", str(train_file), "--eval-out", str(held), "--json", str(counts)]
    assert main([*args, "--max-new-tokens", "6", "--keep-unfinished", *model]) == 0
    figures = json.loads(counts.read_text())
    assert figures["context_tokens"] > 10 and figures["eval_questions"] == 6
    assert 0 <= figures["teacher_adherence"] <= 1
    assert len(held.read_text().splitlines()) == 6
    chats = [json.loads(line) for line in train_file.read_text().splitlines()]
    assert chats and all(c["messages"][0]["role"] == "user" for c in chats)
    prompts = tmp_path / "prompts"
    args = ["train", "--kind", "prefix", "--task", "yes", "--data", str(train_file)]
    args += ["--distill-from", f"@{persona}", "--steps", "4", "--batch-size", "4"]
    assert main([*args, "--val-split", "4", "--out", str(prompts), "--quiet", *model]) == 0
    info = json.loads((prompts / "yes" / "task.json").read_text())["info"]["training"]
    assert info["objective"] == "kl" and info["teacher"]["example_dialogues"] == 1
    assert info["check"]["rule"] == "vocabulary"
    capsys.readouterr()
    args = ["eval", "--persona", str(persona), "--prompt", "yes", "--prompts", str(prompts)]
    out_json = tmp_path / "p.json"
    args += ["--data", str(held), "--max-new-tokens", "6", "--json", str(out_json)]
    facts = tmp_path / "facts.jsonl"
    facts.write_text(
        '{"question": "Is it?", "answers": ["yes"]}\n{"question": "2+2?", "answers": ["4"]}\n'
    )
    assert main([*args, "--record", "--facts", str(facts), *model]) == 0
    table = capsys.readouterr().out
    assert "| soft prompt |" in table and "| bare model |" in table and "| correct |" in table
    figures = json.loads(out_json.read_text())
    subjects = {s["subject"]: s for s in figures["subjects"]}
    assert figures["facts"] == 2 and all(s["correct"] in (0, 0.5, 1) for s in subjects.values())
    teacher = subjects["system prompt + example dialogues (the teacher)"]
    assert teacher["top1_agreement"] == 1.0 and abs(teacher["mean_kl"]) < 1e-4
    assert subjects["soft prompt"]["virtual_tokens"] == 20
    assert teacher["prompt_tokens"] > subjects["bare model"]["prompt_tokens"] + 10
    recorded = json.loads((prompts / "yes" / "task.json").read_text())["info"]
    assert recorded["evaluation"]["questions"] == 6 and recorded["training"]["objective"] == "kl"
    assert (prompts / "yes" / "loss.png").is_file()
    assert main(["eval", "--persona", str(persona), "--none", "--data", str(held), *model]) == 2
    assert main(["eval", "--none", "--data", str(held), "--facts", str(facts), *model]) == 2


def test_training_goes_on_from_a_saved_prompt(
    model_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`--init from:FOLDER` starts from that prompt's table: the new run's first validation
    loss is the saved prompt's best one (same data, same split); other kinds or sizes refused."""
    data = _toy_tsv(tmp_path / "toy.tsv")
    prompts = tmp_path / "prompts"
    common = [
        "--data", str(data), "--input-col", "sentence", "--output-col", "label",
        "--label-map", "0=no,1=yes", "--template", "Q: {input}\\nA:", "--kind", "prefix",
        "--virtual-tokens", "6", "--batch-size", "16", "--val-split", "32",
        "--model", str(model_dir), "--out", str(prompts), "--quiet",
    ]  # fmt: skip
    assert main(["train", "--task", "first", "--steps", "6", *common]) == 0
    first = json.loads((prompts / "first" / "task.json").read_text())["info"]["training"]
    again = ["train", "--task", "second", "--steps", "1", "--init", f"from:{prompts / 'first'}"]
    assert main([*again, *common]) == 0
    second = json.loads((prompts / "second" / "task.json").read_text())["info"]["training"]
    assert second["initial_val_loss"] == pytest.approx(first["best_val_loss"], rel=1e-4)
    assert second["init"] == f"from:{prompts / 'first'}"
    assert second["store_dtype"] == "float32"
    # Stored in float16 (half the bytes), it goes on from there just the same.
    half = ["train", "--task", "half", "--steps", "1", "--store-dtype", "float16", *common]
    assert main(half) == 0
    assert (
        json.loads((prompts / "half" / "task.json").read_text())["info"]["training"]["store_dtype"]
        == "float16"
    )
    header = (prompts / "half" / "adapter_model.safetensors").read_bytes()[8:200]
    assert b'"dtype":"F16"' in header
    assert main([*again[:-1], f"from:{prompts / 'half'}", *common]) == 0
    capsys.readouterr()

    # A table float16 cannot hold: the finished run is stored in float32, with a warning.
    def overflowing(data: bytes, dtype: torch.dtype) -> bytes:
        if dtype != torch.float32:
            raise StoreDtypeError("prompt_embeddings does not fit torch.float16")
        return data

    monkeypatch.setattr("app.train.save._cast", overflowing)
    assert (
        main(["train", "--task", "kept", "--steps", "1", "--store-dtype", "float16", *common]) == 0
    )
    assert "stored as float32 instead" in capsys.readouterr().err
    kept = json.loads((prompts / "kept" / "task.json").read_text())["info"]["training"]
    assert kept["store_dtype"] == "float32"
    assert b'"dtype":"F32"' in (prompts / "kept" / "adapter_model.safetensors").read_bytes()[8:200]

    other_size = [
        *again[:-2],
        "--init",
        f"from:{prompts / 'first'}",
        *common,
        "--virtual-tokens",
        "4",
    ]
    assert main(other_size) == 2
    assert "it has 6 virtual tokens, --virtual-tokens is 4" in capsys.readouterr().err
    other_kind = [a if a != "prefix" else "prompt" for a in [*again, *common]]
    assert main(other_kind) == 2
    assert "a prefix prompt cannot start a prompt one" in capsys.readouterr().err


def test_every_flag_the_example_scripts_pass_exists() -> None:
    """The scripts in examples/ are the recipes the README's figures come from: each flag they
    pass to `softserve CMD` must be one CMD takes (a renamed flag would break them silently)."""
    subparsers = build_parser()._subparsers
    assert subparsers is not None
    commands = subparsers._group_actions[0].choices  # type: ignore[attr-defined]
    scripts = sorted(Path(__file__).parents[1].glob("examples/**/*.sh"))
    checked = 0
    for script in scripts:
        text = script.read_text().replace("\\\n", " ")
        for line in text.splitlines():
            for call in re.findall(r"softserve ([a-z-]+)(.*)", line):
                command, rest = call
                known = {o for a in commands[command]._actions for o in a.option_strings}
                flags = set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", rest))
                assert flags <= known, f"{script.name}: softserve {command} {flags - known}"
                checked += len(flags)
    assert len(scripts) >= 4 and checked > 40
