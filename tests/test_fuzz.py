"""Schemathesis against the server's own OpenAPI document: every route, generated inputs;
no 5xx and no status code the document does not list.

Driven through schemathesis' Python API and Hypothesis directly (its pytest plugin does not
support this pytest version)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.api.app import create_app
from app.model import FrozenModel
from app.settings import Settings
from tests.conftest import write_adapter
from tests.live import live


@pytest.fixture(scope="module")
def api(
    tiny: FrozenModel, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[schemathesis.BaseSchema]:
    prompts = tmp_path_factory.mktemp("prompts")
    write_adapter(tiny, prompts, "pt", "prompt", seed=3)
    # A small context keeps generated max_tokens cheap; limits stay as a user would meet them.
    app = create_app(
        Settings(prompts=prompts, max_context=128, max_upload_bytes=64 * 1024), base=tiny
    )
    with live(app) as server:
        yield schemathesis.openapi.from_url(f"{server.url}/openapi.json")


def _operations(schema: schemathesis.BaseSchema) -> list[schemathesis.APIOperation]:
    return [result.ok() for result in schema.get_all_operations()]


def _with_task(case: schemathesis.Case) -> schemathesis.Case:
    if isinstance(case.body, dict):
        case.body["model"] = "pt"
    return case


def test_document_lists_every_route(api: schemathesis.BaseSchema) -> None:
    routes = {f"{op.method.upper()} {op.path}" for op in _operations(api)}
    assert routes == {
        "GET /health",
        "GET /metrics",
        "GET /v1/models",
        "GET /v1/models/{model}",
        "POST /v1/completions",
        "POST /v1/chat/completions",
        "GET /v1/prompts",
        "GET /v1/prompts/{task}",
        "PUT /v1/prompts/{task}",
        "DELETE /v1/prompts/{task}",
        "GET /tokenizer_info",
        "POST /tokenize",
        "POST /detokenize",
    }


def test_fuzz_every_route(api: schemathesis.BaseSchema) -> None:
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import status_code_conformance

    seen: dict[str, set[int]] = {}
    for operation in _operations(api):
        label = f"{operation.method.upper()} {operation.path}"

        strategy = operation.as_strategy()
        if operation.path in ("/v1/completions", "/v1/chat/completions"):
            # Random model names only reach the 404; half the cases name a real task instead.
            strategy = st.one_of(strategy, strategy.map(_with_task))

        @given(case=strategy)
        @settings(
            max_examples=60,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            database=None,
            derandomize=True,
        )
        def check(case: schemathesis.Case) -> None:
            response = case.call_and_validate(
                checks=[not_a_server_error, status_code_conformance], timeout=60
            )
            seen.setdefault(label, set()).add(response.status_code)  # noqa: B023

        check()
    assert len(seen) == 13
    assert all(max(codes) < 500 for codes in seen.values()), seen
