"""Hot-swapping the registry over HTTP: create, replace (across kinds), delete; hostile input;
a swap storm under load with every answer checked against the version that served it."""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from app.api.app import create_app
from app.engine import Engine, GenerationRequest, SamplingParams
from app.model import FrozenModel
from app.registry import Limits, PromptFiles, build_entry
from app.settings import Settings
from tests.conftest import run_to_completion, text_of, write_adapter
from tests.hostile import Files, cases, good_files
from tests.live import LiveServer, live

PROMPT = "The quick brown fox"
VARIANTS = {
    "v-prompt": "prompt",
    "v-prefix": "prefix",
    "v-ptune": "p-tuning",
    "v-prompt2": "prompt",
    "v-prefix2": "prefix",
}


@pytest.fixture(scope="module")
def variants(tiny: FrozenModel, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Files]:
    root = tmp_path_factory.mktemp("variants")
    return {
        name: good_files(write_adapter(tiny, root, name, kind, num_virtual_tokens=5, seed=100 + i))
        for i, (name, kind) in enumerate(VARIANTS.items())
    }


@pytest.fixture(scope="module")
def expected(tiny: FrozenModel, variants: dict[str, Files]) -> dict[str, str]:
    """sha256[:12] of each variant's tensor -> its greedy answer, computed alone."""
    ids = tuple(tiny.tokenizer(PROMPT)["input_ids"])
    answers = {}
    for files in variants.values():
        entry = build_entry(
            "x",
            PromptFiles(files["adapter_config.json"], files["adapter_model.safetensors"]),
            spec=tiny.spec,
            limits=Limits(),
            version=1,
            created=0.0,
        )
        request = GenerationRequest(
            "x",
            ids,
            SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True),
            entry.soft_prompt,
        )
        answers[entry.sha256[:12]] = text_of(run_to_completion(Engine(tiny), request)["x"])
    assert len(set(answers.values())) == len(variants)  # outputs differ, so a mix-up would show
    return answers


@pytest.fixture(scope="module")
def server(tiny: FrozenModel, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    settings = Settings(
        prompts=tmp_path_factory.mktemp("registry"),
        max_upload_bytes=256 * 1024,
        registry_poll_s=0.1,
    )
    with live(create_app(settings, base=tiny)) as srv:
        yield srv


def put(server: LiveServer, task: str, files: Files) -> httpx.Response:
    return httpx.put(
        f"{server.url}/v1/prompts/{task}", files={k: (k, v) for k, v in files.items()}, timeout=30
    )


def complete(server: LiveServer, task: str) -> httpx.Response:
    body = {"model": task, "prompt": PROMPT, "max_tokens": 6, "temperature": 0, "ignore_eos": True}
    return httpx.post(f"{server.url}/v1/completions", json=body, timeout=60)


def sha_of(response: httpx.Response) -> str:
    return str(response.json()["system_fingerprint"]).rsplit(":", 1)[1]


class Tally:
    """Judges answers during a swap storm (any thread): a 404 is what a deleted task gives; any
    other failure, or an answer that differs from the version its fingerprint names, is kept."""

    def __init__(self, expected: dict[str, str]) -> None:
        self.expected = expected  # sha prefix -> that version's answer
        self.failures: list[str] = []
        self.counts = {"ok": 0, "404": 0}
        self._lock = threading.Lock()

    def record(self, r: httpx.Response, where: str = "") -> None:
        with self._lock:
            if r.status_code == 404:
                self.counts["404"] += 1
            elif r.status_code != 200:
                self.failures.append(f"{where}{r.status_code}: {r.text}")
            elif r.json()["choices"][0]["text"] != self.expected[sha_of(r)]:
                self.failures.append(
                    f"{where}output does not match version {r.json()['system_fingerprint']}"
                )
            else:
                self.counts["ok"] += 1


def test_create_replace_delete(
    server: LiveServer, variants: dict[str, Files], expected: dict[str, str]
) -> None:
    r = put(server, "swap-me", variants["v-prompt"])
    assert r.status_code == 201, r.text
    first = r.json()
    assert first["kind"] == "PROMPT_TUNING" and first["version"] == 1
    served = complete(server, "swap-me")  # servable as soon as PUT returned
    assert (
        served.status_code == 200
        and served.json()["choices"][0]["text"] == expected[first["sha256"][:12]]
    )

    r = put(server, "swap-me", variants["v-prefix"])  # replaced by another kind
    assert r.status_code == 200 and r.json()["kind"] == "PREFIX_TUNING" and r.json()["version"] == 2
    served = complete(server, "swap-me")
    assert served.json()["choices"][0]["text"] == expected[r.json()["sha256"][:12]]
    assert httpx.get(f"{server.url}/v1/prompts/swap-me").json()["version"] == 2
    assert "swap-me" in [m["id"] for m in httpx.get(f"{server.url}/v1/models").json()["data"]]

    r = httpx.delete(f"{server.url}/v1/prompts/swap-me")
    assert r.status_code == 200 and r.json() == {
        "id": "swap-me",
        "object": "prompt",
        "deleted": True,
    }
    assert complete(server, "swap-me").status_code == 404
    assert httpx.get(f"{server.url}/v1/prompts/swap-me").status_code == 404
    assert httpx.delete(f"{server.url}/v1/prompts/swap-me").status_code == 404
    assert not (server.services.settings.prompts / "swap-me").exists()


def _snapshot(server: LiveServer) -> tuple[object, dict[str, bytes]]:
    root = server.services.settings.prompts
    disk = {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }
    dirs = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_dir())
    return (httpx.get(f"{server.url}/v1/prompts").json(), dirs), disk


HOSTILE_NAMES = ["%2E%2E", "a%00b", "x" * 65, "Upper", "-lead", "a..b", "bad%0A"]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_hostile_names(server: LiveServer, variants: dict[str, Files], name: str) -> None:
    assert put(server, "keep", variants["v-prompt2"]).status_code in (200, 201)
    before = _snapshot(server)
    r = httpx.put(
        f"{server.url}/v1/prompts/{name}",
        files={k: (k, v) for k, v in variants["v-prompt"].items()},
        timeout=30,
    )
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "task"
    assert httpx.delete(f"{server.url}/v1/prompts/{name}").status_code == 400
    assert _snapshot(server) == before


@pytest.mark.parametrize("path", ["..%2F..%2Fetc", "%2Fetc%2Fpasswd", "a/b"])
def test_path_escapes_never_reach_the_registry(
    server: LiveServer, variants: dict[str, Files], path: str
) -> None:
    before = _snapshot(server)
    r = httpx.put(
        f"{server.url}/v1/prompts/{path}",
        files={k: (k, v) for k, v in variants["v-prompt"].items()},
    )
    assert r.status_code in (400, 404) and set(r.json()["error"]) == {
        "message",
        "type",
        "param",
        "code",
    }
    assert _snapshot(server) == before


HOSTILE = cases(hidden=64, layers=3, heads=4, head_dim=16)


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_uploads(server: LiveServer, variants: dict[str, Files], case: str) -> None:
    """Each refused with a 4xx in OpenAI's shape; the listing and the files on disk unchanged."""
    assert put(server, "target", variants["v-prompt"]).status_code in (200, 201)
    before = _snapshot(server)
    mutate, status = HOSTILE[case]
    for task in ("target", "fresh-task"):  # replacing an entry, and creating one
        r = put(server, task, mutate(variants["v-prompt"]))
        assert r.status_code == status, (case, r.text)
        assert (
            set(r.json()["error"]) == {"message", "type", "param", "code"}
            and r.json()["error"]["message"]
        )
    assert _snapshot(server) == before


def test_storm(server: LiveServer, variants: dict[str, Files], expected: dict[str, str]) -> None:
    """100 PUT/replace/DELETE/re-add cycles while a load loop hits the same tasks."""
    tasks = ["storm-a", "storm-b", "storm-c"]
    names = list(variants)
    for i, task in enumerate(tasks):
        assert put(server, task, variants[names[i]]).status_code in (200, 201)
    done = threading.Event()
    tally = Tally(expected)
    failures, counts = tally.failures, tally.counts

    def load(seed: int) -> None:
        rng = random.Random(seed)
        while not done.is_set():
            tally.record(complete(server, rng.choice(tasks)))

    workers = [threading.Thread(target=load, args=(s,)) for s in range(4)]
    for w in workers:
        w.start()
    rng = random.Random(7)
    try:
        for cycle in range(100):
            task = tasks[cycle % 3]
            new = variants[rng.choice(names)]
            r = put(server, task, new)  # replace
            assert r.status_code == 200, r.text
            after = complete(server, task)  # arriving after the response: the new version
            assert after.status_code == 200 and sha_of(after) == r.json()["sha256"][:12]
            assert httpx.delete(f"{server.url}/v1/prompts/{task}").status_code == 200
            assert complete(server, task).status_code == 404
            assert put(server, task, variants[rng.choice(names)]).status_code == 201  # re-add
    finally:
        done.set()
        for w in workers:
            w.join(60)
    assert failures == []
    assert counts["ok"] > 100, counts
    engine = server.services.engine
    assert engine.num_running == 0 and server.services.bridge.in_flight == 0


def test_admin_key(tiny: FrozenModel, variants: dict[str, Files], tmp_path: Path) -> None:
    settings = Settings(prompts=tmp_path, api_key="infer", admin_key="admin")
    with live(create_app(settings, base=tiny)) as srv:
        files = {k: (k, v) for k, v in variants["v-prompt"].items()}
        url = f"{srv.url}/v1/prompts/{quote('t1')}"
        assert httpx.put(url, files=files).status_code == 401
        r = httpx.put(url, files=files, headers={"Authorization": "Bearer infer"})
        assert r.status_code == 403 and "inference API key" in r.json()["error"]["message"]
        assert (
            httpx.put(url, files=files, headers={"Authorization": "Bearer wrong"}).status_code
            == 401
        )
        assert (
            httpx.put(url, files=files, headers={"Authorization": "Bearer admin"}).status_code
            == 201
        )
        assert (
            httpx.get(
                f"{srv.url}/v1/prompts", headers={"Authorization": "Bearer infer"}
            ).status_code
            == 200
        )
        assert httpx.delete(url, headers={"Authorization": "Bearer infer"}).status_code == 403
        assert httpx.delete(url, headers={"Authorization": "Bearer admin"}).status_code == 200
