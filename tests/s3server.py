"""A real S3 API server for the tests: moto's server, in its own process on a loopback port.

    python -m tests.s3server PORT

Softserve reaches it over HTTP through boto3, exactly as it would reach a user's bucket. Two
things are added in front of moto's WSGI app:
- Mutating requests are serialized. S3 applies a conditional write (If-Match / If-None-Match)
  atomically; moto's threaded server checks the condition and then writes, so without this two
  racing writers could both pass the check, which S3 itself never allows.
- Faults a test can switch on at run time with `POST /_faults` (JSON): `slow` (a key substring)
  and `slow_s` delay PUTs of matching keys, so two writers surely overlap; `no_conditional`
  answers conditional PUTs with 501 NotImplemented, like servers without conditional writes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.live import free_port

ROOT = Path(__file__).resolve().parent.parent
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "softserve-test",
    "AWS_SECRET_ACCESS_KEY": "softserve-test-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
    # No user's profile or config file may leak into a test.
    "AWS_CONFIG_FILE": "/nonexistent/softserve-test",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/softserve-test",
}
NOT_IMPLEMENTED = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>NotImplemented</Code>'
    b"<Message>conditional writes are not implemented</Message></Error>"
)

Wsgi = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class Faulty:
    """WSGI middleware around moto: serialized writes, and switchable faults."""

    def __init__(self, app: Wsgi) -> None:
        self.app = app
        self.writes = threading.Lock()
        self.faults: dict[str, Any] = {}

    def __call__(self, environ: dict[str, Any], start: Callable[..., Any]) -> Iterable[bytes]:
        method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO", "")
        if path == "/_faults" and method == "POST":
            size = int(environ.get("CONTENT_LENGTH") or 0)
            self.faults = json.loads(environ["wsgi.input"].read(size) or b"{}")
            start("200 OK", [("Content-Type", "application/json")])
            return [b"{}"]
        if method == "PUT":
            conditional = "HTTP_IF_MATCH" in environ or "HTTP_IF_NONE_MATCH" in environ
            if conditional and self.faults.get("no_conditional"):
                start("501 Not Implemented", [("Content-Type", "application/xml")])
                return [NOT_IMPLEMENTED]
            slow = self.faults.get("slow")
            if slow and slow in path:
                time.sleep(float(self.faults.get("slow_s", 0.5)))
        if method in ("PUT", "POST", "DELETE"):
            with self.writes:
                return list(self.app(environ, start))
        return self.app(environ, start)


def main() -> None:
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import make_server

    app = Faulty(DomainDispatcherApplication(create_backend_app))
    server = make_server(
        "127.0.0.1", int(sys.argv[1]), app, threaded=True, request_handler=MotoRequestHandler
    )
    server.serve_forever()


class S3Server:
    def __init__(self, endpoint: str) -> None:
        import boto3

        self.endpoint = endpoint
        session = boto3.session.Session(
            aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            region_name=CREDENTIALS["AWS_DEFAULT_REGION"],
        )
        self._client = session.client("s3", endpoint_url=endpoint)

    def client(self) -> Any:
        """A plain boto3 client, for the test's own reads and writes of the bucket."""
        return self._client

    def bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name

    def faults(self, **faults: object) -> None:
        httpx.post(f"{self.endpoint}/_faults", json=faults, timeout=5).raise_for_status()

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        client = self.client()
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return sorted(o["Key"] for page in pages for o in page.get("Contents", ()))


@contextmanager
def s3_server() -> Iterator[S3Server]:
    """Start the server process, wait until it answers, and kill it at the end."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.s3server", str(port)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **CREDENTIALS},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError("the S3 test server exited during start-up")
            try:
                httpx.get(f"{endpoint}/", timeout=1)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise TimeoutError("the S3 test server did not start") from None
                time.sleep(0.05)
        yield S3Server(endpoint)
    finally:
        proc.kill()
        proc.wait(10)


@pytest.fixture(scope="module")
def s3_for_module() -> Iterator[S3Server]:
    """The server for one test module, with the test credentials in this process's environment
    (boto3 reads them from there, as it would in production). Use as `s3 = s3_for_module`."""
    with pytest.MonkeyPatch.context() as mp:
        for key, value in CREDENTIALS.items():
            mp.setenv(key, value)
        with s3_server() as server:
            yield server


if __name__ == "__main__":
    main()
