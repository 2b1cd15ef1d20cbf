"""Operating it: overload, deadlines, health, metrics, graceful shutdown, container files."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from app.api.app import create_app
from app.model import FrozenModel
from app.settings import Settings
from tests.conftest import write_adapter
from tests.live import LiveServer, free_port, live, wait_until
from tests.tiny import TINY_MODEL_ID, save_tiny

ROOT = Path(__file__).resolve().parent.parent
BODY = {
    "model": TINY_MODEL_ID,
    "prompt": "Hello",
    "max_tokens": 5,
    "temperature": 0,
    "ignore_eos": True,
}


@pytest.fixture(scope="module")
def server(tiny: FrozenModel, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    prompts = tmp_path_factory.mktemp("prompts")
    write_adapter(tiny, prompts, "pt", "prompt", seed=3)
    settings = Settings(prompts=prompts, max_requests=4, max_queued_tokens=4000, health_stall_s=0.5)
    with live(create_app(settings, base=tiny)) as srv:
        yield srv


def test_overload_gets_429_at_once_and_admitted_ones_complete(server: LiveServer) -> None:
    bridge = server.services.bridge
    bridge.pause()  # admitted requests stay in flight: the cap is reached for sure

    async def burst() -> tuple[list[httpx.Response], list[float]]:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as http:
            admitted = [
                asyncio.ensure_future(http.post("/v1/completions", json=BODY)) for _ in range(4)
            ]
            assert await asyncio.to_thread(
                wait_until, lambda: server.app.state.runtime.gate.active == 4
            )
            rejected_times = []
            for _ in range(40):  # ten times the capacity
                t = time.perf_counter()
                r = await http.post("/v1/completions", json=BODY)
                rejected_times.append(time.perf_counter() - t)
                assert r.status_code == 429 and r.headers["retry-after"] == "1"
                assert r.json()["error"]["type"] == "rate_limit_error"
            bridge.resume()
            return [await a for a in admitted], rejected_times

    try:
        done, times = asyncio.run(burst())
    finally:
        bridge.resume()
    assert [r.status_code for r in done] == [200] * 4
    assert all(len(r.json()["choices"][0]["text"]) > 0 for r in done)
    assert max(times) < 1.0  # refused at once, not after queueing
    assert wait_until(lambda: server.app.state.runtime.gate.active == 0)


def test_queued_token_cap(server: LiveServer) -> None:
    r = httpx.post(
        f"{server.url}/v1/completions",
        json={**BODY, "prompt": ["Hello"] * 4, "n": 4, "max_tokens": 300},
    )
    assert r.status_code == 429 and "tokens queued" in r.json()["error"]["message"]


def test_deadline_while_waiting(server: LiveServer) -> None:
    engine, bridge = server.services.engine, server.services.bridge
    bridge.pause()
    try:

        async def run() -> httpx.Response:
            async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
                pending = asyncio.ensure_future(
                    http.post("/v1/completions", json={**BODY, "timeout": 0.3})
                )
                await asyncio.sleep(0.6)
                bridge.resume()
                return await pending

        r = asyncio.run(run())
    finally:
        bridge.resume()
    assert r.status_code == 408 and r.json()["error"]["code"] == "timeout"
    assert wait_until(lambda: engine.num_running == 0 and bridge.in_flight == 0)


def test_deadline_while_running_frees_the_row(server: LiveServer) -> None:
    engine, bridge = server.services.engine, server.services.bridge
    body = {**BODY, "max_tokens": 400, "stream": True, "timeout": 0.5}
    with httpx.stream("POST", f"{server.url}/v1/completions", json=body, timeout=30) as r:
        lines = r.iter_lines()
        assert next(line for line in lines if line).startswith("data: {")
        bridge.pause()  # the row is running; hold it past its deadline
        time.sleep(0.7)
        bridge.resume()
        rest = [line for line in lines if line]
    errors = [
        json.loads(line[6:]) for line in rest if line.startswith("data: {") and '"error"' in line
    ]
    assert errors and errors[0]["error"]["code"] == "timeout"
    assert rest[-1] == "data: [DONE]"
    assert wait_until(lambda: engine.num_running == 0 and bridge.in_flight == 0)


def test_health_reports_a_stalled_loop_and_recovery(server: LiveServer) -> None:
    assert httpx.get(f"{server.url}/health").status_code == 200
    bridge = server.services.bridge
    bridge.pause()
    try:
        t = time.monotonic()
        assert wait_until(lambda: httpx.get(f"{server.url}/health").status_code == 503, timeout=5)
        assert time.monotonic() - t < 2.0
        body = httpx.get(f"{server.url}/health").json()
        assert body["status"] == "unhealthy" and "no progress" in body["detail"]
    finally:
        bridge.resume()
    assert wait_until(lambda: httpx.get(f"{server.url}/health").status_code == 200, timeout=5)


def _metrics(url: str) -> dict[str, float]:
    values = {}
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics").text):
        for sample in family.samples:
            key = sample.name + "".join(f"|{k}={v}" for k, v in sorted(sample.labels.items()))
            values[key] = sample.value
    return values


def test_metrics_parse_and_move(server: LiveServer) -> None:
    before = _metrics(server.url)
    assert (
        httpx.post(f"{server.url}/v1/completions", json={**BODY, "model": "pt"}).status_code == 200
    )
    with httpx.stream("POST", f"{server.url}/v1/completions", json={**BODY, "stream": True}) as r:
        assert r.read()
    after = _metrics(server.url)
    ok = "softserve_requests_total|endpoint=completions|status=200|task="
    assert after[ok + "pt"] == before.get(ok + "pt", 0) + 1
    assert after[ok + TINY_MODEL_ID] == before.get(ok + TINY_MODEL_ID, 0) + 1
    assert (
        after["softserve_generation_tokens_total|task=pt"]
        == before.get("softserve_generation_tokens_total|task=pt", 0) + 5
    )
    ttft = "softserve_time_to_first_token_seconds_count|task=pt"
    assert after[ttft] == before.get(ttft, 0) + 1
    assert after["softserve_batch_size_count"] > before.get("softserve_batch_size_count", 0)
    assert (
        after["softserve_queue_time_seconds_count"]
        >= before.get("softserve_queue_time_seconds_count", 0) + 2
    )
    assert after["softserve_kv_prefix_cache_misses_total"] >= 1
    assert after["softserve_registry_prompts"] == 1 and after["softserve_requests_running"] == 0
    assert any(k.startswith("softserve_rejections_total|reason=max_requests") for k in after)


def test_task_labels_are_bounded() -> None:
    from app.api.metrics import OTHER, TaskLabels

    labels = TaskLabels(3)
    assert [labels(t) for t in ["a", "b", "a", "c", "d", "e", "b"]] == [
        "a",
        "b",
        "a",
        "c",
        OTHER,
        OTHER,
        "b",
    ]


def test_one_structured_log_line_per_request(
    server: LiveServer, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("INFO", logger="softserve.requests"):
        assert (
            httpx.post(
                f"{server.url}/v1/completions",
                json={**BODY, "model": "pt", "prompt": "secret words"},
            ).status_code
            == 200
        )
        assert (
            httpx.post(
                f"{server.url}/v1/completions", json={**BODY, "model": "missing"}
            ).status_code
            == 404
        )
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "softserve.requests"]
    assert [(x["task"], x["status"]) for x in lines] == [("pt", 200), ("missing", 404)]
    assert (
        lines[0]["completion_tokens"] == 5
        and lines[0]["prompt_tokens"] > 0
        and lines[0]["ttft_s"] is not None
    )
    assert all("secret" not in json.dumps(x) for x in lines)  # no prompt text unless asked for


@pytest.fixture(scope="module")
def tiny_folder(tiny: FrozenModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny(tiny, tmp_path_factory.mktemp("tiny-model"))


def test_sigterm_drains_then_exits_zero(tiny_folder: Path, tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOFTSERVE_")}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "app",
            "serve",
            "--model",
            str(tiny_folder),
            "--prompts",
            str(tmp_path),
            "--port",
            str(port),
            "--log-level",
            "warning",
            "--max-batch-size",
            "1",
        ],
        env={
            **env,
            "PYTHONPATH": str(ROOT),
            "SOFTSERVE_DRAIN_S": "20",
            "SOFTSERVE_DTYPE": "float32",
        },
        cwd=ROOT,
    )
    try:
        assert wait_until(lambda: _healthy(url), timeout=90)
        model = tiny_folder.name  # a model loaded from a folder is named after it
        body = {**BODY, "model": model, "max_tokens": 200, "stream": True}

        async def scenario() -> tuple[list[list[str]], int, int]:
            async with httpx.AsyncClient(base_url=url, timeout=60) as http:

                async def stream_one() -> list[str]:
                    async with http.stream("POST", "/v1/completions", json=body) as r:
                        return [line async for line in r.aiter_lines() if line]

                # One row at a time: four long requests keep the drain busy for a while.
                streams = [asyncio.ensure_future(stream_one()) for _ in range(4)]
                await asyncio.sleep(0.3)  # all four admitted (one running, three waiting)
                proc.send_signal(signal.SIGTERM)
                await asyncio.sleep(0.05)
                late = await http.post("/v1/completions", json={**BODY, "model": model})
                health = await http.get("/health")
                return [await s for s in streams], late.status_code, health.status_code

        started = time.monotonic()
        streams, late_status, health_status = asyncio.run(scenario())
        assert late_status == 503 and health_status == 503
        for lines in streams:  # no admitted request was cut
            assert lines[-1] == "data: [DONE]"
            chunks = [json.loads(line[6:]) for line in lines[:-1]]
            assert chunks[-1]["choices"][0]["finish_reason"] == "length"
        assert proc.wait(timeout=20) == 0
        assert time.monotonic() - started < 20
    finally:
        if proc.poll() is None:
            proc.kill()


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_container_files() -> None:
    """What can be checked without a container engine: the files parse and agree with the README."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert services["softserve"]["build"] == "."
    replicas = [s for s in services.values() if "replicas" in s.get("profiles", [])]
    assert len(replicas) == 3  # two servers and the load balancer
    volumes = [
        v for s in replicas for v in s.get("volumes", []) if str(v).endswith(":/data/prompts")
    ]
    assert len(volumes) == 2 and len(set(volumes)) == 1  # both replicas share one prompts folder
    lb = next(s for s in replicas if "nginx" in s.get("image", ""))
    conf_path = ROOT / str(lb["volumes"][0]).split(":")[0]
    conf = conf_path.read_text()
    assert conf.count("server ") >= 2 and "proxy_buffering off" in conf

    dockerfile = (ROOT / "Dockerfile").read_text()
    directives = [
        line.split()[0]
        for line in dockerfile.splitlines()
        if line and not line.startswith(("#", " "))
    ]
    assert directives[0] == "FROM" and "HEALTHCHECK" in directives and "USER" in directives
    user = next(line.split()[1] for line in dockerfile.splitlines() if line.startswith("USER "))
    assert user not in ("root", "0")
    assert 'CMD ["softserve", "serve"]' in dockerfile
    assert "ARG TORCH_INDEX_URL" in dockerfile  # the CUDA build argument
    readme = (ROOT / "README.md").read_text()
    assert "softserve serve" in readme and "docker compose --profile replicas up" in readme
    assert "/health" in dockerfile


def test_a_failing_step_fails_its_requests_but_not_the_server(
    server: LiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = server.services.engine
    real_forward = engine.runner.forward
    calls = {"n": 0}

    def flaky_forward(segments: object) -> object:
        # Fails mid-step, after the request left the waiting queue and took a KV slot.
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("injected failure")
        return real_forward(segments)  # type: ignore[arg-type]

    monkeypatch.setattr(engine.runner, "forward", flaky_forward)
    r = httpx.post(f"{server.url}/v1/completions", json=BODY)
    assert r.status_code == 503 and "injected failure" in r.json()["error"]["message"]
    assert httpx.get(f"{server.url}/health").status_code == 200  # the loop lives on
    assert httpx.post(f"{server.url}/v1/completions", json=BODY).status_code == 200
    assert engine.num_running == 0 and server.services.bridge.in_flight == 0
