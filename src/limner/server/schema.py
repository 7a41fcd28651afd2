"""The OpenAPI document of the HTTP API, with the request bodies the handlers parse.

Handlers read their bodies themselves (`state.parse_body`: a 400 that names the field, as
Ollama answers), so FastAPI cannot see them; this fills them in from the wire models in
`limner.types`, so that /openapi.json describes what each endpoint takes and schema-based
fuzzers (tests/security/test_schema.py) can send it.
"""

from __future__ import annotations

import re
import warnings
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from limner import types

BODIES: dict[tuple[str, str], type[BaseModel]] = {
    ("/api/generate", "post"): types.GenerateRequest,
    ("/api/chat", "post"): types.ChatRequest,
    ("/api/embed", "post"): types.EmbedRequest,
    ("/api/embeddings", "post"): types.EmbeddingsRequest,
    ("/api/show", "post"): types.ShowRequest,
    ("/api/copy", "post"): types.CopyRequest,
    ("/api/delete", "delete"): types.DeleteRequest,
    ("/api/create", "post"): types.CreateRequest,
    ("/api/pull", "post"): types.PullRequest,
    ("/v1/chat/completions", "post"): types.OpenAIChatRequest,
    ("/v1/embeddings", "post"): types.OpenAIEmbeddingRequest,
    ("/sdapi/v1/txt2img", "post"): types.A1111Txt2ImgRequest,
    ("/sdapi/v1/img2img", "post"): types.A1111Img2ImgRequest,
    ("/sdapi/v1/png-info", "post"): types.A1111PngInfoRequest,
}

# Operations that answer 200 with an empty body, as Ollama's do.
EMPTY_ANSWERS = {("/api/copy", "post"), ("/api/delete", "delete")}

# The JSON answers of the native API, by operation: documented so that a schema-based
# checker can hold each answer to its model (tests/security/test_schema.py).
ANSWERS: dict[tuple[str, str], type[BaseModel]] = {
    ("/api/tags", "get"): types.ListResponse,
    ("/api/ps", "get"): types.ProcessResponse,
    ("/api/show", "post"): types.ShowResponse,
    ("/api/version", "get"): types.VersionResponse,
    ("/api/embed", "post"): types.EmbedResponse,
    ("/api/embeddings", "post"): types.EmbeddingsResponse,
    ("/api/gallery", "get"): types.GalleryResponse,
}
# Every native endpoint's errors: `{"error": "what to fix"}` with a 4xx or 5xx status.
ERROR = {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}}


def openapi(app: FastAPI) -> dict[str, Any]:
    if app.openapi_schema is None:
        with warnings.catch_warnings():  # duplicate operation ids: renamed below
            warnings.simplefilter("ignore", UserWarning)
            document = get_openapi(title=app.title, version=app.version, routes=app.routes)
        components = document.setdefault("components", {}).setdefault("schemas", {})
        for (path, method), model in BODIES.items():
            body = model.model_json_schema(
                by_alias=True, ref_template="#/components/schemas/{model}"
            )
            components.update(body.pop("$defs", {}))
            components[model.__name__] = body
            document["paths"][path][method]["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}},
            }  # fmt: skip
        for (path, method), model in ANSWERS.items():
            answer = model.model_json_schema(
                by_alias=True, ref_template="#/components/schemas/{model}", mode="serialization"
            )
            components.update(answer.pop("$defs", {}))
            components[model.__name__] = answer
            reference = {"$ref": f"#/components/schemas/{model.__name__}"}
            document["paths"][path][method]["responses"]["200"] = {
                "description": model.__name__, "content": {"application/json": {"schema": reference}},
            }  # fmt: skip
        for path, method in EMPTY_ANSWERS:
            document["paths"][path][method]["responses"]["200"] = {"description": "done (no body)"}
        for path, operations in document["paths"].items():
            for operation in operations.values():
                if path.startswith("/api/"):
                    body = {"application/json": {"schema": ERROR}}
                    operation["responses"]["4XX"] = {"description": "what to fix", "content": body}
        for path, operations in document["paths"].items():
            for method, operation in operations.items():  # GET and HEAD share a handler
                words = re.sub(r"\W+", "_", path).strip("_") or "root"
                operation["operationId"] = f"{method}_{words}"
        app.openapi_schema = document
    return app.openapi_schema
