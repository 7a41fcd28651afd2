"""The official `ollama` package, unchanged, against `limner serve` running the tiny LLaVA."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import ollama
import pytest

import limner
from helpers import free_port, picture
from limner.types import GenerateResponse

pytestmark = pytest.mark.slow


class ServeProcess:
    def __init__(self, models: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "LIMNER_MODELS": str(models), "LIMNER_HOST": f"127.0.0.1:{self.port}"}
        self.process = subprocess.Popen([sys.executable, "-m", "limner", "serve"], env=env)
        client = limner.Client(self.url)
        deadline = time.monotonic() + 30
        while not client.is_running():
            assert time.monotonic() < deadline and self.process.poll() is None, (
                "server did not start"
            )
            time.sleep(0.1)

    def children(self) -> list[int]:
        found = []
        for task in Path(f"/proc/{self.process.pid}/task").iterdir():
            found += [int(p) for p in (task / "children").read_text().split()]
        return found

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(30)


def loaded_libraries(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    from limner.tiny import write_tiny_llava

    root = tmp_path_factory.mktemp("serve")
    folder = write_tiny_llava(root / "tiny", seed=0)
    server = ServeProcess(root / "models")
    client = limner.Client(server.url)
    files = {
        str(p.relative_to(folder)): client.create_blob(p) for p in folder.rglob("*") if p.is_file()
    }
    client.create("tiny", files=files)
    yield server
    server.stop()


@pytest.fixture
def client(serve: ServeProcess) -> ollama.Client:
    return ollama.Client(host=serve.url)


def test_list_and_show_validate_as_ollama_types(client: ollama.Client) -> None:
    models = client.list().models
    assert [m.model for m in models] == ["tiny:latest"]
    assert models[0].details is not None and models[0].details.family == "llava"
    shown = client.show("tiny")
    assert "vision" in (shown.capabilities or [])
    assert shown.modelinfo is not None and shown.modelinfo["llava.vision.image_tokens"] == 576
    assert shown.modelinfo["llava.context_length"] == 32768


def test_chat_with_a_picture_streams_and_counts_576_picture_tokens(
    client: ollama.Client, tmp_path: Path
) -> None:
    path = tmp_path / "red.png"
    path.write_bytes(picture(size=(336, 336)))
    messages = [{"role": "user", "content": "What colour is this?", "images": [str(path)]}]
    chunks = list(
        client.chat("tiny", messages=messages, stream=True, options={"num_predict": 8, "seed": 1})
    )
    assert len(chunks) > 2 and chunks[-1].done and chunks[-1].done_reason in ("stop", "length")
    assert all(isinstance(c, ollama.ChatResponse) for c in chunks)
    assert chunks[-1].prompt_eval_count is not None and chunks[-1].prompt_eval_count > 576
    whole = client.chat(
        "tiny", messages=messages, options={"num_predict": 8, "seed": 1, "temperature": 0}
    )
    again = client.chat(
        "tiny", messages=messages, options={"num_predict": 8, "seed": 1, "temperature": 0}
    )
    assert whole.message.content == again.message.content  # greedy with a seed: reproducible
    assert whole.eval_count == 8 or whole.done_reason == "stop"


def test_generate_with_two_pictures(client: ollama.Client) -> None:
    two = client.generate(
        "tiny", "Describe.", images=[picture(), picture("JPEG")], options={"num_predict": 4}
    )
    assert two.done and two.eval_count == 4
    sdk = limner.Client(str(client._client.base_url))

    def prompt(pictures: int) -> int:
        reply = sdk.generate("tiny", "Describe.", images=[picture()] * pictures,
                             options={"num_predict": 1})  # fmt: skip
        assert isinstance(reply, GenerateResponse) and reply.image_tokens == 576 * pictures
        # The whole prompt: evaluated now, or reused from the cache of the turn before.
        return (reply.prompt_eval_count or 0) + (reply.prompt_cached_count or 0)

    # 576 picture tokens plus the separator the chat template puts after each picture
    assert 576 < prompt(2) - prompt(1) <= 578
    streamed = list(
        client.generate(
            "tiny", "Describe.", images=[picture("WEBP")], stream=True, options={"num_predict": 4}
        )
    )
    assert streamed[-1].done and streamed[-1].eval_count is not None


def test_ps_copy_and_delete(client: ollama.Client) -> None:
    client.generate("tiny", "")
    running = client.ps().models
    assert [m.model for m in running] == ["tiny:latest"] and running[0].expires_at is not None
    assert client.copy("tiny", "tiny-copy").status == "success"
    assert sorted(m.model for m in client.list().models) == ["tiny-copy:latest", "tiny:latest"]
    assert client.delete("tiny-copy").status == "success"
    with pytest.raises(ollama.ResponseError) as error:
        client.show("tiny-copy")
    assert error.value.status_code == 404


def test_errors_reach_the_client_as_response_errors(client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as error:
        client.chat("nothere", messages=[{"role": "user", "content": "hi"}])
    assert error.value.status_code == 404 and error.value.error == "model 'nothere' not found"


def test_the_server_process_never_imports_torch(client: ollama.Client, serve: ServeProcess) -> None:
    client.generate(
        "tiny", "Describe.", images=[picture()], options={"num_predict": 2}, keep_alive="1m"
    )
    runners = serve.children()
    assert runners, "the model should be loaded in a runner process"
    assert any("libtorch" in loaded_libraries(pid) for pid in runners)  # the check can see torch
    assert "libtorch" not in loaded_libraries(serve.process.pid)
    assert "transformers" not in loaded_libraries(serve.process.pid)


@pytest.mark.anyio
async def test_the_async_client_works_too(serve: ServeProcess) -> None:
    client = ollama.AsyncClient(host=serve.url)
    reply = await client.generate("tiny", "hi", options={"num_predict": 3})
    assert reply.done and reply.eval_count is not None


def test_sigterm_stops_every_runner(tmp_path: Path) -> None:
    from limner.tiny import write_tiny_llava

    folder = write_tiny_llava(tmp_path / "tiny", seed=0)
    server = ServeProcess(tmp_path / "models")
    client = limner.Client(server.url)
    client.create("t", files={p.name: client.create_blob(p) for p in folder.iterdir()})
    client.generate("t", "", keep_alive=-1)
    runners = server.children()
    assert runners
    assert server.stop() in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once shut down
    time.sleep(0.5)
    for pid in runners:
        assert (
            not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
        )


def test_a_killed_server_leaves_no_orphan_runner(tmp_path: Path) -> None:
    server = ServeProcess(tmp_path / "models")
    from helpers import add_fake
    from limner.store import Store

    add_fake(Store(tmp_path / "models"), "fake")
    limner.Client(server.url).generate("fake", "", keep_alive=-1)
    runners = server.children()
    server.process.kill()
    server.process.wait()
    deadline = time.monotonic() + 10
    while any(Path(f"/proc/{pid}").exists() for pid in runners):
        assert time.monotonic() < deadline, "a runner outlived its server"
        time.sleep(0.1)
