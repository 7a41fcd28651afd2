"""The runner protocol: every message survives the line it travels as, a line that is not
the protocol's is an error that says why, and a runner that writes one is stopped."""

from __future__ import annotations

import asyncio
import errno
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from limner import protocol
from limner import runner as runner_module
from limner.engines import (
    Done,
    ImageRequest,
    ImageResult,
    LoadOptions,
    Message,
    Options,
    Piece,
    Progress,
)
from limner.engines.training import (
    TrainCheckpoint,
    TrainDone,
    TrainProgress,
    TrainRequest,
    TrainValidation,
)
from limner.errors import ProtocolError, RunnerFailed
from limner.protocol import (
    Cancel,
    Chat,
    Draw,
    Error,
    Finish,
    Load,
    LoadError,
    Ready,
    Train,
)
from limner.runner import RunnerProcess

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256))

EVERY_MESSAGE: list[Any] = [
    Load("gguf", Path("/models/x"), LoadOptions(num_ctx=4096, adapter_weights={"a.safetensors": 0.5})),
    Chat([Message("system", "be brief"), Message("user", "what is it?", [PNG, PNG])],
         Options(temperature=0.0, stop=["\n"], format="json", seed=7)),
    Draw(ImageRequest("a red square", width=64, height=64, image=PNG, mask=PNG,
                      style_images=[PNG], loras={"/blobs/l": 0.8}, guidance_scale=None,
                      metadata={"model": "sd"})),
    Train({"0.png": Path("/blobs/a")}, TrainRequest(steps=3, alpha=None), Path("/out"),
          captions={"0.png": "a red square"}),
    Cancel(), Finish(),
    Ready(memory=1 << 30, load_duration=12, vram=0, concurrency=2),
    LoadError(400, "not a model"), Error(499, "request canceled"),
    Piece("héllo \"quoted\"\n"), Piece(""),
    Done("length", 10, 5, image_tokens=576, truncated={"messages": 2, "images": 1}),
    Progress(3, 20), Progress(4, 20, preview=PNG),
    ImageResult(PNG, {"seed": 1, "steps": 20, "loras": None}),
    TrainProgress(1, 3, 0.25, 1e-4, 9.5), TrainCheckpoint(2, Path("/out/checkpoint-2")),
    TrainValidation(2, PNG), TrainDone(3, 0.125, Path("/out/x.safetensors"), {"rank": 4}),
]  # fmt: skip


@pytest.mark.parametrize("message", EVERY_MESSAGE, ids=lambda m: type(m).__name__)
def test_every_message_comes_back_as_it_was_sent(message: Any) -> None:
    line = protocol.encode(message, 41)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert protocol.decode(line) == (41, message)


def test_pictures_travel_as_base64_and_paths_as_text() -> None:
    body = json.loads(protocol.encode(Draw(ImageRequest("x", image=PNG))))
    assert body["kind"] == "draw" and isinstance(body["request"]["image"], str)
    body = json.loads(protocol.encode(TrainCheckpoint(1, Path("/out/c"))))
    assert body["path"] == "/out/c"


@pytest.mark.parametrize(
    ("line", "says"),
    [
        (b"not json", "not a JSON line"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"kind": "telepathy", "id": 1}', "unknown message kind 'telepathy'"),
        (b'{"id": 1, "text": "no kind"}', "unknown message kind None"),
        (b'{"kind": "done", "id": 1, "done_reason": "stop"}', "missing its field 'prompt_eval_count'"),
        (b'{"kind": "progress", "id": 1, "completed": "3", "total": 20}', "should be int"),
        (b'{"kind": "progress", "id": 1, "completed": 3, "total": 20, "extra": 1}', "unknown fields: extra"),
        (b'{"kind": "image", "id": 1, "png": "***", "parameters": {}}', "not base64"),
        (b'{"kind": "piece", "id": "7", "text": "x"}', "id that is not a number"),
        (b'{"kind": "piece", "id": 1, "text": 5}', "should be str"),
    ],
)  # fmt: skip
def test_a_line_that_is_not_the_protocols_is_an_error_that_says_why(line: bytes, says: str) -> None:
    with pytest.raises(ProtocolError, match=says.replace("(", r"\(")):
        protocol.decode(line)


def test_only_messages_of_the_protocol_can_be_sent() -> None:
    with pytest.raises(ProtocolError, match="dict is not a message of the protocol"):
        protocol.encode({"kind": "piece", "text": "x"})


def test_the_requests_last_replies_are_the_ones_that_end_it() -> None:
    assert isinstance(Done("stop", 1, 1), protocol.LAST)
    assert isinstance(Error(500, "x"), protocol.LAST)
    assert not isinstance(Piece("x"), protocol.LAST)
    assert not isinstance(Progress(1, 2), protocol.LAST)


# A runner child that loads, then answers its first request with a good piece and then LINE.
BABBLER = """
import sys
sys.stdin.buffer.readline()
sys.stdout.write('{"kind":"ready","id":0,"memory":1,"load_duration":0}\\n')
sys.stdout.flush()
sys.stdin.buffer.readline()
sys.stdout.write('{"kind":"piece","id":1,"text":"fine"}\\n' + LINE + '\\n')
sys.stdout.flush()
sys.stdin.buffer.readline()
"""

NOT_ANSWERS = [
    ('{"kind":"telepathy","id":1}', "unknown message kind 'telepathy'"),
    ('{"kind":"chat","id":1,"messages":[],"options":{}}', "a runner does not send Chat"),
    (
        '{"kind":"progress","id":1,"completed":1,"total":2}',
        "a Progress does not answer a chat request",
    ),
    ('{"kind":"piece","id":1,"text":"' + "x" * 4096 + '"}', "a line is longer than"),
]


@pytest.mark.anyio
@pytest.mark.parametrize(("line", "says"), NOT_ANSWERS, ids=["kind", "request", "step", "long"])
async def test_a_runner_that_writes_what_is_not_an_answer_ends_its_requests_and_is_stopped(
    monkeypatch: pytest.MonkeyPatch, line: str, says: str
) -> None:
    real_exec = asyncio.create_subprocess_exec
    babbler = f"LINE = {line!r}\n{BABBLER}"

    async def start_babbler(*_: Any, **kwargs: Any) -> asyncio.subprocess.Process:
        return await real_exec(sys.executable, "-c", babbler, **kwargs)

    monkeypatch.setattr(asyncio, "create_subprocess_exec", start_babbler)
    monkeypatch.setattr(runner_module, "STREAM_LIMIT", 1024)  # the long line, at test size
    runner = await RunnerProcess.start("fake", {}, LoadOptions(), timeout=10)
    steps = runner.chat([Message("user", "hi")], Options())
    assert await anext(steps) == Piece("fine")
    with pytest.raises(RunnerFailed, match=f"cannot read .*{says}"):
        await asyncio.wait_for(anext(steps), 10)
    await asyncio.wait_for(runner.stop(), 10)
    assert not runner.alive


def test_a_runner_that_cannot_read_the_servers_line_exits_rather_than_serve_deaf(
    tmp_path: Path,
) -> None:
    (tmp_path / "config.json").write_text('{"model_type": "limner-fake"}')
    load = protocol.encode(Load("fake", tmp_path))
    child = subprocess.run(
        [sys.executable, "-m", "limner.runner"],
        input=load + b'{"kind":"chat","id":1}\n',
        capture_output=True,
        timeout=60,
    )
    assert child.returncode == 2
    assert b"is missing its field 'messages'" in child.stderr
    assert protocol.decode(child.stdout.splitlines()[0])[1].__class__ is Ready


def test_a_request_is_answered_only_by_its_own_kind_of_step() -> None:
    chat = Chat([], Options())
    assert protocol.answers(chat, Piece("x")) and protocol.answers(chat, Error(500, "x"))
    assert not protocol.answers(chat, Progress(1, 2))
    assert protocol.answers(Draw(ImageRequest("x")), ImageResult(PNG, {}))
    assert not protocol.answers(Draw(ImageRequest("x")), Done("stop", 1, 1))
    assert protocol.answers(EVERY_MESSAGE[3], TrainProgress(1, 3, 0.25, 1e-4, 9.5))


def test_a_full_disk_in_a_runner_is_a_507_that_says_so_not_a_500(tmp_path: Path) -> None:
    class Filling:
        def generate_image(self, *args: Any) -> Any:
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "ckpt"))

    [reply] = list(runner_module.replies(Filling(), Draw(ImageRequest("x")), lambda: False))
    assert isinstance(reply, Error) and reply.status == 507
    assert reply.message.startswith("not enough disk space: have ")
    assert str(tmp_path) not in reply.message


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def test_text_made_faster_than_the_stream_interval_travels_a_few_tokens_per_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = [0.0]
    monkeypatch.setattr(runner_module.time, "monotonic", lambda: clock[0])

    def tokens_every(seconds: float) -> Any:
        for text in ["a", "b", "c", "d", "e"]:
            clock[0] += seconds
            yield Piece(text)
        yield Done("stop", 3, 5)

    fast = list(runner_module.coalesced(tokens_every(0.01), interval=0.025))
    # the first piece goes at once; the rest leave every third token; none waits past Done
    assert fast == [Piece("a"), Piece("bcd"), Piece("e"), Done("stop", 3, 5)]
    slow = list(runner_module.coalesced(tokens_every(0.03), interval=0.025))
    assert slow == [Piece(t) for t in "abcde"] + [Done("stop", 3, 5)]
    each = list(runner_module.coalesced(tokens_every(0.0), interval=0.0))
    assert each == [Piece(t) for t in "abcde"] + [Done("stop", 3, 5)]
