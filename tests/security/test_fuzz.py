"""Property tests of the parsers that turn untrusted bytes into paths and allocations
(docs/reliability.md §6 IN-07 and ST-08): model names, digests, manifests, GGUF headers and
picture headers. Each property states its invariant in its docstring; a quick variant runs
with the suite and a `slow` one runs 10,000 examples or more.

Every invariant is shown able to fail: the `..._catches_...` tests feed it a value that
breaks it.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from limner import pictures
from limner.errors import InvalidImage, InvalidRequest, LimnerError, TooLarge
from limner.names import ModelName
from limner.store import Store
from limner.store.blobs import BlobStore, normalize
from limner.store.gguf import gguf_info
from limner.store.manifests import Manifest
from limner.store.registry import parse_manifest

QUICK = settings(max_examples=500, deadline=None, suppress_health_check=list(HealthCheck))
SLOW = settings(max_examples=10_000, deadline=None, suppress_health_check=list(HealthCheck))
ROOT = Path("/srv/limner-fuzz/models")  # never touched: paths are only computed

# --- model names (IN-07) --------------------------------------------------------------------

# Names are built from the characters that matter to paths, plus any text at all.
PIECES = st.sampled_from(
    ["a", "Z", "0", "_", "-", ".", "..", "/", "\\", ":", "%2e", "%2f", "\x00", "~", " ", "\n",
     "\u0430", "\u202e", "library", "registry.ollama.ai", "localhost:5000", "https://", "x" * 80]
)  # fmt: skip
NAMES = st.one_of(st.lists(PIECES, max_size=12).map("".join), st.text(max_size=120))


def name_is_safe(text: str) -> None:
    """Invariant: a name either raises InvalidRequest, or it names a manifest file strictly
    inside the store's manifests folder, four plain parts deep (no '.', '..', separators,
    NUL), and its display form parses back to the same name."""
    try:
        name = ModelName.parse(text)
    except InvalidRequest:
        return
    check_name(name)


def check_name(name: ModelName) -> None:
    manifests = Store(ROOT).manifests
    path = manifests.joinpath(*name.parts())
    assert os.path.normpath(path) == str(path), path  # nothing for the OS to collapse
    assert path.relative_to(manifests).parts == name.parts()
    for part in name.parts():
        assert part not in ("", ".", "..") and not {"/", "\\", "\x00"} & set(part), part
    assert ModelName.parse(name.display()) == name


@QUICK
@given(NAMES)
def test_an_accepted_model_name_stays_inside_the_store(text: str) -> None:
    name_is_safe(text)


@pytest.mark.slow
@pytest.mark.full
@SLOW
@given(NAMES)
def test_an_accepted_model_name_stays_inside_the_store_10k(text: str) -> None:
    name_is_safe(text)


@pytest.mark.parametrize(
    "parts",
    [("registry.ollama.ai", "..", "..", "latest"), ("h", "ns", "a/b", "t"), ("h", "ns", "m", ".")],
)
def test_the_name_invariant_catches_a_name_that_climbs_out(parts: tuple[str, ...]) -> None:
    with pytest.raises(AssertionError):
        check_name(ModelName(*parts))


# --- digests --------------------------------------------------------------------------------

HEX = st.text("0123456789abcdefABCDEF", min_size=60, max_size=68)
DIGESTS = st.one_of(
    st.tuples(st.sampled_from(["sha256:", "sha256-", "sha512:", "sha256", "", "SHA256:"]), HEX,
              st.sampled_from(["", "\n", "/x", "/../..", "\x00", " "])).map("".join),
    st.text(max_size=80),
)  # fmt: skip


def digest_is_safe(text: str) -> None:
    """Invariant: a digest either raises InvalidRequest, or it is `sha256:` and 64 lowercase
    hex digits and names the file `sha256-<hex>` directly inside the blobs folder."""
    try:
        canonical = normalize(text)
    except InvalidRequest:
        return
    check_digest(canonical)


def check_digest(canonical: str) -> None:
    blobs = BlobStore(ROOT / "blobs")
    assert canonical.startswith("sha256:") and len(canonical) == 71
    assert set(canonical[7:]) <= set("0123456789abcdef")
    path = blobs.root / canonical.replace(":", "-")
    assert path.parent == blobs.root and os.path.normpath(path) == str(path)


@QUICK
@given(DIGESTS)
def test_an_accepted_digest_names_one_file_in_the_blobs_folder(text: str) -> None:
    digest_is_safe(text)


@pytest.mark.slow
@pytest.mark.full
@SLOW
@given(DIGESTS)
def test_an_accepted_digest_names_one_file_in_the_blobs_folder_10k(text: str) -> None:
    digest_is_safe(text)


@pytest.mark.parametrize("canonical", ["sha256:" + "A" * 64, "sha256:../" + "a" * 61])
def test_the_digest_invariant_catches_a_digest_that_is_not_plain_hex(canonical: str) -> None:
    with pytest.raises(AssertionError):
        check_digest(canonical)


# --- manifests --------------------------------------------------------------------------------

GOOD_MANIFEST = json.dumps({
    "schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
    "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
               "digest": "sha256:" + "1" * 64, "size": 10},
    "layers": [{"mediaType": "application/vnd.ollama.image.model",
                "digest": "sha256:" + "2" * 64, "size": 2048, "name": "model.gguf"}],
}).encode()  # fmt: skip

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)  # fmt: skip


@st.composite
def manifests(draw: st.DrawFn) -> bytes:
    """Random bytes, random JSON, or the good manifest with bytes or fields changed."""
    kind = draw(st.sampled_from(["bytes", "json", "mutated", "field"]))
    if kind == "bytes":
        return draw(st.binary(max_size=300))
    if kind == "json":
        return json.dumps(draw(JSON_VALUES)).encode()
    if kind == "mutated":
        data = bytearray(GOOD_MANIFEST)
        for _ in range(draw(st.integers(1, 8))):
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        return bytes(data)
    manifest = json.loads(GOOD_MANIFEST)
    target = draw(st.sampled_from(["config", "layer"]))
    part = manifest["config"] if target == "config" else manifest["layers"][0]
    part[draw(st.sampled_from(["digest", "size", "mediaType", "name"]))] = draw(JSON_VALUES)
    return json.dumps(manifest).encode()


def manifest_is_safe(raw: bytes) -> None:
    """Invariant: a registry's manifest either raises LimnerError, or every digest in it is
    canonical and every size a non-negative int; the store's own reader raises only
    ValueError (which it skips) on the same bytes."""
    try:
        manifest = parse_manifest(raw)
    except LimnerError:
        pass
    else:
        for layer in [manifest.config, *manifest.layers]:
            check_digest(normalize(layer.digest))
            assert isinstance(layer.size, int) and layer.size >= 0
    with contextlib.suppress(ValueError):
        Manifest.model_validate_json(raw)


@QUICK
@given(manifests())
def test_a_manifest_is_parsed_safely_or_refused(raw: bytes) -> None:
    manifest_is_safe(raw)


@pytest.mark.slow
@pytest.mark.full
@SLOW
@given(manifests())
def test_a_manifest_is_parsed_safely_or_refused_10k(raw: bytes) -> None:
    manifest_is_safe(raw)


def test_the_good_manifest_is_accepted() -> None:
    assert parse_manifest(GOOD_MANIFEST).layers[0].size == 2048


def test_a_stored_manifest_that_is_garbage_is_skipped_not_raised(tmp_path: Path) -> None:
    store = Store(tmp_path)
    folder = store.manifests / "registry.ollama.ai" / "library" / "m"
    folder.mkdir(parents=True)
    (folder / "latest").write_bytes(GOOD_MANIFEST[:40])
    assert store.entries() == []


# --- GGUF headers ---------------------------------------------------------------------------


def _small_gguf(path: Path) -> bytes:
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_uint32("llama.context_length", 2048)
    writer.add_string("general.name", "fuzz")
    writer.add_array("tokenizer.ggml.tokens", ["a", "b", "c"])
    writer.add_array("llama.rope.dims", [1, 2, 3])
    writer.add_float32("llama.attention.layer_norm_rms_epsilon", 1e-5)
    writer.add_tensor("token_embd.weight", np.ones((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path.read_bytes()


@pytest.fixture(scope="module")
def seed_gguf(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return _small_gguf(tmp_path_factory.mktemp("gguf") / "seed.gguf")


# u64 values that make counts and lengths absurd.
HUGE = [2**64 - 1, 2**63, 2**32, 2**31 - 1, 10**12, 0]


@st.composite
def gguf_mutations(draw: st.DrawFn) -> tuple[str, list[tuple[int, bytes]], int | None]:
    """Where to write what in the seed file, and where to cut it."""
    kind = draw(st.sampled_from(["bytes", "u64", "cut", "random"]))
    edits = []
    for _ in range(draw(st.integers(1, 6))):
        at = draw(st.integers(0, 400))
        if kind == "u64":
            edits.append((at, draw(st.sampled_from(HUGE)).to_bytes(8, "little")))
        else:
            edits.append((at, draw(st.binary(min_size=1, max_size=4))))
    cut = draw(st.integers(0, 600)) if kind == "cut" else None
    return kind, edits, cut


def gguf_is_safe(data: bytes, folder: Path) -> None:
    """Invariant: reading a GGUF file's metadata either returns plain values or raises
    limner's InvalidRequest, within a second, for any bytes."""
    path = folder / "fuzz.gguf"
    path.write_bytes(data)
    started = time.monotonic()
    try:
        info = gguf_info(path)
    except InvalidRequest as exc:
        assert str(path.parent) not in exc.message
    else:
        assert isinstance(info, dict) and "general.parameter_count" in info
    assert time.monotonic() - started < 1.0


def _mutated(seed: bytes, mutation: tuple[str, list[tuple[int, bytes]], int | None]) -> bytes:
    kind, edits, cut = mutation
    if kind == "random":
        return b"GGUF\x03\x00\x00\x00" + b"".join(edit for _, edit in edits) * 8
    data = bytearray(seed)
    for at, edit in edits:
        data[at : at + len(edit)] = edit
    return bytes(data[:cut] if cut is not None else data)


@QUICK
@given(gguf_mutations())
def test_a_mutated_gguf_header_is_read_or_refused_with_limners_error(
    seed_gguf: bytes, tmp_path: Path, mutation: Any
) -> None:
    gguf_is_safe(_mutated(seed_gguf, mutation), tmp_path)


@pytest.mark.slow
@pytest.mark.full
@SLOW
@given(gguf_mutations())
def test_a_mutated_gguf_header_is_read_or_refused_with_limners_error_10k(
    seed_gguf: bytes, tmp_path: Path, mutation: Any
) -> None:
    gguf_is_safe(_mutated(seed_gguf, mutation), tmp_path)


@pytest.mark.parametrize("data", [b"", b"GGUF", b"GGUF\x03\x00\x00\x00", b"GGUF\x09\x00\x00\x00"])
def test_an_empty_or_cut_gguf_is_refused_with_limners_error(data: bytes, tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest, match="not a valid GGUF file"):
        gguf_info(_write(tmp_path / "cut.gguf", data))


def test_the_seed_gguf_reads_back(seed_gguf: bytes, tmp_path: Path) -> None:
    info = gguf_info(_write(tmp_path / "seed.gguf", seed_gguf))
    assert info["llama.context_length"] == 2048 and info["general.parameter_count"] == 32


def test_the_gguf_invariant_catches_an_error_that_is_not_limners(
    seed_gguf: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def exhausted(path: Path) -> None:
        raise MemoryError

    monkeypatch.setattr(gguf, "GGUFReader", exhausted)
    with pytest.raises(MemoryError):
        gguf_is_safe(seed_gguf, tmp_path)


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# --- picture headers --------------------------------------------------------------------------


def _picture(fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), "red").save(buffer, format=fmt)
    return buffer.getvalue()


SEEDS = {fmt: _picture(fmt) for fmt in ("PNG", "JPEG", "WEBP", "GIF", "BMP")}
LIMIT = 10_000  # pixels: small, so that mutated sizes cross it


@st.composite
def picture_bytes(draw: st.DrawFn) -> bytes:
    seed = bytearray(SEEDS[draw(st.sampled_from(sorted(SEEDS)))])
    for _ in range(draw(st.integers(0, 6))):
        at = draw(st.integers(0, min(len(seed) - 1, 64)))  # the header lives up front
        seed[at] = draw(st.integers(0, 255))
    cut = draw(st.one_of(st.none(), st.integers(0, len(seed))))
    return bytes(seed[:cut]) if draw(st.booleans()) else draw(st.binary(max_size=200))


def picture_header_is_checked(data: bytes) -> None:
    """Invariant: the picture check either raises InvalidImage or TooLarge, or the bytes are
    a whole PNG, JPEG or WebP of at most LIMNER_MAX_IMAGE_PIXELS pixels that decodes."""
    try:
        pictures.check(data, "picture")
    except (InvalidImage, TooLarge):
        return
    image = Image.open(io.BytesIO(data))
    assert image.format in pictures.FORMATS
    assert image.width * image.height <= LIMIT
    image.load()


def _with_limit(check: Callable[[bytes], None]) -> Callable[[bytes], None]:
    def limited(data: bytes) -> None:
        before = os.environ.get("LIMNER_MAX_IMAGE_PIXELS")
        os.environ["LIMNER_MAX_IMAGE_PIXELS"] = str(LIMIT)
        try:
            check(data)
        finally:
            if before is None:
                del os.environ["LIMNER_MAX_IMAGE_PIXELS"]
            else:
                os.environ["LIMNER_MAX_IMAGE_PIXELS"] = before

    return limited


@QUICK
@given(picture_bytes())
def test_a_mutated_picture_is_checked_from_its_header_or_refused(data: bytes) -> None:
    _with_limit(picture_header_is_checked)(data)


@pytest.mark.slow
@pytest.mark.full
@SLOW
@given(picture_bytes())
def test_a_mutated_picture_is_checked_from_its_header_or_refused_10k(data: bytes) -> None:
    _with_limit(picture_header_is_checked)(data)


def test_the_picture_invariant_catches_a_check_that_lets_a_big_picture_through(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    big = io.BytesIO()
    Image.new("RGB", (200, 200)).save(big, format="PNG")
    with pytest.raises(TooLarge):
        _with_limit(lambda data: pictures.check(data, "big"))(big.getvalue())
    monkeypatch.setattr(pictures, "check", lambda data, label: None)
    with pytest.raises(AssertionError):
        _with_limit(picture_header_is_checked)(big.getvalue())
