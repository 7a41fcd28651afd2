"""The HTTP API's contract, on a real server on loopback with the fake engine."""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from typing import Any

import httpx
import pytest
from PIL import Image

from helpers import add_fake, picture
from limner.store import Store
from limner.store.store import LOCK


@pytest.fixture
def api(store: Store, server: Any) -> httpx.Client:
    add_fake(store, "fake")
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def lines(response: httpx.Response) -> list[dict[str, Any]]:
    assert response.headers["content-type"] == "application/x-ndjson"
    raw = response.text.split("\n")
    assert raw[-1] == "" and all(raw[:-1]), "NDJSON: one object per line, no blank lines"
    return [json.loads(line) for line in raw[:-1]]


def nothing_written(store: Store, before: set[str]) -> bool:
    """No new blob, and no temporary file (the server's lock on the store is no write)."""
    return store.blobs.digests() == before and all(
        not p.name.startswith(".") for p in store.root.rglob("*") if p.name != LOCK
    )


def test_root_and_version_answer_like_ollama(api: httpx.Client) -> None:
    assert api.get("/").text == "Ollama is running"
    assert api.head("/").status_code == 200
    version = api.get("/api/version").json()["version"]
    assert all(part.isdigit() for part in version.split("."))


def test_chat_streams_ndjson_by_default_and_ends_with_done(api: httpx.Client) -> None:
    chunks = lines(
        api.post(
            "/api/chat",
            json={
                "model": "fake",
                "messages": [{"role": "user", "content": "hi there", "images": [b64(picture())]}],
            },
        )
    )
    assert all(c["message"]["role"] == "assistant" for c in chunks)
    assert [c["done"] for c in chunks] == [False] * (len(chunks) - 1) + [True]
    assert (
        "".join(c["message"]["content"] for c in chunks) == "I see 1 picture(s). You said: hi there"
    )
    final = chunks[-1]
    assert final["done_reason"] == "stop" and final["prompt_eval_count"] == 576 + 2
    assert final["image_tokens"] == 576 and final["eval_count"] == 5
    assert isinstance(final["total_duration"], int) and final["created_at"].endswith("Z")


def test_stream_false_returns_one_aggregated_object(api: httpx.Client) -> None:
    reply = api.post("/api/generate", json={"model": "fake", "prompt": "say it", "stream": False})
    assert reply.headers["content-type"].startswith("application/json")
    body = reply.json()
    assert body["response"] == "I see 0 picture(s). You said: say it" and body["done"] is True


def test_options_stop_and_num_predict_reach_the_engine(api: httpx.Client) -> None:
    body = {"model": "fake", "prompt": "a b c d e", "stream": False}
    short = api.post("/api/generate", json={**body, "options": {"num_predict": 2}}).json()
    assert short["response"] == "I see 0 picture(s). You" and short["done_reason"] == "length"
    stopped = api.post("/api/generate", json={**body, "options": {"stop": [" c"]}}).json()
    assert (
        stopped["response"] == "I see 0 picture(s). You said: a b"
        and stopped["done_reason"] == "stop"
    )


def test_unknown_fields_and_null_options_are_ignored(api: httpx.Client) -> None:
    reply = api.post(
        "/api/generate",
        json={"model": "fake", "prompt": "x", "stream": False, "options": None, "surprise": 1},
    )
    assert reply.status_code == 200
    reply = api.post(
        "/api/generate",
        json={"model": "fake", "prompt": "x", "stream": False, "options": {"mirostat": 2}},
    )
    assert reply.status_code == 200


def test_empty_prompt_loads_and_keep_alive_zero_unloads(api: httpx.Client, server: Any) -> None:
    loaded = api.post("/api/generate", json={"model": "fake"}).json()
    assert loaded["done_reason"] == "load" and loaded["response"] == ""
    assert [m["name"] for m in api.get("/api/ps").json()["models"]] == ["fake:latest"]
    unloaded = api.post("/api/chat", json={"model": "fake", "messages": [], "keep_alive": 0}).json()
    assert unloaded["done_reason"] == "unload" and unloaded["message"] == {
        "role": "assistant",
        "content": "",
    }
    assert api.get("/api/ps").json() == {"models": []}


@pytest.mark.parametrize(
    ("keep_alive", "seconds"), [("5m", 300), ("1h30m", 5400), (120, 120), (1.5, 1.5)]
)
def test_keep_alive_takes_numbers_and_go_durations(
    api: httpx.Client, keep_alive: Any, seconds: float
) -> None:
    api.post("/api/generate", json={"model": "fake", "keep_alive": keep_alive})
    [model] = api.get("/api/ps").json()["models"]
    expires = __import__("datetime").datetime.fromisoformat(model["expires_at"]).timestamp()
    assert abs(expires - time.time() - seconds) < 3


def test_negative_keep_alive_is_forever(api: httpx.Client) -> None:
    api.post("/api/generate", json={"model": "fake", "keep_alive": -1})
    [model] = api.get("/api/ps").json()["models"]
    assert model["expires_at"].startswith("2")
    assert int(model["expires_at"][:4]) > 2200


# fmt: off
BAD_REQUESTS = [
    ("POST", "/api/chat", b"", 400, "missing request body"),
    ("POST", "/api/chat", b"{not json", 400, "invalid JSON"),
    ("POST", "/api/chat", b"[1, 2]", 400, "JSON object"),
    ("POST", "/api/chat", {"model": "fake", "messages": "hello"}, 400, "messages"),
    ("POST", "/api/chat", {"model": "fake", "messages": [{"content": "no role"}]}, 400, "role"),
    ("POST", "/api/chat", {"messages": []}, 400, "model is required"),
    ("POST", "/api/generate", {"model": "fake", "prompt": "x", "images": ["data:image/png;base64,AAAA"]}, 400, "base64"),
    ("POST", "/api/generate", {"model": "fake", "prompt": "x", "images": [b64(b"just some text, not a picture")]}, 400, "not a picture"),
    ("POST", "/api/generate", {"model": "fake", "prompt": "x", "images": [b64(picture()[:60])]}, 400, "truncated"),
    ("POST", "/api/generate", {"model": "fake", "prompt": "x", "images": [b64(picture("GIF"))]}, 400, "GIF"),
    ("POST", "/api/generate", {"model": "fake", "prompt": "x", "options": {"temperature": "hot"}}, 400, 'option "temperature"'),
    ("POST", "/api/generate", {"model": "fake", "prompt": "x", "format": "yaml"}, 400, "invalid format"),
    ("POST", "/api/generate", {"model": "fake", "prompt": "x", "keep_alive": "3600"}, 400, "missing unit"),
    ("POST", "/api/generate", {"model": "nothere", "prompt": "x"}, 404, "model 'nothere' not found"),
    ("POST", "/api/generate", {"model": "../../etc/passwd", "prompt": "x"}, 400, "invalid model name"),
    ("POST", "/api/show", {"model": "nothere"}, 404, "model 'nothere:latest' not found"),
    ("POST", "/api/copy", {"source": "nothere", "destination": "x"}, 404, 'model "nothere" not found'),
    ("POST", "/api/copy", {"source": "fake", "destination": "../x"}, 400, 'destination "../x" is invalid'),
    ("DELETE", "/api/delete", {"model": "nothere"}, 404, "model 'nothere' not found"),
    ("POST", "/api/create", {"model": "m"}, 400, "neither 'from' or 'files'"),
    ("POST", "/api/create", {"model": "m", "files": {"../x": "sha256:" + "0" * 64}}, 400, "relative"),
    ("POST", "/api/create", {"model": "m", "files": {"config.json": "sha256:zz"}}, 400, "invalid digest"),
    ("HEAD", "/api/blobs/sha256:nothex", None, 400, None),
    ("POST", "/api/blobs/sha256:" + "0" * 64, b"other bytes", 400, "digest mismatch"),
    ("GET", "/api/nothing", None, 404, "404 page not found"),
    ("GET", "/api/chat", None, 405, "405 method not allowed"),
]
# fmt: on


@pytest.mark.parametrize(("method", "path", "body", "status", "message"), BAD_REQUESTS)
def test_bad_input_gets_a_4xx_json_error_and_changes_nothing(
    api: httpx.Client,
    store: Store,
    method: str,
    path: str,
    body: Any,
    status: int,
    message: str | None,
) -> None:
    before = store.blobs.digests()
    kwargs = (
        {"content": body} if isinstance(body, bytes) else {"json": body} if body is not None else {}
    )
    reply = api.request(method, path, **kwargs)
    assert reply.status_code == status
    if method != "HEAD":
        assert message in reply.json()["error"]
        assert "Traceback" not in reply.text
    assert nothing_written(store, before)
    assert (
        api.post(
            "/api/generate", json={"model": "fake", "prompt": "still ok", "stream": False}
        ).status_code
        == 200
    )


def test_a_decompression_bomb_is_refused_before_decoding(
    api: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LIMNER_MAX_IMAGE_PIXELS", "1000000")
    buffer = io.BytesIO()
    Image.new("1", (5000, 5000)).save(buffer, format="PNG")  # ~3 KB on the wire, 25 M pixels
    reply = api.post(
        "/api/generate", json={"model": "fake", "prompt": "x", "images": [b64(buffer.getvalue())]}
    )
    assert reply.status_code == 413 and "LIMNER_MAX_IMAGE_PIXELS" in reply.json()["error"]


def test_a_body_over_the_limit_gets_413(
    store: Store, make_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LIMNER_MAX_BODY_BYTES", "1000")
    add_fake(store, "fake")
    server = make_server()
    reply = httpx.post(f"{server.url}/api/generate", json={"model": "fake", "prompt": "x" * 5000})
    assert reply.status_code == 413 and "LIMNER_MAX_BODY_BYTES" in reply.json()["error"]

    def chunked() -> Any:
        yield json.dumps({"model": "fake", "prompt": "y" * 5000}).encode()

    reply = httpx.post(f"{server.url}/api/generate", content=chunked())
    assert reply.status_code == 413


def test_a_full_queue_answers_503(store: Store, make_server: Any) -> None:
    add_fake(store, "slow", token_delay=0.1)
    server = make_server(max_queue=1)
    url = f"{server.url}/api/generate"
    with httpx.stream("POST", url, json={"model": "slow", "prompt": "SLOW"}, timeout=30) as first:
        lines_ = first.iter_lines()  # kept: a collected iterator closes the connection
        next(lines_)  # the runner is busy with a 10 s answer
        queued = threading.Thread(
            target=httpx.post,
            args=(url,),
            kwargs={"json": {"model": "slow", "prompt": "q"}, "timeout": 30},
        )
        queued.start()
        wait_until(lambda: server.scheduler.waiting == 1)
        reply = httpx.post(url, json={"model": "slow", "prompt": "x", "stream": False})
    assert reply.status_code == 503
    assert (
        reply.json()["error"] == "server busy, please try again.  maximum pending requests exceeded"
    )
    queued.join(30)


def wait_until(condition: Any, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def test_a_client_that_disconnects_stops_its_generation(store: Store, make_server: Any) -> None:
    add_fake(store, "slow", token_delay=0.2)
    server = make_server()
    with httpx.stream(
        "POST", f"{server.url}/api/generate", json={"model": "slow", "prompt": "SLOW"}
    ) as stream:
        next(stream.iter_lines())
    started = time.monotonic()
    reply = httpx.post(
        f"{server.url}/api/generate",
        json={"model": "slow", "prompt": "after", "stream": False},
        timeout=30,
    )
    assert reply.json()["response"].endswith("after")
    assert time.monotonic() - started < 3  # the 100-word answer (20 s) was stopped


def test_a_runner_crash_mid_stream_is_an_error_line_then_the_next_request_works(
    api: httpx.Client,
) -> None:
    chunks = lines(api.post("/api/generate", json={"model": "fake", "prompt": "CRASH now"}))
    assert chunks[0]["response"] and "error" in chunks[-1]
    assert "stopped unexpectedly" in chunks[-1]["error"]
    reply = api.post("/api/generate", json={"model": "fake", "prompt": "again", "stream": False})
    assert reply.json()["response"].endswith("again")


def test_blob_upload_then_create_registers_a_model(api: httpx.Client, store: Store) -> None:
    config = json.dumps({"model_type": "limner-fake", "v": 2}).encode()
    digest = "sha256:" + __import__("hashlib").sha256(config).hexdigest()
    assert api.head(f"/api/blobs/{digest}").status_code == 404
    assert api.post(f"/api/blobs/{digest}", content=config).status_code == 201
    assert api.post(f"/api/blobs/{digest}", content=config).status_code == 200
    assert api.head(f"/api/blobs/{digest}").status_code == 200
    progress = lines(
        api.post(
            "/api/create",
            json={
                "model": "made",
                "files": {"config.json": digest},
                "system": "Be kind.",
                "parameters": {"num_predict": 3},
            },
        )
    )
    assert progress[-1] == {"status": "success"}
    shown = api.post("/api/show", json={"model": "made"}).json()
    assert shown["system"] == "Be kind." and "num_predict" in shown["parameters"]
    assert shown["model_info"]["general.architecture"] == "fake"
    reply = api.post(
        "/api/generate", json={"model": "made", "prompt": "a b c d", "stream": False}
    ).json()
    assert reply["eval_count"] == 3


def test_copy_and_delete(api: httpx.Client) -> None:
    assert (
        api.post("/api/copy", json={"source": "fake", "destination": "other:v1"}).status_code == 200
    )
    names = [m["name"] for m in api.get("/api/tags").json()["models"]]
    assert sorted(names) == ["fake:latest", "other:v1"]
    assert api.request("DELETE", "/api/delete", json={"model": "fake"}).status_code == 200
    assert [m["name"] for m in api.get("/api/tags").json()["models"]] == ["other:v1"]
    assert (
        api.post(
            "/api/generate", json={"model": "other:v1", "prompt": "x", "stream": False}
        ).status_code
        == 200
    )


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [("http://localhost:3000", True), ("https://127.0.0.1", True), ("app://obsidian.md", True),
     ("vscode-webview://abc", True), ("https://evil.example", False), ("http://localhost.evil.example", False),
     ("http://localhost:80.evil.example", False)],  # a port is digits, not the rest of a name
)  # fmt: skip
def test_browser_origins_follow_ollamas_allow_list(
    api: httpx.Client, origin: str, allowed: bool
) -> None:
    reply = api.get("/api/tags", headers={"Origin": origin})
    assert reply.status_code == (200 if allowed else 403)
    if allowed:
        assert reply.headers["access-control-allow-origin"] == origin


def test_extra_origins_come_from_limner_origins(
    store: Store, make_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LIMNER_ORIGINS", "https://*.mysite.org,chrome-extension://*")
    server = make_server()
    for origin in ("https://app.mysite.org", "chrome-extension://abcdef"):
        assert httpx.get(f"{server.url}/api/tags", headers={"Origin": origin}).status_code == 200
    preflight = httpx.options(
        f"{server.url}/api/chat",
        headers={"Origin": "https://app.mysite.org", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "content-type"},
    )  # fmt: skip
    assert preflight.status_code == 200
