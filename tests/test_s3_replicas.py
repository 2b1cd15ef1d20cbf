"""Two `softserve serve` processes on one bucket of a real S3 API server process: convergence,
racing writers, a swap storm across both, a writer killed mid-write, and the CLI."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.model import FrozenModel
from app.registry import S3Location, S3Options
from app.registry.s3 import S3Registry
from tests import test_hotswap as hotswap
from tests.hostile import Files
from tests.live import free_port, wait_healthy, wait_until
from tests.s3server import CREDENTIALS, S3Server, s3_for_module
from tests.test_hotswap import Tally, complete, put, sha_of
from tests.tiny import save_tiny

ROOT = Path(__file__).resolve().parent.parent
BUCKET = "replicas"
PROMPTS = f"s3://{BUCKET}/reg"
GRACE_S = 3.0  # a write taking over half of it is refused (see s3_write.Flipper.flip)

variants = hotswap.variants
expected = hotswap.expected
s3 = s3_for_module


def _env(s3: S3Server, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SOFTSERVE_", "AWS_"))}
    return {
        **env,
        **CREDENTIALS,
        "PYTHONPATH": str(ROOT),
        "SOFTSERVE_S3_ENDPOINT_URL": s3.endpoint,
        # fp32: answers are compared with the in-process fp32 model's, token for token.
        "SOFTSERVE_DTYPE": "float32",
        # Several processes share few cores: one torch thread each (the model is tiny), so
        # they do not spin against each other.
        "OMP_NUM_THREADS": "1",
        **extra,
    }


class Replica:
    def __init__(self, model: Path, s3: S3Server, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log.open("wb")
        self.proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "app", "serve", "--model", str(model)),
                *("--prompts", PROMPTS, "--port", str(self.port), "--log-level", "warning"),
            ],
            env=_env(
                s3, SOFTSERVE_REGISTRY_POLL_S="0.1", SOFTSERVE_REGISTRY_GC_GRACE_S=str(GRACE_S)
            ),
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=self.log,
        )

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)
        self.log.close()


@pytest.fixture(scope="module")
def tiny_folder(tiny: FrozenModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny(tiny, tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="module")
def replicas(
    tiny_folder: Path, s3: S3Server, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Replica, Replica]]:
    s3.bucket(BUCKET)
    logs = tmp_path_factory.mktemp("replica-logs")
    a, b = Replica(tiny_folder, s3, logs / "a.log"), Replica(tiny_folder, s3, logs / "b.log")
    try:
        for r in (a, b):
            wait_healthy(r.url, 90, alive=lambda r=r: r.proc.poll() is None)
        yield a, b
    finally:
        a.stop()
        b.stop()


def seen_within(url: str, task: str, check: object, timeout: float = 2.0) -> float:
    """Seconds until GET /v1/prompts/{task} satisfies `check` (a status, or a sha256 prefix)."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        r = httpx.get(f"{url}/v1/prompts/{task}", timeout=5)
        if r.status_code == check or (r.status_code == 200 and r.json()["sha256"][:12] == check):
            return time.monotonic() - start
        time.sleep(0.01)
    raise AssertionError(f"{task} did not reach {check} on {url} within {timeout} s")


def pointer(s3: S3Server, task: str) -> dict[str, object]:
    body = s3.client().get_object(Bucket=BUCKET, Key=f"reg/current/{task}")["Body"].read()
    return dict(json.loads(body))


def version_ids(s3: S3Server, task: str) -> set[str]:
    return {k.split("/")[3] for k in s3.keys(BUCKET, f"reg/versions/{task}/")}


def test_put_and_delete_propagate(
    replicas: tuple[Replica, Replica], variants: dict[str, Files], expected: dict[str, str]
) -> None:
    a, b = replicas
    r = put(a, "shared", variants["v-prefix"])
    assert r.status_code == 201, r.text
    assert seen_within(b.url, "shared", r.json()["sha256"][:12]) < 2.0
    served = complete(b, "shared")
    assert served.json()["choices"][0]["text"] == expected[sha_of(served)]
    assert sha_of(served) == r.json()["sha256"][:12]
    r = put(b, "shared", variants["v-prompt"])
    assert r.status_code == 200 and r.json()["version"] == 2
    assert seen_within(a.url, "shared", r.json()["sha256"][:12]) < 2.0
    assert httpx.delete(f"{b.url}/v1/prompts/shared").status_code == 200
    assert seen_within(a.url, "shared", 404) < 2.0
    assert complete(a, "shared").status_code == 404


def race(
    replicas: tuple[Replica, Replica], task: str, uploads: dict[str, Files]
) -> dict[str, httpx.Response]:
    """PUT one upload through each replica at the same moment; the responses by upload."""
    results: dict[str, httpx.Response] = {}
    barrier = threading.Barrier(2)

    def write(replica: Replica, name: str) -> None:
        barrier.wait()
        results[name] = put(replica, task, uploads[name])

    threads = [
        threading.Thread(target=write, args=(r, n)) for r, n in zip(replicas, uploads, strict=True)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results


def test_concurrent_puts_one_wins(
    replicas: tuple[Replica, Replica], s3: S3Server, variants: dict[str, Files]
) -> None:
    """The same task PUT through both replicas at once (the server is made to take 0.4 s per
    version object, so both writes surely overlap): one succeeds, the other gets 409, and the
    bucket holds the winner and nothing of the loser."""
    a, b = replicas
    s3.faults(slow="/reg/versions/race/", slow_s=0.4)
    try:
        for round_, success in enumerate((201, 200)):
            before = version_ids(s3, "race")
            pair = (("v-prompt", "v-prefix"), ("v-ptune", "v-prompt2"))[round_]
            results = race(replicas, "race", {v: variants[v] for v in pair})
            statuses = sorted(r.status_code for r in results.values())
            assert statuses == [success, 409], {v: r.text for v, r in results.items()}
            winner = next(r.json() for r in results.values() if r.status_code == success)
            loser = next(r.json() for r in results.values() if r.status_code == 409)
            assert "changed by another writer" in loser["error"]["message"]
            assert loser["error"]["code"] == "write_conflict"
            current = pointer(s3, "race")
            assert current["sha256"] == winner["sha256"] and current["version"] == round_ + 1
            assert version_ids(s3, "race") == before | {current["id"]}  # the loser's are gone
            for replica in (a, b):
                assert seen_within(replica.url, "race", winner["sha256"][:12]) < 2.0
    finally:
        s3.faults()


def test_swap_storm_across_replicas(
    replicas: tuple[Replica, Replica],
    s3: S3Server,
    variants: dict[str, Files],
    expected: dict[str, str],
) -> None:
    """100 replace/delete/re-add cycles, alternating between the replicas, while both serve a
    load on the same tasks: no failures but the 404s of a deleted task, and every answer is the
    one of the version its fingerprint names."""
    tasks, names = ["storm-a", "storm-b", "storm-c"], list(variants)
    for i, task in enumerate(tasks):
        assert put(replicas[0], task, variants[names[i]]).status_code in (200, 201)
    done = threading.Event()
    tally = Tally(expected)
    failures, counts = tally.failures, tally.counts

    def load(replica: Replica, seed: int) -> None:
        rng = random.Random(seed)
        while not done.is_set():
            tally.record(complete(replica, rng.choice(tasks)), where=f"{replica.url}: ")

    workers = [
        threading.Thread(target=load, args=(replica, seed)) for seed, replica in enumerate(replicas)
    ]
    for w in workers:
        w.start()
    rng = random.Random(7)
    try:
        for cycle in range(100):
            task = tasks[cycle % 3]
            here, there = replicas[cycle % 2], replicas[1 - cycle % 2]
            r = put(here, task, variants[rng.choice(names)])
            assert r.status_code == 200, r.text  # replace
            after = complete(here, task)
            assert after.status_code == 200 and sha_of(after) == r.json()["sha256"][:12]
            assert httpx.delete(f"{there.url}/v1/prompts/{task}", timeout=30).status_code == 200
            assert complete(there, task).status_code == 404
            re_add = put(here, task, variants[rng.choice(names)])
            assert re_add.status_code == 201, re_add.text
    finally:
        done.set()
        for w in workers:
            w.join(60)
    assert failures == []
    assert counts["ok"] > 50, counts
    for task in tasks:  # and both end on what the bucket says
        sha = str(pointer(s3, task)["sha256"])[:12]
        for replica in replicas:
            assert seen_within(replica.url, task, sha) < 2.0


CRASH_SCRIPT = """
import json, os, sys
from app.model import ModelSpec
from app.registry import PromptFiles, S3Location, S3Options
from app.registry.s3 import S3Registry
spec = ModelSpec(**json.loads(os.environ["SPEC"]))
options = S3Options(endpoint_url=os.environ["SOFTSERVE_S3_ENDPOINT_URL"])
registry = S3Registry(S3Location.parse(sys.argv[1]), spec, options=options)
def crash(step):
    if step == sys.argv[2]:
        os._exit(9)  # no cleanup of any kind: as if killed
registry.step = crash
files = json.loads(sys.stdin.read())
registry.put("crashy", PromptFiles(bytes.fromhex(files["c"]), bytes.fromhex(files["t"])))
"""


@pytest.mark.parametrize(
    ("step", "survivor"), [("objects-written", "old"), ("pointer-written", "new")]
)
def test_writer_killed_mid_write(
    replicas: tuple[Replica, Replica],
    s3: S3Server,
    tiny: FrozenModel,
    variants: dict[str, Files],
    step: str,
    survivor: str,
) -> None:
    a, b = replicas
    old = put(a, "crashy", variants["v-prompt"]).json()
    new = variants["v-prefix2"]
    proc = subprocess.run(
        [sys.executable, "-c", CRASH_SCRIPT, PROMPTS, step],
        input=json.dumps(
            {"c": new["adapter_config.json"].hex(), "t": new["adapter_model.safetensors"].hex()}
        ),
        env=_env(s3, SPEC=json.dumps(dataclasses.asdict(tiny.spec))),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 9, proc.stderr
    want = old["sha256"][:12] if survivor == "old" else str(pointer(s3, "crashy")["sha256"])[:12]
    if survivor == "new":
        assert want != old["sha256"][:12]
    for replica in (a, b):  # the replicas serve the survivor, and never list a half entry
        assert seen_within(replica.url, "crashy", want) < 2.0
        time.sleep(0.3)  # a few more polls
        assert httpx.get(f"{replica.url}/v1/prompts/crashy").json()["sha256"][:12] == want
        assert httpx.get(f"{replica.url}/v1/prompts").json()["skipped"] == []
    restarted = S3Registry(
        S3Location.parse(PROMPTS), tiny.spec, options=S3Options(endpoint_url=s3.endpoint)
    )
    restarted.load_all()  # the writer, restarted, converges on the same version
    assert restarted.get("crashy").sha256[:12] == want and restarted.skipped == ()
    current = str(pointer(s3, "crashy")["id"])
    # The leftovers (the unflipped version, or the superseded one) go after the grace period.
    assert wait_until(lambda: version_ids(s3, "crashy") == {current}, 4 * GRACE_S + 2)


def test_cli_against_the_bucket(
    replicas: tuple[Replica, Replica],
    s3: S3Server,
    tiny_folder: Path,
    variants: dict[str, Files],
    tmp_path: Path,
) -> None:
    """`prompts push` to a bucket-backed server, and `import-peft` straight into the bucket."""
    a, b = replicas
    folders = {}
    for name in ("v-ptune", "v-prefix"):
        folders[name] = tmp_path / name
        folders[name].mkdir()
        for file, data in variants[name].items():
            (folders[name] / file).write_bytes(data)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "app", *args],
            env=_env(s3),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )

    def sha(name: str) -> str:
        return hashlib.sha256(variants[name]["adapter_model.safetensors"]).hexdigest()[:12]

    pushed = cli(
        "prompts", "push", str(folders["v-ptune"]), "--task", "cli-task", "--server", a.url
    )
    assert pushed.returncode == 0 and "created cli-task" in pushed.stdout, pushed.stderr
    assert seen_within(b.url, "cli-task", sha("v-ptune")) < 2.0
    model = ("--model", str(tiny_folder))
    imported = cli(
        "import-peft", str(folders["v-prefix"]), "--task", "cli-task", "--prompts", PROMPTS, *model
    )
    assert imported.returncode == 0, imported.stderr
    assert f"imported cli-task (PREFIX_TUNING, 5 virtual tokens) into {PROMPTS}" in imported.stdout
    for replica in (a, b):
        assert seen_within(replica.url, "cli-task", sha("v-prefix")) < 2.0
    assert httpx.get(f"{a.url}/v1/prompts/cli-task").json()["version"] == 2
    bad = cli(
        "import-peft", str(folders["v-prefix"]), "--task", "x", "--prompts", "s3://B/x", *model
    )
    assert bad.returncode == 2 and "invalid bucket name" in bad.stderr
