"""The SDK against a real server on loopback (fake engine at the seam)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from PIL import Image

import limner
from helpers import add_fake, free_port, picture
from limner.store import Store
from limner.types import ChatResponse, GenerateResponse


@pytest.fixture
def client(store: Store, server: Any) -> limner.Client:
    add_fake(store, "fake")
    return limner.Client(server.url)


def test_pictures_may_be_paths_bytes_or_pil_images(client: limner.Client, tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    path.write_bytes(picture())
    images: list[Any] = [path, str(path), picture("JPEG"), Image.new("RGB", (8, 8), "blue")]
    reply = client.generate("fake", "count", images=images)
    assert isinstance(reply, GenerateResponse)
    assert reply.response.startswith("I see 4 picture(s).") and reply.image_tokens == 4 * 576


def test_a_missing_picture_file_is_an_error_before_sending(client: limner.Client) -> None:
    with pytest.raises(limner.InvalidRequest, match="does not exist"):
        client.generate("fake", "x", images=["nothere.png"])


def test_streaming_yields_typed_chunks_as_they_come(client: limner.Client) -> None:
    chunks = list(
        client.chat(
            "fake", [{"role": "user", "content": "a b", "images": [picture()]}], stream=True
        )
    )
    assert all(isinstance(c, ChatResponse) for c in chunks)
    assert "".join(c.message.content for c in chunks) == "I see 1 picture(s). You said: a b"
    assert chunks[-1].done and not any(c.done for c in chunks[:-1])


def test_errors_are_raised_as_the_exception_tree(client: limner.Client) -> None:
    with pytest.raises(limner.NotFound, match="model 'nothere' not found"):
        client.generate("nothere", "x")
    with pytest.raises(limner.InvalidRequest, match="invalid model name"):
        list(client.generate("../up", "x", stream=True))
    with pytest.raises(limner.LimnerError, match="stopped unexpectedly"):
        list(client.generate("fake", "CRASH", stream=True))


def test_no_server_is_a_connect_error_that_says_what_to_do() -> None:
    client = limner.Client(f"127.0.0.1:{free_port()}")
    with pytest.raises(limner.ConnectError, match="limner serve"):
        client.list()
    assert client.is_running() is False


def test_the_host_comes_from_limner_host(
    monkeypatch: pytest.MonkeyPatch, client: limner.Client
) -> None:
    monkeypatch.setenv("LIMNER_HOST", client.host.removeprefix("http://"))
    assert limner.Client().list().models[0].model == "fake:latest"


def test_model_management_methods(client: limner.Client, tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text('{"model_type": "limner-fake", "v": 3}')
    digest = client.create_blob(config)
    assert client.create_blob(config) == digest  # second upload skipped
    assert client.create("made", files={"config.json": digest}).status == "success"
    client.copy("made", "made2")
    assert {m.model for m in client.list().models} == {"fake:latest", "made:latest", "made2:latest"}
    assert client.show("made2").model_info == {
        "general.architecture": "fake",
        "fake.context_length": 4096,
    }
    client.delete("made2")
    client.generate("made", "")
    assert [m.model for m in client.ps().models] == ["made:latest"]
    assert client.version() == limner.Client(client.host).version()


@pytest.mark.anyio
async def test_the_async_client_streams_too(client: limner.Client) -> None:
    async with limner.AsyncClient(client.host) as aclient:
        stream = await aclient.generate("fake", "x y", stream=True)
        chunks = [chunk async for chunk in stream]  # type: ignore[union-attr]
        assert "".join(c.response for c in chunks) == "I see 0 picture(s). You said: x y"
        with pytest.raises(limner.NotFound):
            await aclient.chat("nothere", [{"role": "user", "content": "x"}])
        assert (await aclient.list()).models[0].model == "fake:latest"


@pytest.mark.anyio
async def test_the_async_client_uploads_and_creates_as_the_client_does(
    client: limner.Client, tmp_path: Path
) -> None:
    config = tmp_path / "config.json"
    config.write_bytes(b'{"model_type": "limner-fake", "v": 4}' + b" " * (3 << 20))  # 3 chunks
    async with limner.AsyncClient(client.host) as aclient:
        assert await aclient.is_running()
        digest = await aclient.create_blob(config)
        assert digest == client.create_blob(config)  # the same blob, already there
        steps = await aclient.create("made-async", files={"config.json": digest}, stream=True)
        statuses = [step.status async for step in steps]  # type: ignore[union-attr]
        assert statuses[-1] == "success"
        assert (await aclient.show("made-async")).details.format == "fake"
    async with limner.AsyncClient(f"127.0.0.1:{free_port()}") as nobody:
        assert not await nobody.is_running()
