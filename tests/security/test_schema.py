"""Schemathesis against limner's own OpenAPI document (docs/reliability.md §6 IN-02): requests
generated from /openapi.json, both valid ones (positive) and ones that break the schema
(negative), sent to the real app in-process over ASGI with fake models stored. No answer
may be a 5xx, and a request that breaks the schema must not succeed.

/api/pull is left out: a valid random name would go to the default registry, on the
network (pulls are covered by test_inputs.py, test_outbound.py and tests/test_registry.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import response_schema_conformance
from schemathesis.core.failures import FailureGroup
from schemathesis.generation import GenerationMode

from helpers import add_fake, add_fake_draw
from limner.scheduler import Scheduler
from limner.server.app import create_app
from limner.store import Store

LEFT_OUT = {("POST", "/api/pull")}
OPERATIONS = [
    ("GET", "/"), ("HEAD", "/"), ("GET", "/api/version"), ("HEAD", "/api/version"),
    ("GET", "/api/tags"), ("HEAD", "/api/tags"),
    ("GET", "/api/ps"), ("POST", "/api/generate"), ("POST", "/api/chat"), ("POST", "/api/show"),
    ("POST", "/api/embed"), ("POST", "/api/embeddings"), ("POST", "/v1/embeddings"),
    ("POST", "/api/copy"), ("DELETE", "/api/delete"), ("POST", "/api/create"),
    ("HEAD", "/api/blobs/{digest}"), ("POST", "/api/blobs/{digest}"),
    ("GET", "/api/gallery"), ("GET", "/api/gallery/{picture_id}"),
    ("HEAD", "/api/gallery/{picture_id}"), ("DELETE", "/api/gallery/{picture_id}"),
    ("GET", "/api/gallery/{picture_id}/thumbnail"), ("HEAD", "/api/gallery/{picture_id}/thumbnail"),
    ("POST", "/v1/images/generations"), ("POST", "/v1/images/edits"),
    ("POST", "/v1/chat/completions"), ("GET", "/v1/models"), ("GET", "/v1/models/{model}"),
    ("POST", "/sdapi/v1/txt2img"), ("POST", "/sdapi/v1/img2img"), ("GET", "/sdapi/v1/sd-models"),
    ("GET", "/sdapi/v1/samplers"), ("GET", "/sdapi/v1/schedulers"), ("GET", "/sdapi/v1/loras"),
    ("GET", "/sdapi/v1/upscalers"), ("GET", "/sdapi/v1/sd-vae"), ("GET", "/sdapi/v1/prompt-styles"),
    ("GET", "/sdapi/v1/hypernetworks"), ("GET", "/sdapi/v1/face-restorers"),
    ("GET", "/sdapi/v1/options"), ("POST", "/sdapi/v1/options"), ("GET", "/sdapi/v1/progress"),
    ("POST", "/sdapi/v1/interrupt"), ("POST", "/sdapi/v1/skip"),
    ("GET", "/sdapi/v1/scripts"), ("GET", "/sdapi/v1/script-info"),
    ("GET", "/sdapi/v1/extensions"), ("GET", "/sdapi/v1/embeddings"),
    ("GET", "/sdapi/v1/memory"), ("GET", "/sdapi/v1/cmd-flags"), ("POST", "/sdapi/v1/png-info"),
]  # fmt: skip
# The operations whose schema (a JSON body) can be broken: the negative phase.
WITH_BODIES = [
    ("POST", "/api/generate"), ("POST", "/api/chat"), ("POST", "/api/show"), ("POST", "/api/copy"),
    ("DELETE", "/api/delete"), ("POST", "/api/create"), ("POST", "/v1/chat/completions"),
    ("POST", "/sdapi/v1/txt2img"), ("POST", "/sdapi/v1/img2img"),
    ("POST", "/api/embed"), ("POST", "/api/embeddings"), ("POST", "/v1/embeddings"),
    ("POST", "/sdapi/v1/png-info"),
]  # fmt: skip


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    root: Path = tmp_path_factory.mktemp("schema")
    store = Store(root / "models")
    add_fake(store, "chat", token_delay=0.0)
    add_fake_draw(store, "draw")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("LIMNER_ALLOWED_HOSTS", "testserver")  # the ASGI client's Host
        app = create_app(store, Scheduler(store, keep_alive=300.0))
    yield schemathesis.openapi.from_asgi("/openapi.json", app)


def test_the_schema_documents_every_route_and_the_request_bodies(api: Any) -> None:
    documented = {(op.ok().method.upper(), op.ok().path) for op in api.get_all_operations()}
    assert documented == set(OPERATIONS) | LEFT_OUT
    body = api.raw_schema["paths"]["/api/chat"]["post"]["requestBody"]
    assert body["content"]["application/json"]["schema"]["$ref"].endswith("/ChatRequest")
    answer = api.raw_schema["paths"]["/api/tags"]["get"]["responses"]["200"]
    assert answer["content"]["application/json"]["schema"]["$ref"].endswith("/ListResponse")


def test_the_conformance_check_catches_an_answer_that_breaks_its_model(api: Any) -> None:
    """The check that holds answers to their models can fail: a /api/tags answer whose
    `models` is not a list of models is caught."""
    case = api["/api/tags"]["GET"].Case()
    wrong = httpx.Response(
        200, json={"models": "none"}, request=httpx.Request("GET", "http://x/api/tags")
    )
    wrong.elapsed = timedelta(0)  # as if it had been sent
    with pytest.raises(FailureGroup) as caught:
        case.validate_response(wrong, checks=[response_schema_conformance])
    assert "Response violates schema" in str(caught.value.exceptions[0])


def _run(api: Any, method: str, path: str, mode: GenerationMode, examples: int) -> list[int]:
    """Send `examples` generated requests; the statuses. Every one must be below 500, and
    one that breaks the schema must not succeed."""
    operation = api[path][method]
    statuses: list[int] = []

    @settings(max_examples=examples, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        response = case.call()
        statuses.append(response.status_code)
        assert response.status_code < 500, (case.body, response.text[:300])
        # Documented answers (the native API's JSON models and its error shape) must match.
        case.validate_response(response, checks=[response_schema_conformance])
        if case.meta.generation.mode is GenerationMode.NEGATIVE:
            assert not 200 <= response.status_code < 300, (case.body, response.text[:300])

    run()
    return statuses


@pytest.mark.parametrize(("method", "path"), OPERATIONS)
def test_valid_generated_requests_never_get_a_5xx(api: Any, method: str, path: str) -> None:
    assert _run(api, method, path, GenerationMode.POSITIVE, examples=25)


@pytest.mark.parametrize(("method", "path"), WITH_BODIES)
def test_requests_that_break_the_schema_get_a_4xx(api: Any, method: str, path: str) -> None:
    statuses = _run(api, method, path, GenerationMode.NEGATIVE, examples=50)
    assert all(400 <= status < 500 for status in statuses), statuses


@pytest.mark.full  # `make test-full-security`: minutes; `make test` runs 25 per operation
@pytest.mark.parametrize(("method", "path"), OPERATIONS)
def test_valid_generated_requests_never_get_a_5xx_200_examples(
    api: Any, method: str, path: str
) -> None:
    assert _run(api, method, path, GenerationMode.POSITIVE, examples=200)


@pytest.mark.full  # `make test-full-security`: minutes; `make test` runs 50 per operation
@pytest.mark.parametrize(("method", "path"), WITH_BODIES)
def test_requests_that_break_the_schema_get_a_4xx_500_examples(
    api: Any, method: str, path: str
) -> None:
    statuses = _run(api, method, path, GenerationMode.NEGATIVE, examples=500)
    assert all(400 <= status < 500 for status in statuses), statuses
