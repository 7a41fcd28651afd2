"""The Python SDK: `Client` and `AsyncClient`, one method per endpoint over one `_call`.

    >>> from limner import Client
    >>> client = Client()                      # LIMNER_HOST, default http://127.0.0.1:11434
    >>> reply = client.chat("bakllava", [{"role": "user", "content": "What is this?",
    ...                                   "images": ["cat.png"]}])
    >>> print(reply.message.content)

Pictures may be paths, bytes or PIL images. A server that takes pictures by reference
(limner's, by `/api/version`'s features) gets each one uploaded once, as a blob, and named by
its digest in every turn after; any other gets base64. `stream=True` returns an iterator of typed
chunks. Errors are raised as the classes of `limner.errors`, whether the server answered
with a status or sent an `{"error"}` line mid-stream. This module never imports the
server, the engines or torch.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import os
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel

from limner import config, pictures
from limner.errors import ConnectError, InvalidRequest, LimnerError, from_status
from limner.store.blobs import file_digest
from limner.types import (
    ChatResponse,
    EmbeddingsResponse,
    EmbedResponse,
    GalleryResponse,
    GenerateResponse,
    ListResponse,
    ProcessResponse,
    ProgressResponse,
    ShowResponse,
    TrainSection,
)

Reply = TypeVar("Reply", bound=BaseModel)
ImageInput = str | bytes | os.PathLike[str] | Any  # Any: a PIL image


def encode_image(image: ImageInput) -> str:
    """Raw base64 of a picture given as a path, bytes, a PIL image, or already base64."""
    data = picture_bytes(image)
    return data if isinstance(data, str) else pictures.encode(data)


def picture_bytes(image: ImageInput) -> bytes | str:
    """The file bytes of a picture given as a path, bytes or a PIL image; text that is not a
    path is taken as base64 (or a reference) already, and sent as it is."""
    if isinstance(image, bytes):
        return image
    if isinstance(image, os.PathLike) or (
        isinstance(image, str) and Path(image).expanduser().is_file()
    ):
        return Path(image).expanduser().read_bytes()
    if isinstance(image, str):
        if image.lower().endswith(pictures.SUFFIXES):
            raise InvalidRequest(f"picture file {image} does not exist")
        return image  # assumed base64; the server checks it
    if hasattr(image, "save"):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return buffer.getvalue()
    raise InvalidRequest(f"cannot send a {type(image).__name__} as a picture")


def _messages(messages: Sequence[dict[str, Any] | BaseModel]) -> list[dict[str, Any]]:
    """Messages as dicts; their pictures are still as given (the client sends them)."""
    return [
        message.model_dump(exclude_none=True) if isinstance(message, BaseModel) else dict(message)
        for message in messages
    ]


def _blob_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


PICTURE_REFERENCES = "picture-references"  # the feature /api/version names


@dataclass
class GeneratedImage:
    """A drawn picture: PNG bytes (parameters in its text chunks) and those parameters."""

    png: bytes
    parameters: dict[str, Any]
    picture_id: str | None = None  # its id in the server's gallery (None: not kept)

    def pil(self) -> Any:
        """The picture as a PIL image."""
        from PIL import Image

        return Image.open(io.BytesIO(self.png))

    def save(self, path: str | os.PathLike[str]) -> Path:
        target = Path(path)
        target.write_bytes(self.png)
        return target


def read_parameters(png: bytes) -> dict[str, Any]:
    """What drew a PNG, from its text chunks: limner's JSON, else Automatic1111's `parameters`."""
    from PIL import Image

    text: dict[str, str] = getattr(Image.open(io.BytesIO(png)), "text", {})
    if "limner" in text:
        found: dict[str, Any] = json.loads(text["limner"])
        return found
    if "parameters" in text:
        return {"parameters": text["parameters"]}
    return {}


def _image_body(model: str, prompt: str, fields: dict[str, Any]) -> dict[str, Any]:
    for key in ("image", "mask"):
        if fields.get(key) is not None:
            fields[key] = encode_image(fields[key])
    image = fields.pop("image", None)
    styles = fields.pop("style_images", None)
    return _body(
        model=model, prompt=prompt, images=[image] if image is not None else None,
        style_images=[encode_image(i) for i in styles] if styles else None, **fields,
    )  # fmt: skip


def _finished(chunk: GenerateResponse, progress: Any) -> GeneratedImage | None:
    if chunk.image is None:
        if progress is not None and chunk.completed is not None and chunk.total is not None:
            progress(chunk.completed, chunk.total)
        return None
    return GeneratedImage(base64.b64decode(chunk.image), chunk.parameters or {}, chunk.picture_id)


def _texts(value: str | Sequence[str]) -> str | list[str]:
    return value if isinstance(value, str) else list(value)


def _body(**fields: Any) -> dict[str, Any]:
    return {key.rstrip("_"): value for key, value in fields.items() if value is not None}


def _create_body(
    model: str, train: TrainSection | dict[str, Any] | None, **fields: Any
) -> dict[str, Any]:
    if isinstance(train, TrainSection):
        train = train.model_dump(exclude_none=True)
    return _body(model=model, train=train, **fields)


async def _chunks_of(path: str | os.PathLike[str], size: int = 1 << 20) -> AsyncIterator[bytes]:
    """A file's bytes a megabyte at a time, so an upload never holds the whole file."""
    with open(path, "rb") as f:
        while chunk := await asyncio.to_thread(f.read, size):
            yield chunk


class _Base:
    def __init__(self, host: str | None = None) -> None:
        self.host = config.parse_host(host) if host else config.host()
        self._references: bool | None = None  # whether the server takes pictures by digest

    @staticmethod
    def _auth(httpx_kwargs: dict[str, Any]) -> None:
        """Send LIMNER_API_KEY as a bearer token, unless the caller set Authorization."""
        token = config.api_key()
        headers = dict(httpx_kwargs.get("headers") or {})
        if token and not any(key.lower() == "authorization" for key in headers):
            httpx_kwargs["headers"] = {**headers, "Authorization": f"Bearer {token}"}

    def _error(self, response_status: int, text: str) -> LimnerError:
        try:
            message = json.loads(text)["error"]
        except (ValueError, KeyError, TypeError):
            message = text or f"HTTP {response_status}"
        return from_status(response_status, str(message))


def _line(line: str, cls: type[Reply]) -> Reply:
    data = json.loads(line)
    if "error" in data:
        raise from_status(-1, data["error"])
    return cls.model_validate(data)


class Client(_Base):
    """A blocking client. Every method mirrors one endpoint of the native API."""

    def __init__(self, host: str | None = None, **httpx_kwargs: Any) -> None:
        super().__init__(host)
        httpx_kwargs.setdefault("timeout", None)
        self._auth(httpx_kwargs)
        self._http = httpx.Client(base_url=self.host, **httpx_kwargs)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # --- the one transport ---

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.ConnectError:
            raise ConnectError(self.host) from None
        except httpx.TransportError as exc:
            raise LimnerError(f"the connection to {self.host} failed: {exc}") from None
        if response.status_code >= 400:
            raise self._error(response.status_code, response.text)
        return response

    def _call(self, path: str, body: dict[str, Any], cls: type[Reply], stream: bool) -> Any:
        if not stream:
            return cls.model_validate(
                self._send("POST", path, json={**body, "stream": False}).json()
            )
        return self._stream(path, body, cls)

    def _stream(self, path: str, body: dict[str, Any], cls: type[Reply]) -> Iterator[Reply]:
        try:
            with self._http.stream("POST", path, json={**body, "stream": True}) as response:
                if response.status_code >= 400:
                    raise self._error(response.status_code, response.read().decode())
                for line in response.iter_lines():
                    if line:
                        yield _line(line, cls)
        except httpx.ConnectError:
            raise ConnectError(self.host) from None
        except httpx.TransportError as exc:
            raise LimnerError(f"the connection to {self.host} failed: {exc}") from None

    # --- endpoints ---

    def _pictures(self, images: Sequence[ImageInput]) -> list[str]:
        """Pictures as the server takes them: digests of uploaded blobs, or base64."""
        if self._references is None:
            features = self._send("GET", "/api/version").json().get("features") or []
            self._references = PICTURE_REFERENCES in features
        found = [picture_bytes(image) for image in images]
        if not self._references:
            return [d if isinstance(d, str) else pictures.encode(d) for d in found]
        return [d if isinstance(d, str) else self._uploaded(d) for d in found]

    def _uploaded(self, data: bytes) -> str:
        """Upload a picture unless the server has it; returns the reference to send."""
        digest = _blob_digest(data)
        if self._http.head(f"/api/blobs/{digest}").status_code != 200:
            self._send("POST", f"/api/blobs/{digest}", content=data)
        return digest

    def _with_pictures(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for message in messages:
            if message.get("images"):
                message["images"] = self._pictures(message["images"])
        return messages

    def generate(
        self, model: str, prompt: str = "", *, images: Sequence[ImageInput] | None = None,
        system: str | None = None, format: str | dict[str, Any] | None = None,
        options: dict[str, Any] | None = None, keep_alive: float | str | None = None, stream: bool = False,
    ) -> GenerateResponse | Iterator[GenerateResponse]:  # fmt: skip
        """Answer one prompt (with pictures); `stream=True` yields chunks as they come."""
        pictures = self._pictures(images) if images else None
        body = _body(model=model, prompt=prompt, images=pictures, system=system, format=format,
                     options=options, keep_alive=keep_alive)  # fmt: skip
        result: GenerateResponse | Iterator[GenerateResponse] = self._call(
            "/api/generate", body, GenerateResponse, stream
        )
        return result

    def chat(
        self, model: str, messages: Sequence[dict[str, Any] | BaseModel] = (), *,
        format: str | dict[str, Any] | None = None, options: dict[str, Any] | None = None,
        keep_alive: float | str | None = None, stream: bool = False,
        tools: Sequence[dict[str, Any]] | None = None,
    ) -> ChatResponse | Iterator[ChatResponse]:  # fmt: skip
        """Continue a conversation; each message may carry `images`; `tools` the model may
        call (its calls come back in `message.tool_calls`)."""
        body = _body(model=model, messages=self._with_pictures(_messages(messages)),
                     format=format, options=options, keep_alive=keep_alive,
                     tools=list(tools) if tools else None)  # fmt: skip
        result: ChatResponse | Iterator[ChatResponse] = self._call(
            "/api/chat", body, ChatResponse, stream
        )
        return result

    def generate_image(
        self, model: str, prompt: str, *, width: int | None = None, height: int | None = None,
        steps: int | None = None, seed: int | None = None, negative_prompt: str | None = None,
        guidance_scale: float | None = None, scheduler: str | None = None,
        strength: float | None = None, image: ImageInput | None = None, mask: ImageInput | None = None,
        style_images: Sequence[ImageInput] | None = None, style_strength: float | None = None,
        vae: str | None = None, keep_alive: float | str | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> GeneratedImage:  # fmt: skip
        """Draw a picture with a Stable Diffusion model; `progress(completed, total)` per step.

        `image` alone re-draws it (image-to-image); with `mask` (white = repaint) it inpaints;
        `style_images` transfer the style of reference pictures. `vae="tiny"` decodes with the
        model's tiny autoencoder (TAESD): faster, a little less detail.
        """
        fields = {
            k: v for k, v in locals().items() if k not in ("self", "model", "prompt", "progress")
        }
        for chunk in self._stream(
            "/api/generate", _image_body(model, prompt, fields), GenerateResponse
        ):
            result = _finished(chunk, progress)
            if result is not None:
                return result
        raise LimnerError("the server ended the stream without a picture")

    def embed(
        self, model: str, input: str | Sequence[str] = "", *, truncate: bool | None = None,
        dimensions: int | None = None, options: dict[str, Any] | None = None,
        keep_alive: float | str | None = None,
    ) -> EmbedResponse:  # fmt: skip
        """Unit vectors for one text or a list of them, from an embedding model."""
        body = _body(model=model, input=_texts(input), truncate=truncate, dimensions=dimensions,
                     options=options, keep_alive=keep_alive)  # fmt: skip
        return EmbedResponse.model_validate(self._send("POST", "/api/embed", json=body).json())

    def embeddings(
        self, model: str, prompt: str = "", *, options: dict[str, Any] | None = None,
        keep_alive: float | str | None = None,
    ) -> EmbeddingsResponse:  # fmt: skip
        """The legacy endpoint: one prompt's vector as the model pools it (not normalised)."""
        body = _body(model=model, prompt=prompt, options=options, keep_alive=keep_alive)
        reply = self._send("POST", "/api/embeddings", json=body)
        return EmbeddingsResponse.model_validate(reply.json())

    def list(self) -> ListResponse:
        return ListResponse.model_validate(self._send("GET", "/api/tags").json())

    def ps(self) -> ProcessResponse:
        return ProcessResponse.model_validate(self._send("GET", "/api/ps").json())

    def show(self, model: str) -> ShowResponse:
        return ShowResponse.model_validate(
            self._send("POST", "/api/show", json={"model": model}).json()
        )

    def copy(self, source: str, destination: str) -> None:
        self._send("POST", "/api/copy", json={"source": source, "destination": destination})

    def delete(self, model: str) -> None:
        self._send("DELETE", "/api/delete", json={"model": model})

    def gallery(self, limit: int = 50, before: str | None = None) -> GalleryResponse:
        """The pictures the server has drawn, newest first; `before` pages back."""
        params = _body(limit=limit, before=before)
        return GalleryResponse.model_validate(
            self._send("GET", "/api/gallery", params=params).json()
        )

    def gallery_picture(self, picture_id: str) -> GeneratedImage:
        """One kept picture, with the parameters its PNG carries."""
        png = self._send("GET", f"/api/gallery/{picture_id}").content
        return GeneratedImage(png, read_parameters(png), picture_id)

    def gallery_thumbnail(self, picture_id: str) -> bytes:
        """A kept picture as a JPEG at most 256 pixels on its long side."""
        return self._send("GET", f"/api/gallery/{picture_id}/thumbnail").content

    def delete_picture(self, picture_id: str) -> None:
        self._send("DELETE", f"/api/gallery/{picture_id}")

    def create(
        self, model: str, *, from_: str | None = None, files: dict[str, str] | None = None,
        system: str | None = None, template: str | None = None, license: str | Sequence[str] | None = None,
        parameters: dict[str, Any] | None = None, messages: Sequence[dict[str, Any]] | None = None,
        quantize: str | None = None, adapters: dict[str, str] | None = None,
        tiny_vae: dict[str, str] | str | None = None,
        train: TrainSection | dict[str, Any] | None = None, stream: bool = False,
    ) -> ProgressResponse | Iterator[ProgressResponse]:  # fmt: skip
        """Create a model from uploaded files (see `create_blob`) or from another model;
        `quantize` ("q4_0", "q8_0", "f16") converts a Hugging Face vision model (LLaVA, LLaVA-NeXT, Gemma 3, SmolVLM) to GGUF; `adapters`
        (file name -> uploaded blob) adds LoRA files to a drawing model; `tiny_vae` adds a tiny
        autoencoder (TAESD) to one: its files (config.json and the .safetensors, each an
        uploaded blob) or the name of a stored model that holds one; `train` trains a LoRA
        of the drawing model `from_` on uploaded pictures (`files` inside it), streaming each
        step's loss (`status` "training")."""
        body = _create_body(model, from_=from_, files=files, system=system, template=template,
                            license=license, parameters=parameters, messages=messages,
                            quantize=quantize, adapters=adapters, tiny_vae=tiny_vae,
                            train=train)  # fmt: skip
        result: ProgressResponse | Iterator[ProgressResponse] = self._call(
            "/api/create", body, ProgressResponse, stream
        )
        return result

    def pull(
        self, model: str, *, insecure: bool = False, stream: bool = False
    ) -> ProgressResponse | Iterator[ProgressResponse]:
        """Pull a model from its registry (default registry.ollama.ai); progress as it comes.

        `insecure=True` allows a plain-http registry (`localhost:5000/ns/model`).
        """
        body = {"model": model, "insecure": insecure}
        result: ProgressResponse | Iterator[ProgressResponse] = self._call(
            "/api/pull", body, ProgressResponse, stream
        )
        return result

    def create_blob(self, path: str | os.PathLike[str]) -> str:
        """Upload a file unless the server has it; returns its digest."""
        digest = file_digest(Path(path))
        if self._http.head(f"/api/blobs/{digest}").status_code != 200:
            with open(path, "rb") as f:
                self._send("POST", f"/api/blobs/{digest}", content=f)
        return digest

    def version(self) -> str:
        return str(self._send("GET", "/api/version").json()["version"])

    def is_running(self) -> bool:
        try:
            return self._http.head("/").status_code == 200
        except httpx.HTTPError:
            return False


class AsyncClient(_Base):
    """The same methods as `Client`, awaited; streams are async iterators."""

    def __init__(self, host: str | None = None, **httpx_kwargs: Any) -> None:
        super().__init__(host)
        httpx_kwargs.setdefault("timeout", None)
        self._auth(httpx_kwargs)
        self._http = httpx.AsyncClient(base_url=self.host, **httpx_kwargs)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._http.aclose()

    async def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = await self._http.request(method, path, **kwargs)
        except httpx.ConnectError:
            raise ConnectError(self.host) from None
        except httpx.TransportError as exc:
            raise LimnerError(f"the connection to {self.host} failed: {exc}") from None
        if response.status_code >= 400:
            raise self._error(response.status_code, response.text)
        return response

    async def _call(self, path: str, body: dict[str, Any], cls: type[Reply], stream: bool) -> Any:
        if not stream:
            return cls.model_validate(
                (await self._send("POST", path, json={**body, "stream": False})).json()
            )
        return self._stream(path, body, cls)

    async def _stream(
        self, path: str, body: dict[str, Any], cls: type[Reply]
    ) -> AsyncIterator[Reply]:
        try:
            async with self._http.stream("POST", path, json={**body, "stream": True}) as response:
                if response.status_code >= 400:
                    raise self._error(response.status_code, (await response.aread()).decode())
                async for line in response.aiter_lines():
                    if line:
                        yield _line(line, cls)
        except httpx.ConnectError:
            raise ConnectError(self.host) from None
        except httpx.TransportError as exc:
            raise LimnerError(f"the connection to {self.host} failed: {exc}") from None

    async def generate(
        self, model: str, prompt: str = "", *, images: Sequence[ImageInput] | None = None,
        system: str | None = None, format: str | dict[str, Any] | None = None,
        options: dict[str, Any] | None = None, keep_alive: float | str | None = None, stream: bool = False,
    ) -> GenerateResponse | AsyncIterator[GenerateResponse]:  # fmt: skip
        pictures = await self._pictures(images) if images else None
        body = _body(model=model, prompt=prompt, images=pictures, system=system, format=format,
                     options=options, keep_alive=keep_alive)  # fmt: skip
        result: GenerateResponse | AsyncIterator[GenerateResponse] = await self._call(
            "/api/generate", body, GenerateResponse, stream
        )
        return result

    async def chat(
        self, model: str, messages: Sequence[dict[str, Any] | BaseModel] = (), *,
        format: str | dict[str, Any] | None = None, options: dict[str, Any] | None = None,
        keep_alive: float | str | None = None, stream: bool = False,
        tools: Sequence[dict[str, Any]] | None = None,
    ) -> ChatResponse | AsyncIterator[ChatResponse]:  # fmt: skip
        messages_out = _messages(messages)
        for message in messages_out:
            if message.get("images"):
                message["images"] = await self._pictures(message["images"])
        body = _body(model=model, messages=messages_out, format=format, options=options,
                     keep_alive=keep_alive, tools=list(tools) if tools else None)  # fmt: skip
        result: ChatResponse | AsyncIterator[ChatResponse] = await self._call(
            "/api/chat", body, ChatResponse, stream
        )
        return result

    async def generate_image(
        self, model: str, prompt: str, *, width: int | None = None, height: int | None = None,
        steps: int | None = None, seed: int | None = None, negative_prompt: str | None = None,
        guidance_scale: float | None = None, scheduler: str | None = None,
        strength: float | None = None, image: ImageInput | None = None, mask: ImageInput | None = None,
        style_images: Sequence[ImageInput] | None = None, style_strength: float | None = None,
        vae: str | None = None, keep_alive: float | str | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> GeneratedImage:  # fmt: skip
        fields = {
            k: v for k, v in locals().items() if k not in ("self", "model", "prompt", "progress")
        }
        async for chunk in self._stream(
            "/api/generate", _image_body(model, prompt, fields), GenerateResponse
        ):
            result = _finished(chunk, progress)
            if result is not None:
                return result
        raise LimnerError("the server ended the stream without a picture")

    async def embed(
        self, model: str, input: str | Sequence[str] = "", *, truncate: bool | None = None,
        dimensions: int | None = None, options: dict[str, Any] | None = None,
        keep_alive: float | str | None = None,
    ) -> EmbedResponse:  # fmt: skip
        body = _body(model=model, input=_texts(input), truncate=truncate, dimensions=dimensions,
                     options=options, keep_alive=keep_alive)  # fmt: skip
        reply = await self._send("POST", "/api/embed", json=body)
        return EmbedResponse.model_validate(reply.json())

    async def embeddings(
        self, model: str, prompt: str = "", *, options: dict[str, Any] | None = None,
        keep_alive: float | str | None = None,
    ) -> EmbeddingsResponse:  # fmt: skip
        body = _body(model=model, prompt=prompt, options=options, keep_alive=keep_alive)
        reply = await self._send("POST", "/api/embeddings", json=body)
        return EmbeddingsResponse.model_validate(reply.json())

    async def list(self) -> ListResponse:
        return ListResponse.model_validate((await self._send("GET", "/api/tags")).json())

    async def ps(self) -> ProcessResponse:
        return ProcessResponse.model_validate((await self._send("GET", "/api/ps")).json())

    async def show(self, model: str) -> ShowResponse:
        return ShowResponse.model_validate(
            (await self._send("POST", "/api/show", json={"model": model})).json()
        )

    async def copy(self, source: str, destination: str) -> None:
        await self._send("POST", "/api/copy", json={"source": source, "destination": destination})

    async def delete(self, model: str) -> None:
        await self._send("DELETE", "/api/delete", json={"model": model})

    async def gallery(self, limit: int = 50, before: str | None = None) -> GalleryResponse:
        params = _body(limit=limit, before=before)
        reply = await self._send("GET", "/api/gallery", params=params)
        return GalleryResponse.model_validate(reply.json())

    async def gallery_picture(self, picture_id: str) -> GeneratedImage:
        png = (await self._send("GET", f"/api/gallery/{picture_id}")).content
        return GeneratedImage(png, read_parameters(png), picture_id)

    async def gallery_thumbnail(self, picture_id: str) -> bytes:
        return (await self._send("GET", f"/api/gallery/{picture_id}/thumbnail")).content

    async def delete_picture(self, picture_id: str) -> None:
        await self._send("DELETE", f"/api/gallery/{picture_id}")

    async def pull(
        self, model: str, *, insecure: bool = False, stream: bool = False
    ) -> ProgressResponse | AsyncIterator[ProgressResponse]:
        body = {"model": model, "insecure": insecure}
        result: ProgressResponse | AsyncIterator[ProgressResponse] = await self._call(
            "/api/pull", body, ProgressResponse, stream
        )
        return result

    async def create(
        self, model: str, *, from_: str | None = None, files: dict[str, str] | None = None,
        system: str | None = None, template: str | None = None, license: str | Sequence[str] | None = None,
        parameters: dict[str, Any] | None = None, messages: Sequence[dict[str, Any]] | None = None,
        quantize: str | None = None, adapters: dict[str, str] | None = None,
        tiny_vae: dict[str, str] | str | None = None,
        train: TrainSection | dict[str, Any] | None = None, stream: bool = False,
    ) -> ProgressResponse | AsyncIterator[ProgressResponse]:  # fmt: skip
        """As `Client.create`."""
        body = _create_body(model, from_=from_, files=files, system=system, template=template,
                            license=license, parameters=parameters, messages=messages,
                            quantize=quantize, adapters=adapters, tiny_vae=tiny_vae,
                            train=train)  # fmt: skip
        result: ProgressResponse | AsyncIterator[ProgressResponse] = await self._call(
            "/api/create", body, ProgressResponse, stream
        )
        return result

    async def _pictures(self, images: Sequence[ImageInput]) -> Sequence[str]:
        """Pictures as the server takes them: digests of uploaded blobs, or base64."""
        if self._references is None:
            features = (await self._send("GET", "/api/version")).json().get("features") or []
            self._references = PICTURE_REFERENCES in features
        found = [picture_bytes(image) for image in images]
        if not self._references:
            return [d if isinstance(d, str) else pictures.encode(d) for d in found]
        return [d if isinstance(d, str) else await self._uploaded(d) for d in found]

    async def _uploaded(self, data: bytes) -> str:
        """Upload a picture unless the server has it; returns the reference to send."""
        digest = _blob_digest(data)
        if (await self._http.head(f"/api/blobs/{digest}")).status_code != 200:
            await self._send("POST", f"/api/blobs/{digest}", content=data)
        return digest

    async def create_blob(self, path: str | os.PathLike[str]) -> str:
        """Upload a file unless the server has it; returns its digest."""
        digest = await asyncio.to_thread(file_digest, Path(path))
        if (await self._http.head(f"/api/blobs/{digest}")).status_code != 200:
            await self._send("POST", f"/api/blobs/{digest}", content=_chunks_of(path))
        return digest

    async def version(self) -> str:
        return str((await self._send("GET", "/api/version")).json()["version"])

    async def is_running(self) -> bool:
        try:
            return (await self._http.head("/")).status_code == 200
        except httpx.HTTPError:
            return False
