"""A scripted chat engine for tests of everything above the engine seam.

It runs in a real runner process like any engine. A model folder whose config.json says
`"model_type": "limner-fake"` (a chat model) or `"limner-fake-draw"` (a drawing model)
selects it. It answers by echoing the last message word by word and obeys `num_predict`
and `stop`, so tests see real streams; it draws a flat picture after `steps` progress steps. Words in the last
message script misbehaviour:

    SLOW   sleep `token_delay` (config, default 0.2 s) before every word (100 words)
           or every denoising step
    CRASH  emit one word, then kill the process (a runner crash mid-stream)
    HANG   emit one word, then never answer again
    ECHO   a message that starts with it is answered with the rest of it, verbatim, in
           pieces of 3 characters (a scripted answer: a tool call's JSON, say)

`"concurrent": N` in config.json makes the runner hand it N requests at once, on threads.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from PIL import Image, PngImagePlugin

from limner.engines import (
    ChatStep,
    Done,
    ImageRequest,
    ImageResult,
    ImageStep,
    LoadOptions,
    Message,
    Options,
    Piece,
    Progress,
)
from limner.errors import InvalidImage

IMAGE_TOKENS = 576
ECHO = "ECHO "


class FakeEngine:
    def __init__(self, folder: Path) -> None:
        config = json.loads((folder / "config.json").read_text())
        time.sleep(config.get("load_delay", 0.0))
        if config.get("fail_load"):
            raise RuntimeError("this fake model is scripted to fail loading")
        self.token_delay: float = config.get("token_delay", 0.2)
        # `"concurrent": N`: takes N requests at once, as an engine that batches (vLLM) does.
        self.max_concurrency = int(config.get("concurrent", 1))
        self.concurrent = self.max_concurrency > 1

    def memory_bytes(self) -> int:
        return 1024

    def generate_image(
        self,
        request: ImageRequest,
        cancelled: Callable[[], bool],
        finish: Callable[[], bool] = lambda: False,
    ) -> Iterator[ImageStep]:
        """A flat picture in a colour picked from the prompt; the mask's area when inpainting.
        Previews are grey; `finish()` ends the steps early, as the real engine does."""
        steps = request.steps or 4
        width, height = request.width or 64, request.height or 64
        for step in range(1, steps + 1):
            if cancelled():
                return
            if "SLOW" in request.prompt:
                time.sleep(self.token_delay)
            every = request.preview_every
            preview = (
                _png(Image.new("RGB", (width, height), "grey"))
                if every and step % every == 0 and step < steps
                else None
            )
            yield Progress(step, steps, preview)
            if finish():
                break
        seed = request.seed if request.seed >= 0 else random.randrange(2**32)  # as the real one
        colour = tuple(hashlib.sha256(f"{request.prompt}{seed}".encode()).digest()[:3])
        picture = Image.new("RGB", (width, height), colour)
        if request.image is not None:
            base = Image.open(io.BytesIO(request.image)).convert("RGB").resize((width, height))
            mask = Image.open(io.BytesIO(request.mask)).convert("L") if request.mask else None
            picture = Image.composite(picture, base, mask) if mask else picture
        parameters = {"prompt": request.prompt, "seed": seed, "steps": steps,
                      "width": width, "height": height, "loras": request.loras or None,
                      **request.metadata}  # fmt: skip
        info = PngImagePlugin.PngInfo()
        info.add_text("limner", json.dumps(parameters))
        buffer = io.BytesIO()
        picture.save(buffer, format="PNG", pnginfo=info)
        yield ImageResult(buffer.getvalue(), parameters)

    def chat(
        self, messages: list[Message], options: Options, cancelled: Callable[[], bool]
    ) -> Iterator[ChatStep]:
        images = [image for m in messages for image in m.images]
        if any(not image.startswith((b"\x89PNG", b"\xff\xd8", b"RIFF")) for image in images):
            raise InvalidImage("the fake engine reads only PNG, JPEG and WebP pictures")
        last = messages[-1].content if messages else ""
        words = _script(last, len(images))
        prompt_tokens = sum(len(m.content.split()) for m in messages) + IMAGE_TOKENS * len(images)
        text, count = "", 0
        for word in words:
            if cancelled() or (0 <= options.num_predict <= count):
                break
            if "SLOW" in last:
                time.sleep(self.token_delay)
            piece = word if count == 0 or last.startswith(ECHO) else " " + word
            if any(stop in text + piece for stop in options.stop):
                yield Done("stop", prompt_tokens, count, IMAGE_TOKENS * len(images))
                return
            text += piece
            count += 1
            yield Piece(piece)
            if "CRASH" in last:
                os._exit(3)
            if "HANG" in last:
                time.sleep(3600)
        reason = "length" if 0 <= options.num_predict <= count else "stop"
        yield Done(reason, prompt_tokens, count, IMAGE_TOKENS * len(images), 1000, 1000 * count)


def _script(last: str, pictures: int) -> list[str]:
    if last.startswith(ECHO):
        answer = last[len(ECHO) :]
        return [answer[i : i + 3] for i in range(0, len(answer), 3)]
    if "SLOW" in last:
        return [f"w{i}" for i in range(100)]
    return [f"I see {pictures} picture(s).", "You", "said:", *last.split()]


def load(folder: Path, options: LoadOptions) -> FakeEngine:
    return FakeEngine(folder)


def _png(picture: Image.Image) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()
