"""Pulling models from the Hugging Face Hub: `limner pull hf.co/ORG/REPO[:revision]`.

`huggingface.co/…` works too; the model is stored as `hf.co/ORG/REPO:<tag>`, the tag `latest`
meaning the revision `main`. huggingface_hub lists the repo (`HfApi.model_info` pins the
revision to a commit, `HfApi.list_repo_tree` gives every file's size and, for LFS files, its
sha256), honouring `HF_ENDPOINT`, `HF_TOKEN` and `HF_HUB_OFFLINE`. The files are then
downloaded from `{endpoint}/{repo}/resolve/{commit}/{path}` with registry.py's machinery, so
a Hub pull streams the same progress as an Ollama pull, resumes from the same partial files
and verifies the same way: an LFS file must hash to the sha256 the tree lists (else `digest
mismatch, file must be downloaded again`); a small (git) file must match its git blob id.
The token only goes to the endpoint's own origin, never to a CDN it redirects to.

Which files a model needs:
- a diffusers repo (`model_index.json`): model_index.json, then for each component it lists
  (but `safety_checker`) the folder's json/txt/tokenizer files and one weights variant
  (full precision unless only fp16 exists; `diffusion_pytorch_model`/`model` first);
- a tiny autoencoder (`config.json` naming diffusers' AutoencoderTiny beside top-level
  `diffusion_pytorch_model*.safetensors`, as madebyollin/taesd): the config and one weights
  variant, to be added to drawing models (`limner create --tiny-vae`); another lone diffusers
  component (a VAE, a UNet) is refused;
- a transformers repo (`config.json`, a llava-hf LLaVA): config, safetensors (+ index),
  tokenizer, processor and generation files, at the top of the repo;
- a GGUF repo (`.gguf` files, or a tag that names a quantization, `hf.co/ORG/REPO:Q8_0`):
  the model file of that quantization (without one, Ollama's default Q4_K_M or the nearest
  there is) and the repo's vision projector `mmproj*.gguf` if it has one; the chat template
  travels inside the GGUF;
- otherwise a single-file checkpoint: the largest `.safetensors`.
Pickle weights (`.bin`, `.pt`, `.ckpt`, `.pth`) are never downloaded: a repo (or a needed
component) that has nothing else is refused. The manifest and config are built as
/api/create builds them (store/create.py), and written last.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import posixpath
import re
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from urllib.parse import quote

import httpx

from limner.errors import InvalidRequest, LimnerError, UnsafeWeights
from limner.names import DEFAULT_TAG, ModelName
from limner.store import registry
from limner.store.create import check_relative, manifest_for_blobs
from limner.store.formats import TINY_VAE_CLASS
from limner.store.manifests import FILE, Layer
from limner.store.outbound import check_public, network_failure
from limner.store.store import Store
from limner.types import ProgressResponse

log = logging.getLogger("limner.store.hub")

HUB_HOSTS = ("hf.co", "huggingface.co")
STORED_HOST = "hf.co"
DEFAULT_REVISION = "main"
DEFAULT_ENDPOINT = "https://huggingface.co"
PICKLE_SUFFIXES = (".bin", ".pt", ".ckpt", ".pth", ".pkl", ".pickle")
MAX_SMALL_BYTES = 64 * 1024 * 1024  # a file outside LFS: read into memory, hashed
SKIPPED_COMPONENTS = {"safety_checker"}
TRANSFORMERS_FILES = {
    "config.json",
    "generation_config.json",
    "added_tokens.json",
    "special_tokens_map.json",
    "preprocessor_config.json",
    "processor_config.json",
    "vocab.json",
    "merges.txt",
}
_SHARD = re.compile(r"-\d+-of-\d+$")
_COMPONENT_WEIGHTS = re.compile(r"diffusion_pytorch_model(\.[\w-]+)?\.safetensors")
QUANT_TAG = re.compile(r"(?i)i?q\d(_[a-z0-9]+)*|bf16|f16|f32")
_QUANT_IN_NAME = re.compile(r"(?:^|[-_.])(I?Q\d(?:_[A-Z0-9]+)*|BF16|F16|F32)(?=$|[-_.])")
_SPLIT_GGUF = re.compile(r"-\d{5}-of-\d{5}\.gguf$")
# Which quantization a GGUF pull without one takes: Ollama's default, then the nearest.
GGUF_PREFERENCE = ["Q4_K_M", "Q4_K_S", "Q5_K_M", "Q4_0", "Q5_K_S", "Q6_K", "Q8_0", "IQ4_XS",
                   "Q3_K_M", "BF16", "F16", "F32"]  # fmt: skip
_COMMIT = re.compile(r"[0-9a-f]{40}")
_SHA256 = re.compile(r"[0-9a-f]{64}")


def is_hub(name: ModelName) -> bool:
    return name.host.lower() in HUB_HOSTS


def pull(store: Store, name: ModelName) -> Iterator[ProgressResponse]:
    """Ollama's pull progress for a Hub repo; `name` is `hf.co/ORG/REPO[:revision]`."""
    return _pull(store, ModelName(STORED_HOST, name.namespace, name.model, name.tag))


@dataclass
class _File:
    path: str
    size: int
    sha256: str | None  # LFS files: the content's sha256 (hex)
    oid: str | None  # the git blob id
    digest: str | None = None  # set once stored


def _pull(store: Store, name: ModelName) -> Iterator[ProgressResponse]:
    yield ProgressResponse(status="pulling manifest")
    repo = f"{name.namespace}/{name.model}"
    # As Ollama reads `hf.co/ORG/REPO:Q4_K_M`: a tag that names a quantization picks a GGUF.
    quant = name.tag.upper() if QUANT_TAG.fullmatch(name.tag) else None
    revision = DEFAULT_REVISION if name.tag == DEFAULT_TAG or quant else name.tag
    endpoint, token = hub_endpoint(), hub_token()
    commit, files = _listing(endpoint, token, repo, revision)
    hub = _Hub(httpx.URL(endpoint), token, repo, commit)
    digests: dict[str, str] = {}
    try:
        for entry in _choose(store, hub, files, quant):
            digests[entry.path] = yield from _fetch(store, hub, name, entry)
    finally:
        hub.close()
    yield ProgressResponse(status="verifying sha256 digest")  # each file was, as it landed
    yield ProgressResponse(status="writing manifest")
    manifest = manifest_for_blobs(store, digests)
    stored = store.find(name)
    try:
        old = store.entry(stored).manifest.digests() if stored else set()
    except ValueError:
        old = set()
    store.write(name, manifest)
    unused = old - manifest.digests()
    if unused:
        yield ProgressResponse(status="removing unused layers")
        store.prune(unused)
    yield ProgressResponse(status="success")


def hub_endpoint() -> str:
    """`HF_ENDPOINT`, read at each pull (huggingface_hub reads it once, at import)."""
    endpoint = (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).strip().rstrip("/")
    if not endpoint.startswith(("http://", "https://")):
        raise LimnerError(f"HF_ENDPOINT must be an http(s) URL, not {endpoint[:100]!r}")
    return endpoint


def hub_token() -> str | None:
    """huggingface_hub's token: `HF_TOKEN`, else the one `hf auth login` saved."""
    _require_hub_library()
    from huggingface_hub import get_token

    token: str | None = get_token()
    return token or None


def _require_hub_library() -> None:
    try:
        import huggingface_hub  # noqa: F401  (an optional dependency: the `engines` extra)
    except ImportError:
        raise LimnerError(
            "pulling from the Hugging Face Hub needs huggingface_hub: pip install 'limner[engines]'"
        ) from None


# --- listing, through huggingface_hub ------------------------------------------------------


def _listing(endpoint: str, token: str | None, repo: str, revision: str) -> tuple[str, list[_File]]:
    """The commit `revision` points at, and every file of the repo at that commit."""
    from huggingface_hub import HfApi, RepoFile, constants
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    what = "pull model manifest"
    check_public(endpoint, what)
    offline = getattr(constants, "is_offline_mode", lambda: constants.HF_HUB_OFFLINE)
    if offline():
        raise LimnerError(f"{what}: the Hugging Face Hub is off (HF_HUB_OFFLINE is set)")
    api = HfApi(endpoint=endpoint, token=token or False)
    try:
        info = api.model_info(repo, revision=revision)
        commit = info.sha or ""
        if not _COMMIT.fullmatch(commit):
            raise LimnerError(f"{what}: the Hub sent no commit for {repo}@{revision}")
        tree = list(api.list_repo_tree(repo, revision=commit, recursive=True))
    except GatedRepoError:
        raise LimnerError(
            f"{what}: {repo} is gated: accept its terms on the Hub and set HF_TOKEN", 401
        ) from None
    except RepositoryNotFoundError:
        raise LimnerError(
            f"{what}: {repo} not found on the Hugging Face Hub (a private repo needs HF_TOKEN)",
            404,
        ) from None
    except RevisionNotFoundError:
        raise LimnerError(f"{what}: {repo} has no revision {revision!r}", 404) from None
    except OfflineModeIsEnabled:
        raise LimnerError(f"{what}: the Hugging Face Hub is off (HF_HUB_OFFLINE is set)") from None
    except HfHubHTTPError as exc:
        if getattr(exc.response, "status_code", None) in (401, 403):
            raise LimnerError(
                f"{what}: unauthorized; set HF_TOKEN to a token that can read {repo}", 401
            ) from None
        raise LimnerError(f"{what}: {str(exc).splitlines()[0][:300]}") from None
    except httpx.HTTPError as exc:
        raise network_failure(what, exc) from None
    except (OSError, ValueError, KeyError, TypeError) as exc:  # transport, or a bad answer
        raise LimnerError(f"{what}: the Hub could not be read: {exc}") from None
    if len(tree) > 100 * registry.MAX_LAYERS:
        raise LimnerError(f"{what}: {repo} has too many files ({len(tree)})")
    files = []
    for item in tree:
        if not isinstance(item, RepoFile):
            continue  # a folder
        path, size = str(item.path), item.size
        try:
            if check_relative(path) != path:
                raise InvalidRequest(path)
        except InvalidRequest:
            raise LimnerError(f"{what}: invalid file path {path[:200]!r}") from None
        lfs, sha256 = item.lfs, None
        if lfs is not None:
            sha256, size = str(lfs.sha256), lfs.size
            if not _SHA256.fullmatch(sha256):
                raise LimnerError(f"{what}: invalid sha256 for {path!r}")
        if not isinstance(size, int) or not 0 <= size <= registry.MAX_BLOB_BYTES:
            raise LimnerError(f"{what}: invalid size for {path!r}")
        oid = item.blob_id if isinstance(item.blob_id, str) else None
        files.append(_File(path, size, sha256, oid))
    return commit, files


# --- which files a model needs -------------------------------------------------------------


def is_pickle(path: str) -> bool:
    return path.lower().endswith(PICKLE_SUFFIXES)


def _refuse_pickle(where: str, files: list[_File]) -> None:
    pickles = sorted(f.path for f in files if is_pickle(f.path))
    if pickles:
        shown = ", ".join(pickles[:3]) + (", …" if len(pickles) > 3 else "")
        raise UnsafeWeights(
            f"{where} only has pickle weights ({shown}), which can run code when loaded; "
            "limner pulls safetensors only"
        )


def _choose(store: Store, hub: _Hub, files: list[_File], quant: str | None) -> list[_File]:
    by_path = {f.path: f for f in files}
    if quant or (
        any(f.path.endswith(".gguf") for f in files)
        and not {"model_index.json", "config.json"} & set(by_path)
    ):
        return _gguf(hub.repo, files, quant)
    if "model_index.json" in by_path:
        index = by_path["model_index.json"]
        data = _download_small(store, hub, index)
        try:
            components = json.loads(data)
        except ValueError:
            raise LimnerError("pull model manifest: model_index.json is not JSON") from None
        if not isinstance(components, dict):
            raise LimnerError("pull model manifest: model_index.json is not an object")
        return [index, *_diffusers(hub.repo, components, files)]
    component = [f for f in files if _COMPONENT_WEIGHTS.fullmatch(f.path)]
    if "config.json" in by_path and component:
        return [by_path["config.json"], *_component(store, hub, by_path["config.json"], component)]
    if "config.json" in by_path:
        return _transformers(hub.repo, files)
    return _single_file(hub.repo, files)


def _component(store: Store, hub: _Hub, config: _File, weights: list[_File]) -> list[_File]:
    """A lone diffusers model at the top of the repo: one variant of its weights if it is a
    tiny autoencoder (a part of drawing models), else refused before any weights download."""
    try:
        data = json.loads(_download_small(store, hub, config))
    except ValueError:
        raise LimnerError("pull model manifest: config.json is not JSON") from None
    name = data.get("_class_name") if isinstance(data, dict) else None
    if name != TINY_VAE_CLASS:
        raise LimnerError(
            f"pull model manifest: {hub.repo} is one diffusers {name or 'model'}, not a "
            f"pipeline; limner pulls whole pipelines (model_index.json) and tiny autoencoders "
            f"({TINY_VAE_CLASS})"
        )
    return _one_variant(weights, _best_variant(weights))


def _gguf(repo: str, files: list[_File], quant: str | None) -> list[_File]:
    """A GGUF repo: the model file of the quantization asked for (else Ollama's default,
    Q4_K_M, or the nearest there is) and the repo's vision projector (`mmproj*.gguf`)."""
    ggufs = [f for f in files if f.path.endswith(".gguf")]
    projectors = [f for f in ggufs if "mmproj" in posixpath.basename(f.path).lower()]
    models = {_quant_of(f.path): f for f in sorted(ggufs, key=lambda f: f.path)
              if f not in projectors and not _SPLIT_GGUF.search(f.path)}  # fmt: skip
    available = ", ".join(sorted(q for q in models if q)) or "none"
    wanted = [quant] if quant else [q for q in GGUF_PREFERENCE if q in models]
    if not wanted or wanted[0] not in models:
        raise LimnerError(
            f"pull model manifest: {repo} has no {quant or 'usable'} GGUF file "
            f"(quantizations there: {available})"
        )
    chosen = [models[wanted[0]]]
    if projectors:  # the widest projector: f16 before a quantized one
        chosen.append(min(projectors, key=lambda f: ("f16" not in f.path.lower(), f.path)))
    return chosen


def _quant_of(path: str) -> str:
    """The quantization a GGUF file name says (`….Q4_K_M.gguf` -> "Q4_K_M"), or ""."""
    stem = posixpath.basename(path).removesuffix(".gguf").upper()
    found = _QUANT_IN_NAME.search(stem)
    return found.group(1) if found else ""


def _transformers(repo: str, files: list[_File]) -> list[_File]:
    top = [f for f in files if "/" not in f.path and not is_pickle(f.path)]
    if not any(f.path.endswith(".safetensors") for f in top):
        _refuse_pickle(repo, files)
        raise LimnerError(f"pull model manifest: {repo} has no safetensors weights")

    def needed(name: str) -> bool:
        return (
            name in TRANSFORMERS_FILES
            or name.endswith((".safetensors", ".safetensors.index.json"))
            or name.startswith(("tokenizer", "chat_template"))
        )

    return [f for f in top if needed(f.path)]


def _diffusers(repo: str, index: dict[str, object], files: list[_File]) -> list[_File]:
    chosen: list[_File] = []
    for component, value in sorted(index.items()):
        if component.startswith("_") or component in SKIPPED_COMPONENTS:
            continue
        if not isinstance(value, list) or len(value) != 2 or value[0] is None:
            continue  # a setting, or a component the pipeline goes without
        if "/" in component or check_relative(component) != component:
            raise LimnerError(f"pull model manifest: invalid component {component[:100]!r}")
        inside = [f for f in files if posixpath.dirname(f.path) == component]
        weights = [f for f in inside if f.path.endswith(".safetensors")]
        variant = _best_variant(weights) if weights else ""
        if weights:
            chosen += _one_variant(weights, variant)
        else:
            _refuse_pickle(f"{repo}: {component}/", inside)
        for f in inside:
            name = posixpath.basename(f.path)
            if not name.endswith((".json", ".txt", ".model")) or is_pickle(name):
                continue
            if ".index." in name and not name.endswith(
                ".safetensors.index.json" if not variant else f".safetensors.index.{variant}.json"
            ):
                continue  # the index of weights not pulled
            chosen.append(f)
    return chosen


def _variant(path: str) -> str:
    """`diffusion_pytorch_model.fp16.safetensors` -> "fp16"; no variant -> ""."""
    parts = posixpath.basename(path).removesuffix(".safetensors").split(".")
    return parts[-1] if len(parts) > 1 else ""


def _best_variant(weights: list[_File]) -> str:
    variants = {_variant(f.path) for f in weights}
    return "" if "" in variants else "fp16" if "fp16" in variants else sorted(variants)[0]


def _one_variant(weights: list[_File], variant: str) -> list[_File]:
    picked = [f for f in weights if _variant(f.path) == variant]

    def base(path: str) -> str:
        return _SHARD.sub("", posixpath.basename(path).split(".")[0])

    usual = [f for f in picked if base(f.path) in ("diffusion_pytorch_model", "model")]
    return usual or picked


def _single_file(repo: str, files: list[_File]) -> list[_File]:
    weights = [f for f in files if f.path.endswith(".safetensors")]
    if not weights:
        _refuse_pickle(repo, files)
        raise LimnerError(
            f"pull model manifest: {repo} has no model_index.json, no config.json and no "
            ".safetensors checkpoint"
        )
    return [max(weights, key=lambda f: (f.size, f.path))]


# --- downloads -----------------------------------------------------------------------------


class _Hub(registry._Registry):
    """The endpoint's HTTP session: the token only to its origin, files by resolve URL."""

    def __init__(
        self,
        endpoint: httpx.URL,
        token: str | None,
        repo: str,
        commit: str,
        paths: dict[str, str] | None = None,
    ) -> None:
        host = endpoint.netloc.decode("ascii")
        super().__init__(host, endpoint.scheme, endpoint.scheme == "http", token)
        self.endpoint, self.repo, self.commit = endpoint, repo, commit
        self.base = str(endpoint).rstrip("/")
        self.paths: dict[str, str] = {} if paths is None else paths  # digest -> a file's path

    def fork(self) -> _Hub:
        return _Hub(self.endpoint, self.token, self.repo, self.commit, self.paths)

    def file_url(self, path: str) -> str:
        return f"{self.base}/{self.repo}/resolve/{self.commit}/{quote(path)}"

    def url(self, name: ModelName, kind: str, ref: str) -> str:
        return self.file_url(self.paths[ref])  # the blob's download (registry._Download)

    def _authorize(self, challenge: str, used: str | None) -> None:
        raise LimnerError(
            "unauthorized: the Hub asked for credentials; set HF_TOKEN for private or gated repos"
        )


def _fetch(
    store: Store, hub: _Hub, name: ModelName, entry: _File
) -> Generator[ProgressResponse, None, str]:
    """Download one file (or find it stored); returns its digest."""
    if entry.sha256 is not None:  # LFS: a known digest, ranged parts, resumable
        digest = "sha256:" + entry.sha256
        hub.paths.setdefault(digest, entry.path)
        layer = Layer(mediaType=FILE, digest=digest, size=entry.size, name=entry.path)
        yield from registry._fetch(store.blobs, hub, name, layer)
        return digest
    if entry.digest is None:
        _download_small(store, hub, entry)
    assert entry.digest is not None
    yield ProgressResponse(
        status=f"pulling {entry.digest[7:19]}",
        digest=entry.digest,
        total=entry.size,
        completed=entry.size or None,
    )
    return entry.digest


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\x00" % len(data) + data, usedforsecurity=False).hexdigest()


def _download_small(store: Store, hub: _Hub, entry: _File) -> bytes:
    """A file kept in git (not LFS): read whole, checked against its size and git blob id."""
    what = f"pull {entry.path}"
    if entry.size > MAX_SMALL_BYTES:
        raise LimnerError(f"{what}: {entry.size} bytes outside LFS, more than {MAX_SMALL_BYTES}")
    try:
        response = hub.open("GET", hub.file_url(entry.path), {})
        try:
            if response.status_code >= 400:
                raise registry.status_error(response, what)
            data = registry.read_limited(response, MAX_SMALL_BYTES, "the file", what)
        finally:
            response.close()
    except httpx.HTTPError as exc:
        raise network_failure(what, exc) from None
    if len(data) != entry.size or (
        entry.oid and re.fullmatch(r"[0-9a-f]{40}", entry.oid) and git_blob_id(data) != entry.oid
    ):
        raise LimnerError(
            f"digest mismatch, file must be downloaded again: {entry.path} should be "
            f"{entry.size} bytes with git id {entry.oid}, got {len(data)} bytes "
            f"with git id {git_blob_id(data)}"
        )
    entry.digest, _ = store.blobs.write_bytes(data)
    return data
