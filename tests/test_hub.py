"""Pulling from the Hugging Face Hub: a fake Hub on loopback, reached through HF_ENDPOINT.

The fake answers the endpoints huggingface_hub 2.x calls to list a repo
(`/api/models/{repo}/revision/{rev}`, `/api/models/{repo}/tree/{rev}`) and the `resolve` URLs
files download from (ranges, `X-Repo-Commit`, `ETag`); on demand it redirects LFS files to
a second server (a CDN), asks for a token, cuts connections or serves a corrupted file.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import huggingface_hub.constants
import ollama
import pytest

import helpers
import limner
from fake_registry import QuietServer, sha
from limner.errors import LimnerError, UnsafeWeights
from limner.store import Store, registry
from limner.store import pull as pulling
from limner.store.described import stored_config
from limner.store.hub import git_blob_id
from limner.types import ProgressResponse

LFS_MIN = 1000  # files this large (and every weights file) are "in LFS"


def folder_files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


class FakeHub:
    """A Hub (or, with no repos, a CDN serving `/cdn/<sha256>`) in a thread on 127.0.0.1."""

    def __init__(self) -> None:
        self.repos: dict[str, dict[str, bytes]] = {}  # "org/repo" -> path -> content
        self.served_content: dict[str, bytes] = {}  # path -> bytes sent instead (corruption)
        self.token: str | None = None
        self.redirect_to: FakeHub | None = None  # LFS files answer 302 to this CDN
        self.cut_after: int | None = None  # LFS bytes sent in all before connections drop
        self.sent = 0
        self.served: Counter[str] = Counter()  # LFS bytes sent, per path
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.lock = threading.Lock()
        self.httpd = QuietServer(("127.0.0.1", 0), _handler(self))
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def publish(self, repo: str, files: dict[str, bytes]) -> None:
        self.repos[repo] = dict(files)

    @staticmethod
    def commit(repo: str) -> str:
        return hashlib.sha1(repo.encode()).hexdigest()

    @staticmethod
    def in_lfs(path: str, data: bytes) -> bool:
        return len(data) >= LFS_MIN or path.endswith((".safetensors", ".bin"))

    def tree(self, repo: str) -> list[dict[str, Any]]:
        entries: list[dict[str, Any]] = []
        folders = sorted({str(Path(p).parent) for p in self.repos[repo]} - {"."})
        for folder in folders:
            entries.append({"type": "directory", "oid": "0" * 40, "path": folder})
        for path, data in sorted(self.repos[repo].items()):
            entry: dict[str, Any] = {"type": "file", "path": path, "size": len(data)}
            if self.in_lfs(path, data):
                entry["oid"] = "1" * 40  # the pointer's git id
                entry["size"] = 134
                entry["lfs"] = {"oid": sha(data)[7:], "size": len(data), "pointerSize": 134}
            else:
                entry["oid"] = git_blob_id(data)
            entries.append(entry)
        return entries

    def resolved(self, method: str) -> list[str]:
        """The paths asked for through `resolve`, in order."""
        out = []
        for command, path, _ in self.requests:
            found = re.fullmatch(r"/[^/]+/[^/]+/resolve/[^/]+/(.+)", urlsplit(path).path)
            if found and command == method:
                out.append(unquote(found.group(1)))
        return out


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"

        def log_message(self, *args: Any) -> None:
            pass

        def do_HEAD(self) -> None:
            self.do_GET()

        def do_GET(self) -> None:
            headers = {k.lower(): v for k, v in self.headers.items()}
            path = unquote(urlsplit(self.path).path)
            with hub.lock:
                hub.requests.append((self.command, self.path, headers))
            if path.startswith("/cdn/"):
                return self.content(path, hub.served_content.get(path[5:], b""), headers)
            if hub.token is not None and headers.get("authorization") != f"Bearer {hub.token}":
                return self.reply(401, b'{"error":"Invalid credentials"}')
            api = re.fullmatch(r"/api/models/([^/]+/[^/]+)/(revision|tree)/([^/]+)", path)
            if api:
                repo, kind, rev = api.groups()
                if repo not in hub.repos:
                    return self.reply(404, b'{"error":"Repository not found"}',
                                      {"X-Error-Code": "RepoNotFound"})  # fmt: skip
                if rev not in ("main", hub.commit(repo)):
                    return self.reply(404, b'{"error":"Invalid rev id"}',
                                      {"X-Error-Code": "RevisionNotFound"})  # fmt: skip
                if kind == "tree":
                    return self.reply(200, json.dumps(hub.tree(repo)).encode())
                siblings = [{"rfilename": p} for p in sorted(hub.repos[repo])]
                info = {"id": repo, "sha": hub.commit(repo), "siblings": siblings}
                return self.reply(200, json.dumps(info).encode())
            got = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
            if got is None or got.group(1) not in hub.repos:
                return self.reply(404, b"not found", {"X-Error-Code": "RepoNotFound"})
            repo, rev, name = got.groups()
            data = hub.repos[repo].get(name)
            if data is None or rev != hub.commit(repo):
                return self.reply(404, b"not found", {"X-Error-Code": "EntryNotFound"})
            data = hub.served_content.get(name, data)
            extra = {"X-Repo-Commit": hub.commit(repo), "ETag": f'"{sha(data)[7:]}"'}
            if hub.in_lfs(name, data) and hub.redirect_to is not None:
                hub.redirect_to.served_content[sha(data)[7:]] = data
                location = f"{hub.redirect_to.url}/cdn/{sha(data)[7:]}"
                return self.reply(302, b"", {**extra, "Location": location})
            return self.content(name, data, headers, extra)

        def content(self, name: str, data: bytes, headers: dict[str, str],
                    extra: dict[str, str] | None = None) -> None:  # fmt: skip
            status, start, body = 200, 0, data
            wanted = re.fullmatch(r"bytes=(\d+)-(\d+)", headers.get("range", ""))
            sent = {"Content-Type": "application/octet-stream", **(extra or {})}
            if wanted:
                start, end = int(wanted.group(1)), int(wanted.group(2))
                status, body = 206, data[start : end + 1]
                sent["Content-Range"] = f"bytes {start}-{start + len(body) - 1}/{len(data)}"
            if self.command == "HEAD":
                return self.reply(status, b"", sent, length=len(body))
            count = len(body)
            if hub.in_lfs(name, data):
                with hub.lock:
                    if hub.cut_after is not None:
                        count = max(0, min(count, hub.cut_after - hub.sent))
                    hub.sent += count
                    hub.served[name] += count
            self.reply(status, body[:count], sent, length=len(body))

        def reply(self, status: int, body: bytes, headers: dict[str, str] | None = None,
                  length: int | None = None) -> None:  # fmt: skip
            self.send_response(status)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body) if length is None else length))
            self.end_headers()
            self.wfile.write(body)

    return Handler


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[FakeHub]:
    """The fake Hub, online (huggingface_hub reads HF_HUB_OFFLINE once, at import), no token."""
    server = FakeHub()
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.setattr(registry, "RETRY_DELAY", 0.01)
    yield server
    server.close()


def statuses(lines: list[Any]) -> list[str]:
    out: list[str] = []
    for line in lines:
        status = line["status"] if isinstance(line, dict) else line.status
        if not out or out[-1] != status:
            out.append(status)
    return out


def steps(store: Store, name: str) -> list[ProgressResponse]:
    return list(pulling.pull(store, name))


def leftovers(store: Store) -> list[str]:
    blobs = store.root / "blobs"
    return sorted(p.name for p in blobs.iterdir() if "partial" in p.name) if blobs.is_dir() else []


def png(color: str = "red") -> bytes:
    return helpers.picture(size=(40, 30), color=color)


BIG = bytes(range(256)) * 160  # 40 KB of "weights" (the fake engine ignores them)
FAKE = {
    "config.json": b'{"model_type": "limner-fake"}',
    "model.safetensors": BIG,
    "pytorch_model.bin": b"\x80\x02decoy" * 300,
    "README.md": b"# a fake model\n",
}


# --- through the official client, real engines -----------------------------------------------


@pytest.mark.slow
def test_a_llava_repo_pulls_with_ollamas_statuses_and_answers_with_a_picture(
    server: Any, store: Store, hub: FakeHub, tmp_path: Path
) -> None:
    from limner.tiny import write_tiny_llava

    files = folder_files(write_tiny_llava(tmp_path / "llava", seed=0))
    hub.publish("llava-hf/tiny-llava", {**files, "pytorch_model.bin": b"\x80\x02" + b"x" * 5000})
    client = ollama.Client(host=server.url)

    lines = list(client.pull("hf.co/llava-hf/tiny-llava", stream=True))
    pulled = [f"pulling {sha(data)[7:19]}" for _, data in sorted(files.items())]
    got = statuses(lines)
    assert got[0] == "pulling manifest"
    assert got[-3:] == ["verifying sha256 digest", "writing manifest", "success"]
    assert sorted(got[1:-3]) == sorted(pulled)
    for path, data in files.items():
        mine = [line for line in lines if line.digest == sha(data)]
        assert mine and mine[-1].completed == mine[-1].total == len(data), path
    assert "pytorch_model.bin" not in hub.resolved("GET") + hub.resolved("HEAD")

    listed = client.list().models
    assert [m.model for m in listed] == ["hf.co/llava-hf/tiny-llava:latest"]
    assert listed[0].details is not None and listed[0].details.family == "llava"
    reply = client.generate(
        model="hf.co/llava-hf/tiny-llava", prompt="What is this?", images=[png()],
        options={"num_predict": 3},
    )  # fmt: skip
    assert reply.done and reply.eval_count


@pytest.mark.slow
def test_a_diffusers_repo_pulls_one_variant_and_draws(
    server: Any, store: Store, hub: FakeHub, tmp_path: Path
) -> None:
    from limner.tiny import write_tiny_sd

    files = folder_files(write_tiny_sd(tmp_path / "sd", seed=0, ip_adapter=False))
    decoys = {
        "unet/diffusion_pytorch_model.fp16.safetensors": b"fp16 weights" * 100,
        "vae/diffusion_pytorch_model.bin": b"\x80\x02" + b"p" * 2000,
        "safety_checker/model.safetensors": b"checker" * 200,
        "safety_checker/config.json": b"{}",
        "README.md": b"# tiny sd\n",
    }
    hub.publish("me/tiny-sd", {**files, **decoys})

    done = ollama.Client(host=server.url).pull("huggingface.co/me/tiny-sd:main", stream=False)
    assert done.status == "success"
    fetched = set(hub.resolved("GET"))
    assert fetched == set(files)  # every file of the pipeline, no decoy
    [entry] = store.entries()
    assert entry.name.display() == "hf.co/me/tiny-sd:main"

    picture = limner.Client(server.url).generate_image("hf.co/me/tiny-sd:main", "a red circle",
                                                       steps=2, seed=1)  # fmt: skip
    assert picture.pil().size == (64, 64)


# --- the store side: selection, verification, resume, auth -------------------------------------


def test_a_fake_repo_pulls_skips_pickle_and_answers(
    server: Any, store: Store, hub: FakeHub
) -> None:
    hub.publish("me/fake", FAKE)
    client = ollama.Client(host=server.url)
    lines = list(client.pull("hf.co/me/fake:latest", stream=True))
    assert statuses(lines) == [
        "pulling manifest", f"pulling {sha(FAKE['config.json'])[7:19]}",
        f"pulling {sha(BIG)[7:19]}", "verifying sha256 digest", "writing manifest", "success",
    ]  # fmt: skip
    assert sorted(hub.resolved("GET")) == ["config.json", "model.safetensors"]
    assert hub.served["pytorch_model.bin"] == 0
    reply = client.generate(model="hf.co/me/fake", prompt="hi hub")
    assert reply.response == "I see 0 picture(s). You said: hi hub"

    before = len(hub.resolved("GET"))
    again = list(client.pull("hf.co/me/fake", stream=True))
    assert statuses(again)[-1] == "success"
    assert hub.resolved("GET")[before:] == ["config.json"]  # the LFS blob is a cache hit


def test_a_repo_with_only_pickle_weights_is_refused(store: Store, hub: FakeHub) -> None:
    hub.publish("me/pickled", {k: v for k, v in FAKE.items() if k != "model.safetensors"})
    with pytest.raises(UnsafeWeights, match=r"only has pickle weights \(pytorch_model\.bin\)"):
        steps(store, "hf.co/me/pickled")
    assert hub.resolved("GET") == [] and store.entries() == []


def test_a_corrupted_lfs_file_is_a_digest_mismatch_and_no_model(store: Store, hub: FakeHub) -> None:
    hub.publish("me/fake", FAKE)
    bad = bytearray(BIG)
    bad[12_345] ^= 0xFF
    hub.served_content["model.safetensors"] = bytes(bad)
    with pytest.raises(LimnerError) as caught:
        steps(store, "hf.co/me/fake")
    assert str(caught.value) == (
        f"digest mismatch, file must be downloaded again: want {sha(BIG)}, got {sha(bytes(bad))}"
    )
    assert store.entries() == [] and not store.blobs.exists(sha(BIG)) and leftovers(store) == []

    del hub.served_content["model.safetensors"]
    assert statuses(steps(store, "hf.co/me/fake"))[-1] == "success"
    assert [e.name.display() for e in store.entries()] == ["hf.co/me/fake:latest"]


def test_a_corrupted_small_file_is_refused(store: Store, hub: FakeHub) -> None:
    hub.publish("me/fake", FAKE)
    hub.served_content["config.json"] = b'{"model_type": "limner-fakE"}'
    with pytest.raises(LimnerError, match="digest mismatch, file must be downloaded again"):
        steps(store, "hf.co/me/fake")
    assert store.entries() == []


def test_an_interrupted_download_resumes(
    store: Store, hub: FakeHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(registry, "MIN_PART_BYTES", 4000)
    monkeypatch.setattr(registry, "MAX_PART_BYTES", 8000)
    monkeypatch.setattr(registry, "PART_RETRIES", 0)
    monkeypatch.setattr(registry, "PARALLEL_PARTS", 1)
    hub.publish("me/fake", FAKE)
    hub.cut_after = 20_500
    with pytest.raises(LimnerError, match=r"part 5 failed"):
        steps(store, "hf.co/me/fake")
    assert hub.served["model.safetensors"] == 20_500 and store.entries() == []
    assert len(leftovers(store)) == 1 + 11  # the partial file, one file per 4 KB part

    hub.cut_after = None
    assert statuses(steps(store, "hf.co/me/fake"))[-1] == "success"
    assert hub.served["model.safetensors"] == len(BIG)  # nothing twice
    assert store.blobs.path(sha(BIG)).read_bytes() == BIG and leftovers(store) == []


def test_hf_token_goes_to_the_hub_and_not_to_the_cdn(
    store: Store, hub: FakeHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    cdn = FakeHub()
    try:
        hub.publish("me/private", FAKE)
        hub.token, hub.redirect_to = "hf_secret", cdn
        with pytest.raises(LimnerError, match="HF_TOKEN"):
            steps(store, "hf.co/me/private")

        monkeypatch.setenv("HF_TOKEN", "hf_secret")
        assert statuses(steps(store, "hf.co/me/private"))[-1] == "success"
        assert all(h.get("authorization") == "Bearer hf_secret" for _, _, h in hub.requests[1:])
        assert cdn.requests and all("authorization" not in h for _, _, h in cdn.requests)
        assert store.blobs.path(sha(BIG)).read_bytes() == BIG
    finally:
        cdn.close()


@pytest.mark.slow
def test_a_gguf_repo_pulls_the_quantization_its_tag_names_with_the_projector(
    server: Any, store: Store, hub: FakeHub, tmp_path: Path
) -> None:
    from limner.tiny import write_tiny_llava_gguf

    q8 = write_tiny_llava_gguf(tmp_path / "q8", quantize="q8_0")
    f16 = write_tiny_llava_gguf(tmp_path / "f16")
    hub.publish("me/tiny-GGUF", {
        "tiny.Q8_0.gguf": (q8 / "model.gguf").read_bytes(),
        "tiny.F16.gguf": (f16 / "model.gguf").read_bytes(),
        "mmproj-tiny-f16.gguf": (f16 / "mmproj.gguf").read_bytes(),
        "README.md": b"# tiny\n",
    })  # fmt: skip
    client = ollama.Client(host=server.url)
    assert statuses(list(client.pull("hf.co/me/tiny-GGUF:Q8_0", stream=True)))[-1] == "success"
    assert sorted(hub.resolved("GET")) == ["mmproj-tiny-f16.gguf", "tiny.Q8_0.gguf"]
    shown = client.show("hf.co/me/tiny-GGUF:Q8_0")
    assert shown.details.quantization_level == "Q8_0"
    assert shown.capabilities == ["completion", "vision"]
    reply = client.generate(model="hf.co/me/tiny-GGUF:Q8_0", prompt="What is this?",
                            images=[png()], options={"num_predict": 3})  # fmt: skip
    assert reply.done and reply.eval_count == 3
    # No tag: Ollama's Q4_K_M is not there, so the nearest quantization the repo has.
    steps(store, "hf.co/me/tiny-GGUF")
    default = store.entry(store.resolve("hf.co/me/tiny-GGUF")).manifest
    assert stored_config(store, default)["file_type"] == "Q8_0"
    with pytest.raises(LimnerError, match=r"no Q2_K GGUF file \(quantizations there: F16, Q8_0\)"):
        steps(store, "hf.co/me/tiny-GGUF:Q2_K")


def test_names_revisions_and_missing_repos(store: Store, hub: FakeHub) -> None:
    hub.publish("me/fake", FAKE)
    commit = FakeHub.commit("me/fake")
    assert statuses(steps(store, f"huggingface.co/me/fake:{commit}"))[-1] == "success"
    assert [e.name.display() for e in store.entries()] == [f"hf.co/me/fake:{commit}"]
    with pytest.raises(LimnerError, match="has no revision 'v9'"):
        steps(store, "hf.co/me/fake:v9")
    with pytest.raises(LimnerError, match="me/nothing not found on the Hugging Face Hub"):
        steps(store, "hf.co/me/nothing")


def test_single_file_checkpoint_repo_takes_the_largest_safetensors(
    store: Store, hub: FakeHub, tmp_path: Path
) -> None:
    from limner.tiny import write_tiny_sd_checkpoint

    checkpoint = write_tiny_sd_checkpoint(tmp_path / "tiny.safetensors").read_bytes()
    hub.publish("me/ckpt", {"tiny.safetensors": checkpoint, "tiny-pruned.ckpt": b"\x80\x02" * 9,
                            "small.safetensors": checkpoint[:2000]})  # fmt: skip
    assert statuses(steps(store, "hf.co/me/ckpt"))[-1] == "success"
    assert hub.resolved("GET") == ["tiny.safetensors"]
    [entry] = store.entries()
    assert stored_config(store, entry.manifest)["model_format"] == "sd-checkpoint"


def test_a_taesd_repo_pulls_its_diffusers_files_only(
    store: Store, hub: FakeHub, tmp_path: Path
) -> None:
    from limner.tiny import write_tiny_taesd

    files = folder_files(write_tiny_taesd(tmp_path / "taesd"))
    weights = files["diffusion_pytorch_model.safetensors"]
    hub.publish("madebyollin/taesd", {**files, "taesd_decoder.safetensors": weights[:2000],
                                      "taesd_decoder.pth": b"\x80\x02" * 9,
                                      "diffusion_pytorch_model.bin": b"\x80\x02" * 9})  # fmt: skip
    assert statuses(steps(store, "hf.co/madebyollin/taesd"))[-1] == "success"
    assert sorted(hub.resolved("GET")) == sorted(files)
    [entry] = store.entries()
    config = stored_config(store, entry.manifest)
    assert (config["model_format"], config["capabilities"]) == ("taesd", [])

    vae = folder_files(tmp_path / "taesd")  # a lone VAE of another class is refused early
    hub.publish("me/vae", {**vae, "config.json": b'{"_class_name": "AutoencoderKL"}'})
    with pytest.raises(LimnerError, match="one diffusers AutoencoderKL, not a pipeline"):
        steps(store, "hf.co/me/vae")
    assert "diffusion_pytorch_model.safetensors" not in hub.resolved("GET")[len(files) :]


def test_offline_mode_is_a_clear_error(
    store: Store, hub: FakeHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub.publish("me/fake", FAKE)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(LimnerError, match="HF_HUB_OFFLINE"):
        steps(store, "hf.co/me/fake")
    assert hub.requests == [] and store.entries() == []


def test_limner_pull_from_the_hub(
    server: Any, store: Store, hub: FakeHub,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    from limner.cli.main import main

    hub.publish("me/fake", FAKE)
    hub.publish("me/pickled", {k: v for k, v in FAKE.items() if k != "model.safetensors"})
    monkeypatch.setenv("LIMNER_HOST", server.url)
    assert main(["pull", "hf.co/me/fake"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "pulling manifest" and out[-3:] == [
        "verifying sha256 digest", "writing manifest", "success",
    ]  # fmt: skip
    assert main(["pull", "hf.co/me/pickled"]) == 1
    assert "only has pickle weights (pytorch_model.bin)" in capsys.readouterr().err
