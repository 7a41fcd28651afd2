"""Pulling models from an Ollama (Docker v2) registry: `limner pull llava`.

The protocol is Ollama's (server/images.go, download.go, auth.go):

1. `GET <scheme>://<host>/v2/<ns>/<model>/manifests/<tag>` with the Docker v2 `Accept`
   header. A 401 carries `WWW-Authenticate: Bearer realm=…,service=…,scope=…`: the realm
   (only on the registry's own host) answers `{"token"}`, sent back as `Authorization:
   Bearer`. A 404 is `pull model manifest: file does not exist`.
2. Each layer, then the config: a stored blob is a cache hit; otherwise it is downloaded
   in up to 16 ranged parts at once (part size total/16, clamped to [MIN_PART_BYTES,
   MAX_PART_BYTES]) into `blobs/sha256-<hex>-partial`, each part's progress kept in
   `…-partial-<N>` (`{"N","Offset","Size","Completed"}`), so an interrupted pull resumes
   where it stopped. The file is hashed before it is renamed to its final name: a wrong
   hash deletes it (`digest mismatch, file must be downloaded again: …`).
3. The manifest is written last, atomically and verbatim, so a failed pull leaves no model.

Everything that comes from the network is checked before it becomes a path or an
allocation: digests against the store's pattern, at most MAX_LAYERS layers, sizes within
[0, MAX_BLOB_BYTES], a manifest within MAX_MANIFEST_BYTES, and never more bytes than a
layer declares. Redirects (a CDN for blobs) are followed by hand: the token is only ever
sent to the registry's own scheme, host and port. Plain http needs `insecure`.

Concurrent pulls of one digest in this process share one download; it stops when the last
pull waiting on it goes away.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from pathlib import Path

import httpx
from pydantic import ValidationError

from limner.errors import InsufficientStorage, InvalidRequest, LimnerError, RequestCanceled
from limner.names import ModelName
from limner.store.blobs import BlobStore, disk_space, file_digest, no_space, normalize
from limner.store.manifests import MANIFEST_TYPE, Layer, Manifest
from limner.store.outbound import check_public, network_failure
from limner.store.store import Store
from limner.types import ProgressResponse

log = logging.getLogger("limner.store.registry")

DEFAULT_SCHEME = "https"
MIN_PART_BYTES = 100 * 1000 * 1000  # Ollama's format.MegaByte is 1000 * 1000
MAX_PART_BYTES = 1000 * 1000 * 1000
MAX_PARTS = 16  # a blob is cut into about this many parts...
PARALLEL_PARTS = 16  # ...and this many are downloaded at once
MAX_LAYERS = 1000
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
MAX_BLOB_BYTES = 2 * 1000**4  # 2 TB: larger than any model, small enough to refuse nonsense
MAX_TOKEN_BYTES = 64 * 1024
MAX_ERROR_BYTES = 1024  # of a registry's error body, quoted in our message
MAX_REDIRECTS = 10
PART_RETRIES = 6  # per part, with exponential back-off from RETRY_DELAY seconds
RETRY_DELAY = 1.0
STALL_SECONDS = 30.0  # no byte for this long: the part is retried
PROGRESS_INTERVAL = 0.1  # seconds between progress lines of a layer being downloaded
SAVE_INTERVAL = 0.5  # seconds between writes of a part's progress file

_REDIRECTS = {301, 302, 303, 307, 308}
_DEFAULT_PORTS = {"http": 80, "https": 443}


def user_agent() -> str:
    try:
        return f"limner/{package_version('limner')}"
    except PackageNotFoundError:
        return "limner/0"


def pull(store: Store, text: str, insecure: bool = False) -> Iterator[ProgressResponse]:
    """Check the name now (errors raise before the first line), then yield Ollama's progress.

    `text` is `[http(s)://][host/][namespace/]model[:tag]`; `http://` needs `insecure`, and
    `insecure` makes every registry request plain http (as Ollama does). Names on the Hugging
    Face Hub are pulled by store/pull.py's dispatch, not here.
    """
    stripped = text.strip()
    name = ModelName.parse(stripped)
    scheme = "http" if stripped.startswith("http://") else DEFAULT_SCHEME
    if scheme == "http" and not insecure:
        raise InvalidRequest("insecure protocol http")
    return _pull(store, name, "http" if insecure else scheme, insecure)


def _pull(store: Store, name: ModelName, scheme: str, insecure: bool) -> Iterator[ProgressResponse]:
    yield ProgressResponse(status="pulling manifest")
    registry = _Registry(name.host, scheme, insecure)
    try:
        raw, manifest = registry.manifest(name)
        for layer in [*manifest.layers, manifest.config]:
            yield from _fetch(store.blobs, registry, name, layer)
    finally:
        registry.close()
    yield ProgressResponse(status="verifying sha256 digest")  # each blob was, before its rename
    yield ProgressResponse(status="writing manifest")
    stored = store.find(name)
    try:
        old = store.entry(stored).manifest.digests() if stored else set()
    except ValueError:
        old = set()  # an unreadable old manifest: keep its blobs
    store.write(name, manifest, raw=raw)
    unused = old - manifest.digests()
    if unused:
        yield ProgressResponse(status="removing unused layers")
        store.prune(unused)
    yield ProgressResponse(status="success")


def _fetch(
    blobs: BlobStore, registry: _Registry, name: ModelName, layer: Layer
) -> Iterator[ProgressResponse]:
    digest, total = normalize(layer.digest), layer.size
    status = f"pulling {digest[7:19]}"

    def line(completed: int) -> ProgressResponse:
        return ProgressResponse(
            status=status, digest=digest, total=total, completed=completed or None
        )

    while True:
        path = blobs.path(digest)
        if path.is_file():
            if path.stat().st_size != total:
                raise LimnerError(
                    f"pull {digest}: the stored blob has {path.stat().st_size} bytes, "
                    f"the manifest says {total}"
                )
            yield line(total)
            return
        download = _join(blobs, digest, total, registry, name)
        if download is not None:
            break
    try:
        # A line every PROGRESS_INTERVAL, changed or not (as Ollama): whoever drives this
        # iterator gets control back that often, and may close it.
        yield line(download.completed)
        while not download.done.wait(PROGRESS_INTERVAL):
            yield line(download.completed)
        if download.error is not None:
            raise LimnerError(download.error.message, download.error.status)
        yield line(total)
    finally:
        download.release()


# --- the registry's HTTP side ------------------------------------------------------------


def _url_key(url: httpx.URL) -> tuple[str, str, int]:
    return url.scheme, url.host.lower(), url.port or _DEFAULT_PORTS.get(url.scheme, 0)


class _Registry:
    """One registry's HTTP session: its origin, its bearer token, redirects done by hand."""

    def __init__(self, host: str, scheme: str, insecure: bool, token: str | None = None) -> None:
        self.host, self.scheme, self.insecure = host, scheme, insecure
        try:
            self.origin = httpx.URL(f"{scheme}://{host}")
        except httpx.InvalidURL as error:  # 0177.0.0.1: an octal IPv4 literal httpx refuses
            raise InvalidRequest(
                f"pull: {host} is not an address limner can reach ({error})"
            ) from None
        self.token = token
        self._lock = threading.Lock()
        self.http = httpx.Client(
            timeout=httpx.Timeout(STALL_SECONDS),
            follow_redirects=False,
            # identity: bytes are counted (and hashed) as sent, never inflated on our side
            headers={"User-Agent": user_agent(), "Accept-Encoding": "identity"},
            limits=httpx.Limits(max_connections=2 * PARALLEL_PARTS),
        )

    def fork(self) -> _Registry:
        """A session of its own (for a download that may outlive this pull), same token."""
        return _Registry(self.host, self.scheme, self.insecure, self.token)

    def close(self) -> None:
        self.http.close()

    def url(self, name: ModelName, kind: str, ref: str) -> str:
        return f"{self.origin}/v2/{name.namespace}/{name.model}/{kind}/{ref}"

    def manifest(self, name: ModelName) -> tuple[bytes, Manifest]:
        what = "pull model manifest"
        try:
            response = self.open("GET", self.url(name, "manifests", name.tag),
                                 {"Accept": MANIFEST_TYPE})  # fmt: skip
            try:
                if response.status_code >= 400:
                    raise status_error(response, what)
                raw = read_limited(response, MAX_MANIFEST_BYTES, "the manifest", what)
            finally:
                response.close()
        except httpx.HTTPError as exc:
            raise network_failure(what, exc) from None
        return raw, parse_manifest(raw)

    def open(self, method: str, url: str, headers: dict[str, str]) -> httpx.Response:
        """Send a request, streamed; follow redirects and one 401 challenge by hand.

        The token goes only to the registry's own origin: a redirect to another host (a
        CDN) is sent without it.
        """
        target = httpx.URL(url)
        challenged = False
        for _ in range(MAX_REDIRECTS + 1):
            self._check_scheme(target)
            check_public(target, "pull")
            own = _url_key(target) == _url_key(self.origin)
            sent = dict(headers)
            token = self.token
            if own and token:
                sent["Authorization"] = f"Bearer {token}"
            request = self.http.build_request(method, target, headers=sent)
            response = self.http.send(request, stream=True)
            if response.status_code in _REDIRECTS and "location" in response.headers:
                location = response.headers["location"]
                response.close()
                try:
                    target = target.join(location)
                except httpx.InvalidURL:
                    raise LimnerError(
                        f"the registry redirected to an invalid URL: {location[:200]!r}"
                    ) from None
                continue
            if response.status_code == 401 and own and not challenged:
                challenge = response.headers.get("www-authenticate", "")
                response.close()
                self._authorize(challenge, token)
                challenged = True
                continue
            return response
        raise LimnerError(f"more than {MAX_REDIRECTS} redirects from {url}")

    def _check_scheme(self, url: httpx.URL) -> None:
        if url.scheme not in ("http", "https"):
            raise LimnerError(f"the registry redirected to an unsupported scheme {url.scheme!r}")
        if url.scheme == "http" and not self.insecure:
            raise LimnerError("insecure protocol http")

    def _authorize(self, challenge: str, used: str | None) -> None:
        """Fetch a bearer token from the challenge's realm, which must be the registry host."""
        with self._lock:
            if self.token != used:
                return  # another request already fetched a fresh token
            scheme, _, rest = challenge.partition(" ")
            params = dict(re.findall(r'(\w+)="([^"]*)"', rest))
            realm = params.get("realm", "")
            if scheme.lower() != "bearer" or not realm:
                raise LimnerError("unauthorized: the registry asked for credentials")
            try:
                realm_url = httpx.URL(realm)
            except httpx.InvalidURL:
                raise LimnerError("unauthorized: invalid token realm") from None
            if self.insecure and realm_url.scheme == "https":
                realm_url = realm_url.copy_with(scheme="http")
            realm_host = realm_url.netloc.decode("ascii", "replace").lower()
            if realm_host != self.host.lower():
                raise LimnerError(
                    f"unauthorized: token realm host {realm_host!r} does not match "
                    f"the registry host {self.host!r}"
                )
            self._check_scheme(realm_url)
            check_public(realm_url, "unauthorized: token request")
            query = {key: params[key] for key in ("service", "scope") if key in params}
            try:
                response = self.http.send(
                    self.http.build_request("GET", realm_url, params=query), stream=True
                )
                try:
                    if response.status_code != 200:
                        raise status_error(response, "unauthorized: token request")
                    body = read_limited(response, MAX_TOKEN_BYTES, "the token", "unauthorized")
                finally:
                    response.close()
            except httpx.HTTPError as exc:
                raise network_failure("unauthorized: token request failed", exc) from None
            self.token = parse_token(body)


def parse_token(body: bytes) -> str:
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    token = (data.get("token") or data.get("access_token")) if isinstance(data, dict) else None
    if not isinstance(token, str) or not re.fullmatch(r"[\x21-\x7e]{1,8192}", token):
        raise LimnerError("unauthorized: the registry sent no usable token")
    return token


def status_error(response: httpx.Response, what: str) -> LimnerError:
    """Ollama's wording: 404 is `file does not exist`, others `<code>: <body>`."""
    if response.status_code == 404:
        return LimnerError(f"{what}: file does not exist")
    if response.status_code == 401:
        return LimnerError(f"{what}: unauthorized")
    try:
        body = read_limited(response, MAX_ERROR_BYTES, "", what, truncate=True)
    except (LimnerError, httpx.HTTPError):
        body = b""
    text = re.sub(r"[\x00-\x1f\x7f]+", " ", body.decode("utf-8", "replace")).strip()
    return LimnerError(f"{what}: {response.status_code}: {text}".rstrip(": "))


def read_limited(
    response: httpx.Response, limit: int, label: str, what: str, truncate: bool = False
) -> bytes:
    """The body, refused (or cut, with `truncate`) beyond `limit` bytes, never buffered past it."""
    declared = response.headers.get("content-length", "")
    if not truncate and declared.isdigit() and int(declared) > limit:
        raise LimnerError(f"{what}: {label} is larger than {limit} bytes")
    body = bytearray()
    for chunk in response.iter_raw():
        body += chunk
        if len(body) > limit:
            if truncate:
                return bytes(body[:limit])
            raise LimnerError(f"{what}: {label} is larger than {limit} bytes")
    return bytes(body)


def parse_manifest(raw: bytes) -> Manifest:
    """A Docker v2 manifest whose every digest and size is safe to use."""
    what = "pull model manifest"
    try:
        data = json.loads(raw)
    except ValueError:
        raise LimnerError(f"{what}: the registry sent invalid JSON") from None
    if not isinstance(data, dict):
        raise LimnerError(f"{what}: not a manifest")
    layers = data.get("layers")
    if isinstance(layers, list) and len(layers) > MAX_LAYERS:
        raise LimnerError(f"{what}: {len(layers)} layers, more than the {MAX_LAYERS} allowed")
    try:
        manifest = Manifest.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise LimnerError(f"{what}: not a Docker v2 manifest ({where}: {first['msg']})") from None
    total = 0
    for layer in [*manifest.layers, manifest.config]:
        try:
            canonical = normalize(layer.digest) == layer.digest  # the store's own pattern
        except InvalidRequest:
            canonical = False
        if not canonical:
            raise LimnerError(f"{what}: invalid digest {layer.digest[:100]!r}")
        if not 0 <= layer.size <= MAX_BLOB_BYTES:
            raise LimnerError(f"{what}: invalid size {layer.size} for {layer.digest}")
        total += layer.size
    if total > MAX_BLOB_BYTES:
        raise LimnerError(f"{what}: the model is larger than {MAX_BLOB_BYTES} bytes")
    return manifest


# --- downloads ---------------------------------------------------------------------------


@dataclass
class _Part:
    """One byte range of a blob, with its progress file `…-partial-<n>`."""

    n: int
    offset: int
    size: int
    completed: int
    path: Path

    def save(self) -> None:
        data = {"N": self.n, "Offset": self.offset, "Size": self.size, "Completed": self.completed}
        self.path.write_text(json.dumps(data))


def part_size(total: int) -> int:
    return min(max(total // MAX_PARTS, MIN_PART_BYTES), MAX_PART_BYTES)


def _part_files(partial: Path) -> list[Path]:
    return list(partial.parent.glob(f"{partial.name}-*"))


def _remove_partial(partial: Path) -> None:
    for path in _part_files(partial):
        path.unlink(missing_ok=True)
    partial.unlink(missing_ok=True)


def _new_parts(partial: Path, total: int) -> list[_Part]:
    _remove_partial(partial)
    size = part_size(total)
    parts = [
        _Part(n, offset, min(size, total - offset), 0, partial.with_name(f"{partial.name}-{n}"))
        for n, offset in enumerate(range(0, total, size))
    ]
    for part in parts:
        part.save()
    return parts


def _load_parts(partial: Path, total: int) -> list[_Part] | None:
    """The parts of an interrupted download, or None unless they tile the file exactly."""
    try:
        if not partial.is_file() or partial.stat().st_size != total:
            return None
        found: dict[int, _Part] = {}
        for path in _part_files(partial):
            suffix = path.name[len(partial.name) + 1 :]
            if not suffix.isdigit() or path.stat().st_size > 1024:
                return None
            data = json.loads(path.read_text())
            fields = [data.get(key) for key in ("N", "Offset", "Size", "Completed")]
            if not all(type(value) is int for value in fields) or fields[0] != int(suffix):
                return None
            n, offset, size, completed = fields
            found[n] = _Part(n, offset, size, completed, path)
    except (OSError, ValueError, AttributeError):
        return None
    parts = [found.get(n) for n in range(len(found))]
    offset = 0
    for part in parts:
        if (
            part is None
            or part.offset != offset
            or part.size <= 0
            or not 0 <= part.completed <= part.size
        ):
            return None
        offset += part.size
    if offset != total or (total and not parts):
        return None
    return [p for p in parts if p is not None]


def _write_at(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


class _Corrupt(LimnerError):
    """The registry broke the protocol mid-blob: what it sent so far cannot be trusted."""


class _Retry(Exception):
    """A part failure worth trying again: a dropped connection, a short body, a 5xx."""


_DOWNLOADS: dict[tuple[str, str], _Download] = {}
_DOWNLOADS_LOCK = threading.Lock()


def _join(
    blobs: BlobStore, digest: str, total: int, registry: _Registry, name: ModelName
) -> _Download | None:
    """The download of `digest` in progress (or a new one); None: wait over, look again."""
    key = (str(blobs.root.resolve()), digest)
    with _DOWNLOADS_LOCK:
        current = _DOWNLOADS.get(key)
        if current is None:
            current = _Download(key, blobs, digest, total, registry.fork(), name)
            _DOWNLOADS[key] = current
            current.thread.start()
            return current
        if not current.halt.is_set() and current.total == total:
            current.watchers += 1
            return current
    current.done.wait()  # a download being cancelled, or one of another size: let it end
    return None


class _Download:
    """One blob coming in: parts in parallel threads, hashed, then renamed into place."""

    def __init__(
        self,
        key: tuple[str, str],
        blobs: BlobStore,
        digest: str,
        total: int,
        registry: _Registry,
        name: ModelName,
    ) -> None:
        self.key, self.blobs, self.digest, self.total = key, blobs, digest, total
        self.registry = registry
        self.url = registry.url(name, "blobs", digest)
        self.short = digest[7:19]
        self.completed = 0
        self.watchers = 1
        self.error: LimnerError | None = None
        self.done = threading.Event()
        self.halt = threading.Event()  # cancelled, or a part failed: every part stops
        self._lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, name=f"pull {self.short}", daemon=True)

    def release(self) -> None:
        """A pull stops watching; the last one to go cancels the download."""
        with _DOWNLOADS_LOCK:
            self.watchers -= 1
            if self.watchers == 0 and not self.done.is_set():
                self.halt.set()

    def _run(self) -> None:
        try:
            self._download()
        except LimnerError as exc:
            self.error = exc
        except OSError as exc:
            self.error = LimnerError(f"pull {self.short}: {exc.strerror or exc}")
        except httpx.HTTPError as exc:
            self.error = network_failure(f"pull {self.short}", exc)
        except Exception:
            log.exception("pulling %s failed", self.digest)
            self.error = LimnerError(f"pull {self.short}: internal error; see the server log")
        finally:
            self.registry.close()
            with _DOWNLOADS_LOCK:
                if _DOWNLOADS.get(self.key) is self:
                    del _DOWNLOADS[self.key]
                self.done.set()

    def _download(self) -> None:
        final = self.blobs.path(self.digest)
        if final.is_file():
            self.completed = self.total
            return
        self.blobs.root.mkdir(parents=True, exist_ok=True)
        partial = final.with_name(final.name + "-partial")
        parts = _load_parts(partial, self.total) or _new_parts(partial, self.total)
        self.completed = sum(part.completed for part in parts)
        needed, free = self.total - self.completed, shutil.disk_usage(self.blobs.root).free
        if needed > free:
            raise InsufficientStorage(no_space(self.blobs.root, needed, f"pull {self.short}"))
        try:  # a disk filled by others meanwhile: the parts so far stay, for the next pull
            with disk_space(self.blobs.root, needed, f"pull {self.short}"):
                fd = os.open(partial, os.O_RDWR | os.O_CREAT, 0o644)
                try:
                    if os.fstat(fd).st_size != self.total:
                        os.ftruncate(fd, self.total)
                    self._parts(fd, [part for part in parts if part.completed < part.size])
                    os.fsync(fd)
                finally:
                    os.close(fd)
        except _Corrupt:
            _remove_partial(partial)  # every part has stopped: nothing writes to it any more
            raise
        got = file_digest(partial)
        if got != self.digest:
            _remove_partial(partial)
            raise LimnerError(
                f"digest mismatch, file must be downloaded again: want {self.digest}, got {got}"
            )
        os.replace(partial, final)
        _remove_partial(partial)

    def _parts(self, fd: int, todo: list[_Part]) -> None:
        if not todo:
            return
        workers = max(1, min(PARALLEL_PARTS, len(todo)))
        with futures.ThreadPoolExecutor(workers, f"pull {self.short}") as pool:
            running = [pool.submit(self._part, fd, part) for part in todo]
            finished, _ = futures.wait(running, return_when=futures.FIRST_EXCEPTION)
            if any(f.exception() is not None for f in finished):
                self.halt.set()
            futures.wait(running)
        errors = [e for e in (f.exception() for f in running) if e is not None]
        # The first real failure, rather than the cancellations it caused in other parts.
        errors.sort(key=lambda e: isinstance(e, RequestCanceled))
        if errors:
            raise errors[0]

    def _part(self, fd: int, part: _Part) -> None:
        failures = 0
        while part.completed < part.size:
            if self.halt.is_set():
                raise RequestCanceled()
            before = part.completed
            try:
                self._stream(fd, part)
            except (_Retry, httpx.TransportError) as exc:
                failures = 1 if part.completed > before else failures + 1
                if failures > PART_RETRIES:
                    raise LimnerError(f"pull {self.short}: part {part.n} failed: {exc}") from None
                log.info("%s part %d failed (%s); retrying...", self.short, part.n, exc)
                if self.halt.wait(RETRY_DELAY * 2 ** (failures - 1)):
                    raise RequestCanceled() from None
            finally:
                part.save()

    def _stream(self, fd: int, part: _Part) -> None:
        start, end = part.offset + part.completed, part.offset + part.size - 1
        response = self.registry.open("GET", self.url, {"Range": f"bytes={start}-{end}"})
        try:
            self._check_response(response, start, part)
            saved = time.monotonic()
            for chunk in response.iter_raw():
                if len(chunk) > part.size - part.completed:
                    raise _Corrupt(
                        f"pull {self.short}: the registry sent more bytes than the "
                        f"{self.total} the manifest declares"
                    )
                _write_at(fd, chunk, part.offset + part.completed)
                part.completed += len(chunk)
                with self._lock:
                    self.completed += len(chunk)
                if time.monotonic() - saved > SAVE_INTERVAL:
                    part.save()
                    saved = time.monotonic()
                if self.halt.is_set():  # after keeping the bytes already received
                    raise RequestCanceled()
        finally:
            response.close()
        if part.completed < part.size:
            raise _Retry("the connection closed before the part was complete")

    def _check_response(self, response: httpx.Response, start: int, part: _Part) -> None:
        status = response.status_code
        if status == 206:
            match = re.match(r"bytes (\d+)-", response.headers.get("content-range", ""))
            if match is not None and int(match.group(1)) != start:
                raise _Corrupt(f"pull {self.short}: the registry sent the wrong byte range")
            return
        if status == 200:
            if start != 0 or part.size != self.total:
                raise LimnerError(f"pull {self.short}: the registry ignored the byte range")
            return
        if status >= 500 or status == 429:
            raise _Retry(f"the registry answered {status}")
        raise status_error(response, f"pull {self.short}")


def downloads_in_progress() -> int:
    """How many blob downloads this process runs (for tests and diagnostics)."""
    with _DOWNLOADS_LOCK:
        return len(_DOWNLOADS)
