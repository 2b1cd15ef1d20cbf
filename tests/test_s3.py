"""The registry in S3-compatible object storage, against a real S3 API server process (moto in
server mode, `tests/s3server.py`) reached over HTTP through boto3: layout, conditional writes,
validation of everything read from the bucket, and collection of old versions."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import yaml

from app.api.app import create_app
from app.model import FrozenModel
from app.registry import (
    InvalidPrompt,
    PromptFiles,
    S3Location,
    S3Options,
    StoreUnavailable,
    WriteConflict,
)
from app.registry.s3 import S3Registry
from app.registry.s3_bucket import Listed
from app.registry.s3_gc import Keep, doomed
from app.registry.s3_layout import parse_pointer
from app.settings import Settings
from tests import test_hotswap as hotswap
from tests.hostile import Files, cases
from tests.live import LiveServer, live, wait_until
from tests.s3server import S3Server, s3_for_module
from tests.test_hotswap import complete, put, sha_of

# The hot-swap tests' fixtures: five adapters of three kinds, and each one's greedy answer.
variants = hotswap.variants
expected = hotswap.expected
s3 = s3_for_module

ROOT = Path(__file__).resolve().parent.parent
TENSOR, CONFIG = "adapter_model.safetensors", "adapter_config.json"
HOSTILE = cases(hidden=64, layers=3, heads=4, head_dim=16)


@pytest.fixture(scope="module")
def server(tiny: FrozenModel, s3: S3Server) -> Iterator[LiveServer]:
    settings = Settings(
        prompts=f"s3://{s3.bucket('served')}/reg",
        s3_endpoint_url=s3.endpoint,
        max_upload_bytes=256 * 1024,
        registry_poll_s=0.1,
    )
    with live(create_app(settings, base=tiny)) as srv:
        yield srv


def registry(tiny: FrozenModel, s3: S3Server, bucket: str, grace_s: float = 60.0) -> S3Registry:
    options = S3Options(endpoint_url=s3.endpoint, gc_grace_s=grace_s)
    reg = S3Registry(S3Location(bucket, "reg"), tiny.spec, options=options)
    reg.load_all()
    return reg


def as_files(files: Files) -> PromptFiles:
    return PromptFiles(files[CONFIG], files[TENSOR], files.get("task.json"))


def plant(
    s3: S3Server,
    bucket: str,
    task: str,
    files: Files,
    *,
    sha_of_tensor: bytes | None = None,
    listed: tuple[str, ...] = (),
) -> None:
    """Write a version and its pointer straight into the bucket, as someone with access might:
    the pointer names `files` (and `listed`) and the sha256 of `sha_of_tensor` (default: the
    tensor written)."""
    client, vid = s3.client(), f"{90:08d}-{'0f' * 8}"
    for name, data in files.items():
        client.put_object(Bucket=bucket, Key=f"reg/versions/{task}/{vid}/{name}", Body=data)
    tensor = files.get(TENSOR, b"") if sha_of_tensor is None else sha_of_tensor
    pointer = {
        "format": 1,
        "version": 90,
        "id": vid,
        "sha256": hashlib.sha256(tensor).hexdigest(),
        "files": sorted({*files, *listed}),
        "created": 0,
    }
    client.put_object(Bucket=bucket, Key=f"reg/current/{task}", Body=json.dumps(pointer).encode())


def test_locations() -> None:
    assert Settings(prompts="s3://my-bucket/a/b/").prompts == S3Location("my-bucket", "a/b")
    assert str(Settings(prompts="s3://my-bucket").prompts) == "s3://my-bucket"
    assert Settings(prompts="some/folder").prompts == Path("some/folder")
    for bad in ("s3://UPPER/x", "s3://ab", "s3://bucket/../x", "s3://bucket/a//b", "s3://b/a/./c"):
        with pytest.raises(ValueError):
            S3Location.parse(bad)


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[1]",
        b'{"format": 2, "version": 1}',
        b'{"format": 1, "version": 0, "deleted": true}',
        b'{"format": 1, "version": 1, "id": "../../../etc", "sha256": "0", "files": []}',
        b'{"format": 1, "version": 2, "id": "00000001-0123456789abcdef", "sha256": "0", "files": []}',
        b"{" + b" " * 5000 + b"}",
    ],
)
def test_pointers_are_parsed_strictly(body: bytes) -> None:
    with pytest.raises(InvalidPrompt):
        parse_pointer(body)


def test_collection_rule() -> None:
    """Current, recent and unsettled versions stay; superseded ones go after the grace period."""
    where, now = S3Location("b", "reg"), datetime(2030, 1, 1, tzinfo=UTC)

    def obj(key: str, age_s: float) -> Listed:
        return Listed(key, '"e"', 1, now - timedelta(seconds=age_s))

    objects = (
        *(
            obj(f"reg/versions/{task}/{vid}/f", age)
            for task, vid, age in [
                ("t", "old", 100),  # superseded long ago: collected
                ("t", "cur", 100),  # named by the pointer
                (
                    "u",
                    "old",
                    100,
                ),  # superseded, but u's pointer flipped 5 s ago: loaders may need it
                ("v", "new", 5),  # a write in flight (no pointer yet)
                ("w", "crashed", 100),  # a first write that never flipped
                ("x", "old", 100),  # x's pointer changed since it was read: hands off
            ]
        ),
        obj("reg/versions/stray-object", 100),
    )
    keep = Keep(
        named={"t": "cur", "u": "cur"},
        serving={"t": "cur"},
        pointers={"t": obj("reg/current/t", 100), "u": obj("reg/current/u", 5)},
        unsettled={"x"},
    )
    assert doomed(objects, now, where, keep, grace_s=60) == [
        "reg/versions/t/old/f",
        "reg/versions/w/crashed/f",
    ]


def test_create_replace_delete(
    server: LiveServer, s3: S3Server, variants: dict[str, Files], expected: dict[str, str]
) -> None:
    r = put(server, "swap-me", variants["v-prompt"])
    assert r.status_code == 201 and r.json()["version"] == 1, r.text
    served = complete(server, "swap-me")
    assert served.json()["choices"][0]["text"] == expected[sha_of(served)]
    r = put(server, "swap-me", variants["v-prefix"])
    assert r.status_code == 200 and r.json()["version"] == 2 and r.json()["kind"] == "PREFIX_TUNING"
    assert sha_of(complete(server, "swap-me")) == r.json()["sha256"][:12]
    keys = s3.keys("served", "reg/")
    assert "reg/current/swap-me" in keys
    assert len([k for k in keys if k.startswith("reg/versions/swap-me/")]) == 4  # 2 versions x 2
    assert httpx.delete(f"{server.url}/v1/prompts/swap-me").status_code == 200
    assert complete(server, "swap-me").status_code == 404
    assert httpx.delete(f"{server.url}/v1/prompts/swap-me").status_code == 404
    r = put(server, "swap-me", variants["v-ptune"])  # re-added: a new version number
    assert r.status_code == 201 and r.json()["version"] == 3


def test_hostile_objects_planted_in_the_bucket(
    server: LiveServer, s3: S3Server, variants: dict[str, Files]
) -> None:
    """The upload corpus written straight into the bucket: over a good version of a task, and as
    new tasks. Every one is skipped (listed with its reason); the good versions keep serving."""
    good = {}
    for case in HOSTILE:
        r = put(server, f"h-{case}", variants["v-prompt"])
        assert r.status_code in (200, 201), r.text
        good[case] = r.json()["sha256"][:12]
    for case, (mutate, _) in HOSTILE.items():
        plant(s3, "served", f"h-{case}", mutate(variants["v-prompt"]))
        plant(s3, "served", f"n-{case}", mutate(variants["v-prompt"]))

    def skipped() -> dict[str, str]:
        body = httpx.get(f"{server.url}/v1/prompts").json()
        return {s["path"].rsplit("/", 1)[1]: s["reason"] for s in body["skipped"]}

    planted = {f"{p}-{c}" for p in "hn" for c in HOSTILE}
    assert wait_until(lambda: planted <= set(skipped()), 10), planted - set(skipped())
    reasons = skipped()
    assert "pickle" in reasons["h-bin-file"] and "limit" in reasons["n-over-upload-limit"]
    for case in HOSTILE:
        assert httpx.get(f"{server.url}/v1/prompts/n-{case}").status_code == 404
        info = httpx.get(f"{server.url}/v1/prompts/h-{case}").json()
        assert info["sha256"][:12] == good[case] and info["version"] == 1
    served = complete(server, "h-nan")
    assert served.status_code == 200 and sha_of(served) == good["nan"]
    fixed = put(server, "h-nan", variants["v-prefix"])  # a good write replaces the bad pointer
    assert fixed.status_code == 200 and fixed.json()["version"] == 91
    assert "h-nan" not in skipped()


def test_hostile_pointers_planted_in_the_bucket(
    server: LiveServer, s3: S3Server, variants: dict[str, Files]
) -> None:
    assert put(server, "victim", variants["v-prompt"]).status_code in (200, 201)
    client, good = s3.client(), variants["v-prompt"]
    raw = {
        "victim": b"\x80\x04garbage",
        "Upper": b"{}",
        "nested/task": b"{}",
        "oversized": b"{" + b" " * 8000 + b"}",
    }
    for key, body in raw.items():
        client.put_object(Bucket="served", Key=f"reg/current/{key}", Body=body)
    other = variants["v-prompt2"]  # valid, but not the tensor the pointer names
    plant(s3, "served", "tampered", {**good, TENSOR: other[TENSOR]}, sha_of_tensor=good[TENSOR])
    plant(s3, "served", "vanished", {CONFIG: good[CONFIG]}, listed=(TENSOR,))
    plant(s3, "served", "pickled", {CONFIG: good[CONFIG], "adapter_model.bin": b"\x80\x04K\x01."})
    names = {"victim", "Upper", "nested/task", "oversized", "tampered", "vanished", "pickled"}

    def skipped() -> dict[str, str]:
        body = httpx.get(f"{server.url}/v1/prompts").json()
        return {s["path"].split("/reg/current/")[1]: s["reason"] for s in body["skipped"]}

    assert wait_until(lambda: names <= set(skipped()), 10), names - set(skipped())
    reasons = skipped()
    assert "sha256" in reasons["tampered"] and "missing" in reasons["vanished"]
    assert "pickle" in reasons["pickled"] and "invalid task name" in reasons["Upper"]
    assert complete(server, "victim").status_code == 200  # the last good version serves on
    assert httpx.delete(f"{server.url}/v1/prompts/victim").status_code == 200  # bad pointer too
    assert complete(server, "victim").status_code == 404 and "victim" not in skipped()
    assert put(server, "victim", variants["v-prompt"]).json()["version"] == 2


@pytest.mark.parametrize("conditional", [True, False])
def test_a_write_that_loses_the_race_is_refused(
    tiny: FrozenModel, s3: S3Server, variants: dict[str, Files], conditional: bool
) -> None:
    """Another writer flips the pointer between this write's objects and its flip: 409, and only
    the winner is in the bucket. Without conditional writes (a server answering 501), the same
    through the ETag compare."""
    bucket = s3.bucket(f"race-{conditional}".lower())
    a, b = registry(tiny, s3, bucket), registry(tiny, s3, bucket)
    s3.faults(no_conditional=not conditional)
    try:
        a.write("task", as_files(variants["v-prompt"]))
        a.step = lambda step: (
            b.write("task", as_files(variants["v-prefix"])) if step == "objects-written" else None
        )
        with pytest.raises(WriteConflict, match="changed by another writer"):
            a.write("task", as_files(variants["v-ptune"]))
    finally:
        s3.faults()
    winner = b.get("task")
    fresh = registry(tiny, s3, bucket)
    assert fresh.get("task").sha256 == winner.sha256 and fresh.get("task").version == 2
    versions = {k.split("/")[3] for k in s3.keys(bucket, "reg/versions/")}
    assert len(versions) == 2  # the first version (superseded, in its grace period) and b's


def test_superseded_versions_are_collected_after_the_grace_period(
    tiny: FrozenModel, s3: S3Server, variants: dict[str, Files]
) -> None:
    bucket = s3.bucket("collect")
    reg = registry(tiny, s3, bucket, grace_s=1.0)
    for name in ("v-prompt", "v-prefix", "v-ptune"):
        reg.write("task", as_files(variants[name]))
    assert reg.collect() == 0  # the pointer flipped just now: a replica may still be loading
    time.sleep(1.1)
    assert reg.collect() == 4
    current = reg.get("task")
    assert [k.split("/")[3][:8] for k in s3.keys(bucket, "reg/versions/")] == ["00000003"] * 2
    assert registry(tiny, s3, bucket).get("task").sha256 == current.sha256


def test_a_missing_bucket_or_server_fails_start_up_clearly(tiny: FrozenModel, s3: S3Server) -> None:
    with pytest.raises(StoreUnavailable, match="does not exist"):
        registry(tiny, s3, "no-such-bucket")
    options = S3Options(endpoint_url="http://127.0.0.1:9", timeout_s=1)
    with pytest.raises(StoreUnavailable, match="head_bucket failed"):
        S3Registry(S3Location("bucket", ""), tiny.spec, options=options).load_all()


def test_compose_profile_replicas_s3() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    profile = {n: s for n, s in services.items() if "replicas-s3" in s.get("profiles", [])}
    replicas = {n: s for n, s in profile.items() if s.get("image") == "softserve:latest"}
    assert len(replicas) == 2
    stores = [n for n, s in profile.items() if str(s.get("image", "")).startswith("minio/minio:")]
    assert len(stores) == 1
    for replica in replicas.values():
        env = replica["environment"]
        assert str(env["SOFTSERVE_PROMPTS"]).startswith("s3://")
        assert env["SOFTSERVE_S3_ENDPOINT_URL"] == f"http://{stores[0]}:9000"
        assert not any(str(v).endswith(":/data/prompts") for v in replica.get("volumes", []))
    lb = next(s for s in profile.values() if "nginx" in str(s.get("image", "")))
    conf = (ROOT / str(lb["volumes"][0]).split(":")[0]).read_text()
    assert all(f"server {name}:8000" in conf for name in replicas)
    assert "docker compose --profile replicas-s3 up" in (ROOT / "README.md").read_text()
