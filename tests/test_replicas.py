"""Several real server processes sharing one prompts folder; crashes in the middle of writes;
the CLI round trip. These start `softserve serve` as separate processes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.model import FrozenModel
from app.registry import PromptFiles, Registry
from tests.conftest import write_adapter
from tests.hostile import good_files
from tests.live import free_port, wait_healthy
from tests.tiny import save_tiny

ROOT = Path(__file__).resolve().parent.parent


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOFTSERVE_")}
    # fp32: the tiny model's answers stay those of the in-process fp32 model.
    return {**env, "PYTHONPATH": str(ROOT), "SOFTSERVE_DTYPE": "float32", **extra}


class Process:
    def __init__(self, model: Path, prompts: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "app",
                "serve",
                "--model",
                str(model),
                "--prompts",
                str(prompts),
                "--port",
                str(self.port),
                "--log-level",
                "warning",
            ],
            env=_env(SOFTSERVE_REGISTRY_POLL_S="0.25"),
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    def wait_healthy(self, timeout: float = 90) -> None:
        wait_healthy(self.url, timeout, alive=lambda: self.proc.poll() is None)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


@pytest.fixture(scope="module")
def tiny_folder(tiny: FrozenModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny(tiny, tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="module")
def adapters(tiny: FrozenModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("adapters")
    write_adapter(tiny, root, "one", "prompt", seed=5)
    write_adapter(tiny, root, "two", "prefix", seed=6)
    return root


@pytest.fixture(scope="module")
def replicas(
    tiny_folder: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Process, Process, Path]]:
    shared = tmp_path_factory.mktemp("shared-prompts")
    a, b = Process(tiny_folder, shared), Process(tiny_folder, shared)
    try:
        a.wait_healthy()
        b.wait_healthy()
        yield a, b, shared
    finally:
        a.stop()
        b.stop()


def _seen_within(url: str, task: str, status: int, timeout: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if httpx.get(f"{url}/v1/prompts/{task}", timeout=5).status_code == status:
            return time.monotonic() - start
        time.sleep(0.02)
    raise AssertionError(f"{task} did not reach {status} on {url} within {timeout} s")


def test_put_and_delete_propagate(replicas: tuple[Process, Process, Path], adapters: Path) -> None:
    a, b, _ = replicas
    files = {k: (k, v) for k, v in good_files(adapters / "one").items()}
    assert httpx.put(f"{a.url}/v1/prompts/shared-task", files=files, timeout=30).status_code == 201
    assert _seen_within(b.url, "shared-task", 200, 2.0) < 2.0
    body = {
        "model": "shared-task",
        "prompt": "Hello",
        "max_tokens": 4,
        "temperature": 0,
        "ignore_eos": True,
    }
    ra = httpx.post(f"{a.url}/v1/completions", json=body, timeout=30).json()
    rb = httpx.post(f"{b.url}/v1/completions", json=body, timeout=30).json()
    assert ra["choices"][0]["text"] == rb["choices"][0]["text"]
    assert ra["system_fingerprint"].rsplit(":", 1)[1] == rb["system_fingerprint"].rsplit(":", 1)[1]
    assert httpx.delete(f"{a.url}/v1/prompts/shared-task", timeout=30).status_code == 200
    assert _seen_within(b.url, "shared-task", 404, 2.0) < 2.0
    assert httpx.post(f"{b.url}/v1/completions", json=body, timeout=30).status_code == 404


def test_folder_copied_by_hand_is_picked_up(
    replicas: tuple[Process, Process, Path], adapters: Path
) -> None:
    a, b, shared = replicas
    shutil.copytree(adapters / "two", shared / "copied")
    assert _seen_within(a.url, "copied", 200, 2.0) < 2.0
    assert _seen_within(b.url, "copied", 200, 2.0) < 2.0
    shutil.rmtree(shared / "copied")
    assert _seen_within(b.url, "copied", 404, 2.0) < 2.0


CRASH_SCRIPT = """
import json, os, sys
from pathlib import Path
from app.model import ModelSpec
from app.registry import PromptFiles, Registry
spec = ModelSpec(**json.loads(os.environ["SPEC"]))
registry = Registry(Path(sys.argv[1]), spec)
registry.load_all()
def crash(step):
    if step == sys.argv[3]:
        os._exit(9)  # no cleanup of any kind: as if killed
registry.step = crash
folder = Path(sys.argv[2])
if sys.argv[4] == "put":
    registry.put("task", PromptFiles((folder / "adapter_config.json").read_bytes(), (folder / "adapter_model.safetensors").read_bytes()))
else:
    registry.delete("task")
"""


@pytest.mark.parametrize(
    ("op", "step", "survivor"),
    [
        ("put", "staging-created", "old"),
        ("put", "staging-written", "old"),
        ("put", "old-moved-aside", "old"),
        ("put", "new-in-place", "new"),
        ("put", "done", "new"),
        ("delete", "moved-aside", None),
    ],
)
def test_crash_mid_write(
    tiny: FrozenModel, adapters: Path, tmp_path: Path, op: str, step: str, survivor: str | None
) -> None:
    import dataclasses
    import json

    root = tmp_path / "prompts"
    registry = Registry(root, tiny.spec)
    old = registry.put(
        "task",
        PromptFiles(
            *[
                (adapters / "one" / n).read_bytes()
                for n in ("adapter_config.json", "adapter_model.safetensors")
            ]
        ),
    )
    spec = json.dumps(dataclasses.asdict(tiny.spec))
    proc = subprocess.run(
        [sys.executable, "-c", CRASH_SCRIPT, str(root), str(adapters / "two"), step, op],
        env=_env(SPEC=spec),
        cwd=ROOT,
        capture_output=True,
        timeout=120,
    )
    assert proc.returncode == 9, proc.stderr.decode()
    restarted = Registry(root, tiny.spec)
    restarted.load_all()
    assert restarted.skipped == ()  # never a half entry
    new_sha = (
        __import__("hashlib")
        .sha256((adapters / "two" / "adapter_model.safetensors").read_bytes())
        .hexdigest()
    )
    if survivor is None:
        assert len(restarted) == 0
    else:
        assert restarted.get("task").sha256 == (old.sha256 if survivor == "old" else new_sha)
    assert sorted(p.name for p in root.iterdir()) == [
        ".lock",
        *([] if survivor is None else ["task"]),
    ]


def test_cli_round_trip(
    replicas: tuple[Process, Process, Path], adapters: Path, tiny_folder: Path, tmp_path: Path
) -> None:
    a, b, shared = replicas

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "app", *args],
            env=_env(),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )

    pushed = cli("prompts", "push", str(adapters / "two"), "--task", "cli-task", "--server", a.url)
    assert pushed.returncode == 0 and "created cli-task" in pushed.stdout, pushed.stderr
    again = cli("prompts", "push", str(adapters / "one"), "--task", "cli-task", "--server", a.url)
    assert again.returncode == 0 and "replaced cli-task (version 2, PROMPT_TUNING)" in again.stdout
    listed = cli("prompts", "ls", "--server", a.url)
    assert (
        listed.returncode == 0 and "cli-task" in listed.stdout and "PROMPT_TUNING" in listed.stdout
    )
    bad = cli("prompts", "push", str(adapters / "two"), "--task", "Bad/Name", "--server", a.url)
    assert bad.returncode != 0
    removed = cli("prompts", "rm", "cli-task", "--server", a.url)
    assert removed.returncode == 0 and "deleted cli-task" in removed.stdout
    missing = cli("prompts", "rm", "cli-task", "--server", a.url)
    assert missing.returncode == 1 and "HTTP 404" in missing.stderr

    imported = cli(
        "import-peft",
        str(adapters / "two"),
        "--task",
        "imported",
        "--prompts",
        str(shared),
        "--model",
        str(tiny_folder),
    )
    assert imported.returncode == 0 and "imported imported (PREFIX_TUNING" in imported.stdout, (
        imported.stderr
    )
    assert _seen_within(b.url, "imported", 200, 2.0) < 2.0
    evil = tmp_path / "evil"
    shutil.copytree(adapters / "one", evil)
    (evil / "adapter_model.safetensors").unlink()
    os.symlink(adapters / "one" / "adapter_model.safetensors", evil / "adapter_model.safetensors")
    refused = cli(
        "import-peft",
        str(evil),
        "--task",
        "evil",
        "--prompts",
        str(shared),
        "--model",
        str(tiny_folder),
    )
    assert refused.returncode == 1 and "symlinks are not allowed" in refused.stderr
    assert not (shared / "evil").exists()
