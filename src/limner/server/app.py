"""The HTTP API: the route table, the error mapping, and the server's lifetime.

Every LimnerError becomes `{"error": message}` with the class's status here, and only
here. Anything else is logged and answered with a generic 500 that carries no traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import math
import socket
from collections.abc import AsyncIterator
from importlib.metadata import version as package_version
from typing import IO, Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from limner import config, pictures
from limner.errors import LimnerError, TooLarge, without_paths
from limner.scheduler import Scheduler
from limner.server import (
    a1111,
    chat,
    embed,
    gallery,
    generate,
    models,
    openai,
    openai_chat,
    openai_embed,
    schema,
    web,
)
from limner.server.access import Access, loopback
from limner.server.connections import SHUTDOWN, ClientGone, Concurrency, Limits, guarded
from limner.server.origins import OriginCheck, origin_pattern
from limner.server.state import State
from limner.store import Store
from limner.store.check import remove_leftovers
from limner.store.gallery import Gallery

log = logging.getLogger("limner.server")

# What Ollama allows browsers to send (gin-contrib/cors settings in routes.go).
CORS_HEADERS = ["Authorization", "Content-Type", "User-Agent", "Accept", "X-Requested-With", "OpenAI-Beta",
                "x-stainless-arch", "x-stainless-async", "x-stainless-custom-poll-interval",
                "x-stainless-helper-method", "x-stainless-lang", "x-stainless-os", "x-stainless-package-version",
                "x-stainless-poll-helper", "x-stainless-retry-count", "x-stainless-runtime",
                "x-stainless-runtime-version", "x-stainless-timeout"]  # fmt: skip


def version() -> str:
    return package_version("limner")


def create_app(store: Store, scheduler: Scheduler) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        held = await asyncio.to_thread(_take_store, store)
        pruning = asyncio.create_task(_prune_pictures(store))
        yield
        pruning.cancel()
        if held is not None:
            held.close()
        await app.state.limner.trainings.close()  # a training keeps its last checkpoint
        await scheduler.close()  # SIGINT/SIGTERM: every runner stops with the server

    app = FastAPI(
        title="limner", version=version(), lifespan=lifespan, docs_url=None, redoc_url=None
    )
    kept = Gallery(config.gallery(store.root), config.gallery_keep())
    app.state.limner = State(store=store, scheduler=scheduler, gallery=kept)
    app.state.a1111 = a1111.Session()
    app.add_exception_handler(LimnerError, _limner_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)
    app.add_middleware(ClientGone)  # a client that leaves before its answer frees its place
    app.add_middleware(UploadedPictures, store=store)
    app.add_middleware(BodyLimit, limit=config.max_body_bytes(), exempt=("/api/blobs/",))
    allowed = origin_pattern(config.origins())
    app.add_middleware(
        CORSMiddleware,
        allow_origin_regex=allowed.pattern,
        allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"],
        allow_headers=CORS_HEADERS,
    )
    app.add_middleware(OriginCheck, allowed=allowed)
    app.add_middleware(Concurrency, limit=config.max_connections())
    tokens = {config.api_key(): "full", config.api_key_readonly(): "read"}
    app.add_middleware(Access, tokens=tokens, allowed_hosts=config.allowed_hosts())  # runs first

    route = app.add_api_route
    route("/", web.index, methods=["GET", "HEAD"])
    route("/web/{name}", web.asset, methods=["GET", "HEAD"], include_in_schema=False)
    route("/api/version", _version, methods=["GET", "HEAD"])
    route("/api/generate", generate.generate, methods=["POST"])
    route("/api/chat", chat.chat, methods=["POST"])
    route("/api/embed", embed.embed, methods=["POST"])
    route("/api/embeddings", embed.embeddings, methods=["POST"])
    route("/api/tags", models.tags, methods=["GET", "HEAD"])
    route("/api/show", models.show, methods=["POST"])
    route("/api/ps", models.ps, methods=["GET"])
    route("/api/copy", models.copy, methods=["POST"])
    route("/api/delete", models.delete, methods=["DELETE"])
    route("/api/create", models.create, methods=["POST"])
    route("/api/pull", models.pull, methods=["POST"])
    route("/api/blobs/{digest}", models.blob_exists, methods=["HEAD"])
    route("/api/blobs/{digest}", models.blob_upload, methods=["POST"])
    route("/api/gallery", gallery.pictures, methods=["GET"])
    route("/api/gallery/{picture_id}", gallery.picture, methods=["GET", "HEAD"])
    route("/api/gallery/{picture_id}", gallery.delete, methods=["DELETE"])
    route("/api/gallery/{picture_id}/thumbnail", gallery.thumbnail, methods=["GET", "HEAD"])
    route("/v1/images/generations", openai.generations, methods=["POST"])
    route("/v1/images/edits", openai.edits, methods=["POST"])
    route("/v1/chat/completions", openai_chat.chat_completions, methods=["POST"])
    route("/v1/embeddings", openai_embed.embeddings, methods=["POST"])
    route("/v1/models", openai_chat.list_models, methods=["GET"])
    route("/v1/models/{model:path}", openai_chat.show_model, methods=["GET"])
    route("/sdapi/v1/txt2img", a1111.txt2img, methods=["POST"])
    route("/sdapi/v1/img2img", a1111.img2img, methods=["POST"])
    route("/sdapi/v1/sd-models", a1111.sd_models, methods=["GET"])
    route("/sdapi/v1/samplers", a1111.samplers, methods=["GET"])
    route("/sdapi/v1/schedulers", a1111.schedulers, methods=["GET"])
    route("/sdapi/v1/loras", a1111.loras, methods=["GET"])
    for nothing in ("upscalers", "sd-vae", "prompt-styles", "hypernetworks", "face-restorers",
                    "script-info", "extensions"):  # fmt: skip
        route(f"/sdapi/v1/{nothing}", a1111.empty_list, methods=["GET"])
    route("/sdapi/v1/scripts", a1111.scripts, methods=["GET"])
    route("/sdapi/v1/embeddings", a1111.embeddings, methods=["GET"])
    route("/sdapi/v1/memory", a1111.memory, methods=["GET"])
    route("/sdapi/v1/cmd-flags", a1111.cmd_flags, methods=["GET"])
    route("/sdapi/v1/png-info", a1111.png_info, methods=["POST"])
    route("/sdapi/v1/options", a1111.get_options, methods=["GET"])
    route("/sdapi/v1/options", a1111.set_options, methods=["POST"])
    route("/sdapi/v1/progress", a1111.progress, methods=["GET"])
    route("/sdapi/v1/interrupt", a1111.interrupt, methods=["POST"])
    route("/sdapi/v1/skip", a1111.skip, methods=["POST"])
    app.openapi = lambda: schema.openapi(app)  # type: ignore[method-assign]
    return app


# What limner does beyond Ollama's API, for its SDK to detect (the official clients read
# only "version"): pictures sent as `sha256:` references to uploaded blobs.
FEATURES = ["picture-references"]
PRUNE_EVERY = 600.0  # seconds between looks for idle uploaded pictures


async def _version(request: Request) -> Response:
    return JSONResponse({"version": version(), "features": FEATURES})


class UploadedPictures:
    """Lets the pictures of every request name blobs of this server's store."""

    def __init__(self, app: ASGIApp, store: Store) -> None:
        self.app, self.store = app, store

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        token = pictures.uploaded.set(self.store.uploaded_picture)
        try:
            await self.app(scope, receive, send)
        finally:
            pictures.uploaded.reset(token)


def _take_store(store: Store) -> IO[bytes] | None:
    """Hold the store for this server and remove what earlier processes left half-written."""
    held = store.hold()
    if held is None:
        log.warning("another server uses %s; its temporary files are left to it", store.root)
        return None
    removed = remove_leftovers(store)
    if removed:
        log.info("removed %d leftover temporary file(s) of an earlier run: %s", len(removed),
                 ", ".join(removed))  # fmt: skip
    return held


async def _prune_pictures(store: Store) -> None:
    """Uploaded pictures no model uses go once idle for LIMNER_PICTURE_KEEP."""
    while True:
        removed = await asyncio.to_thread(store.prune_idle_pictures, config.picture_keep())
        if removed:
            log.info("removed %d uploaded picture(s) unused for %s", len(removed),
                     config.format_duration(config.picture_keep()))  # fmt: skip
        await asyncio.sleep(PRUNE_EVERY)


async def _limner_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, LimnerError)
    # A busy server says when to come back; clients and proxies honour Retry-After.
    headers = {"Retry-After": "1"} if exc.status == 503 else None
    return JSONResponse(
        {"error": without_paths(exc.message)}, status_code=exc.status, headers=headers
    )


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    text = {404: "404 page not found", 405: "405 method not allowed"}.get(
        exc.status_code, str(exc.detail)
    )
    return JSONResponse({"error": text}, status_code=exc.status_code)


async def _unexpected_error(request: Request, exc: Exception) -> Response:
    log.exception("unexpected error in %s %s", request.method, request.url.path)
    return JSONResponse({"error": "internal error; see the server log"}, status_code=500)


class BodyLimit:
    """413 for bodies over the limit, from Content-Length or while reading a chunked body."""

    def __init__(self, app: ASGIApp, limit: int, exempt: tuple[str, ...]) -> None:
        self.app, self.limit, self.exempt = app, limit, exempt

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(self.exempt):
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await _send_error(send, TooLarge(self._message()))
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise TooLarge(self._message())
            return message

        await self.app(scope, limited, send)

    def _message(self) -> str:
        return f"request body is larger than {self.limit} bytes (LIMNER_MAX_BODY_BYTES); send less"


async def _send_error(send: Send, exc: LimnerError) -> None:
    response = JSONResponse({"error": exc.message}, status_code=exc.status)
    scope: dict[str, Any] = {"type": "http"}

    async def no_receive() -> Message:
        return {"type": "http.disconnect"}

    await response(scope, no_receive, send)


def build(store: Store | None = None) -> FastAPI:
    """The app as `limner serve` runs it, configured from LIMNER_* variables; with
    LIMNER_CLUSTER set, every model is served by replicas on that Ray cluster."""
    store = store or Store(config.models())
    placement: dict[str, Any] = {"memory_limit": config.memory_limit()}
    if config.cluster():
        placement = _on_cluster()
    scheduler = Scheduler(
        store,
        max_loaded=config.max_loaded_models(),
        max_queue=config.max_queue(),
        keep_alive=config.keep_alive(),
        load_timeout=config.load_timeout(),
        context_limit=config.context_length(),
        **placement,
    )
    return create_app(store, scheduler)


def _on_cluster() -> dict[str, Any]:
    """The scheduler's runner factory for a Ray cluster; the cluster, not this machine's
    memory limit, decides what fits."""
    import functools

    from limner import cluster

    settings = cluster.ClusterSettings.parse(*config.cluster_settings())
    cluster.connect(settings)
    start = functools.partial(cluster.RayRunner.start, settings=settings)
    return {"start_runner": start, "memory_limit": 1 << 62}


def serve(host: str | None = None, port: int | None = None, open_network: bool = False) -> None:
    """Run the server until SIGINT/SIGTERM; shutdown stops every runner. Off loopback, an
    API token is required unless `open_network` (the user's explicit, loud choice)."""
    import uvicorn

    bind_host, bind_port = config.bind()
    try:
        config.draw_engine()  # a typo stops the server here, not each drawing model's load
    except ValueError as error:
        raise LimnerError(str(error)) from None
    if not loopback(host or bind_host) and not config.api_key():
        if not open_network:
            raise LimnerError(
                f"refusing to listen on {host or bind_host} without an API token: anyone who "
                "can reach this machine could use and change your models. Set LIMNER_API_KEY "
                "(clients send it as 'Authorization: Bearer ...'), or pass "
                "--insecure-open-to-network if you really mean it"
            )
        log.warning("LISTENING ON %s WITHOUT AN API TOKEN: anyone on the network can use, "
                    "change and delete your models", host or bind_host)  # fmt: skip
    logging.basicConfig(level=logging.DEBUG if config.debug() else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")  # fmt: skip
    app = build()
    host, port = host or bind_host, port or bind_port
    listening = listen(host, port)
    log.info("limner %s listening on %s:%s, models in %s", version(), host, port, config.models())
    settings = uvicorn.Config(app, host=host, port=port, **uvicorn_options())
    try:
        _server_class()(settings).run(sockets=[listening])
    finally:
        if config.cluster():
            from limner import cluster

            cluster.disconnect()  # a local cluster stops with the server


def listen(host: str, port: int) -> socket.socket:
    """The server's socket, bound here so that a busy port is one line that says what to do
    (as Ollama's `listen tcp ...: bind: address already in use`), not a uvicorn traceback."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listening = socket.socket(family, socket.SOCK_STREAM)
    listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    where = f"[{host}]:{port}" if family == socket.AF_INET6 else f"{host}:{port}"
    try:
        listening.bind((host, port))
    except OSError as exc:
        listening.close()
        why = {errno.EADDRINUSE: "address already in use; another limner (or Ollama) may be "
               "running there: stop it, or set LIMNER_HOST to another port",
               errno.EACCES: "permission denied; ports below 1024 need root: set LIMNER_HOST "
               "to a higher port"}.get(exc.errno or 0, exc.strerror or str(exc))  # fmt: skip
        raise LimnerError(f"listen tcp {where}: bind: {why}") from None
    listening.listen(2048)
    return listening


def uvicorn_options() -> dict[str, Any]:
    """How `limner serve` runs uvicorn: slow and oversized requests are cut off (see
    server/connections.py), and SIGTERM gives requests in progress LIMNER_SHUTDOWN_TIMEOUT
    to finish while new connections are refused."""
    limits = Limits(config.header_timeout(), config.body_timeout(), config.max_header_bytes())
    return {
        "http": guarded(limits),
        # h11's own cap answers 400; ours must come first with 431.
        "h11_max_incomplete_event_size": limits.header_bytes + (1 << 20),
        "timeout_keep_alive": 5,
        "timeout_graceful_shutdown": math.ceil(config.shutdown_timeout()),
        "log_level": "warning",
    }


def _server_class() -> type[Any]:
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, telling streams when the shutdown clock starts."""

        def handle_exit(self, sig: int, frame: Any) -> None:
            SHUTDOWN.begin(config.shutdown_timeout())
            super().handle_exit(sig, frame)

    return Server
