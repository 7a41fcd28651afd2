"""Vision families beyond LLaVA-1.5 convert to llama.cpp's GGUF pair on create --quantize,
and run there: a tiny model of each family (real transformers classes, random weights)
answers a picture question through the official `ollama` client, its prompt costs exactly
what libmtmd makes of that picture and text, and a follow-up reuses the cache.

Qwen-VL's processors need torchvision, which is not installed: its prompt is rendered by its
tokenizer (which holds the same template) and its pictures by its image processor alone."""

from __future__ import annotations

import base64
import ctypes
import io
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import ollama
import pytest
from PIL import Image

from helpers import add_model, picture

pytest.importorskip("transformers")
pytest.importorskip("llama_cpp")

import llama_cpp
from llama_cpp import mtmd_cpp as mtmd

from limner.errors import InvalidRequest
from limner.names import ModelName
from limner.store import Store
from limner.store.gguf import gguf_info
from limner.store.gguf_families import convert
from limner.store.manifests import MODEL, PROJECTOR
from limner.tiny_families import write_tiny_family

QWEN_PICTURE = "<|vision_start|><|image_pad|><|vision_end|>"

QUESTION = "What is in this picture?"
# Family -> (config.json model_type, the projector type, what its template writes for a picture).
FAMILIES = {
    "llava-next": ("llava_next", "mlp", "<image>"),
    "gemma3": ("gemma3", "gemma3", "<start_of_image>"),
    "smolvlm": ("idefics3", "idefics3", "<image>"),
    "qwen2-vl": ("qwen2_vl", "qwen2vl_merger", QWEN_PICTURE),
    "qwen2.5-vl": ("qwen2_5_vl", "qwen2.5vl_merger", QWEN_PICTURE),
}
QWEN = ("qwen2-vl", "qwen2.5-vl")
SHAPES = [(64, 48), (100, 30)]  # tiled families cost more for some shapes
# Qwen's cost grows with the picture, one token per 28-px cell (libmtmd scales a picture up to
# 8 cells at least): 64x48 is 4x3 cells, 280x168 10x6, more than one 4x4 attention window.
QWEN_SHAPES = [(64, 48), (280, 168)]


def created(store: Store, server: Any, family: str, tmp_path: Path) -> ollama.Client:
    """The tiny Hugging Face folder stored as "hf", then created as "q" with --quantize q8_0."""
    folder = write_tiny_family(family, tmp_path / "hf")
    files = {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}  # fmt: skip
    add_model(store, "hf", files)
    client = ollama.Client(host=server.url)
    lines = list(client.create(model="q", from_="hf", quantize="q8_0", stream=True))
    assert lines[0].status == "quantizing F32 model to Q8_0" and lines[-1].status == "success"
    return client


class Libmtmd:
    """A GGUF pair opened with llama.cpp and libmtmd directly, not through limner's engine."""

    def __init__(self, model: Path, projector: Path) -> None:
        self.llama = llama_cpp.Llama(str(model), n_ctx=512, logits_all=True, verbose=False)
        params = mtmd.mtmd_context_params_default()
        params.use_gpu, params.n_threads, params.print_timings = False, 2, False
        self.ctx = mtmd.mtmd_init_from_file(str(projector).encode(), self.llama.model, params)
        assert self.ctx

    def close(self) -> None:
        mtmd.mtmd_free(self.ctx)
        self.llama.close()

    def chunks(self, text: str, shot: bytes) -> list[tuple[int, Any]]:
        """libmtmd's chunks of `text` (one marker) with the picture: (tokens, picture or None)."""
        buffer = (ctypes.c_uint8 * len(shot)).from_buffer_copy(shot)
        bitmap = mtmd.mtmd_helper_bitmap_init_from_buf(self.ctx, buffer, len(shot), False)
        chunks = mtmd.mtmd_input_chunks_init()
        try:
            source = mtmd.mtmd_input_text()
            encoded = text.encode()
            source.text, source.text_len = encoded, len(encoded)
            bos = self.llama.detokenize([self.llama.token_bos()], special=True).decode()
            source.add_special, source.parse_special = not text.startswith(bos), True
            array = (mtmd.mtmd_bitmap_p_ctypes * 1)(bitmap)
            assert mtmd.mtmd_tokenize(self.ctx, chunks, ctypes.byref(source), array, 1) == 0
            return [self._read(mtmd.mtmd_input_chunks_get(chunks, i))
                    for i in range(int(mtmd.mtmd_input_chunks_size(chunks)))]  # fmt: skip
        finally:
            mtmd.mtmd_input_chunks_free(chunks)
            mtmd.mtmd_bitmap_free(bitmap)

    def _read(self, chunk: Any) -> tuple[int, Any]:
        n = int(mtmd.mtmd_input_chunk_get_n_tokens(chunk))
        if mtmd.mtmd_input_chunk_get_type(chunk) == mtmd.MTMD_INPUT_CHUNK_TYPE_TEXT:
            return n, None
        assert mtmd.mtmd_encode_chunk(self.ctx, chunk) == 0
        width = self.llama.n_embd()
        rows = np.ctypeslib.as_array(mtmd.mtmd_get_output_embd(self.ctx), shape=(n * width,))
        return n, rows.reshape(n, width).copy()


def libmtmd_counts(
    store: Store, folder: Path, family: str, shots: list[bytes]
) -> list[tuple[int, int]]:
    """(prompt tokens, picture tokens) per picture, as libmtmd makes them of the question
    rendered by the family's own processor template, read straight from the stored GGUF pair."""
    from transformers import AutoProcessor, AutoTokenizer

    parts = [{"type": "image"}, {"type": "text", "text": QUESTION}]
    loader: Any = AutoTokenizer if family in QWEN else AutoProcessor
    text = loader.from_pretrained(folder).apply_chat_template(
        [{"role": "user", "content": parts}], add_generation_prompt=True, tokenize=False
    )
    text = text.replace(FAMILIES[family][2], mtmd.mtmd_default_marker().decode(), 1)
    return stored_counts(store, text, shots)


def stored_counts(store: Store, text: str, shots: list[bytes]) -> list[tuple[int, int]]:
    """(prompt tokens, picture tokens) per picture, as libmtmd makes them of `text` (with its
    marker), read straight from the GGUF pair stored as "q"."""
    manifest = store.entry(ModelName.parse("q")).manifest
    text_layer, projector_layer = manifest.layer(MODEL), manifest.layer(PROJECTOR)
    assert text_layer is not None and projector_layer is not None
    pair = Libmtmd(
        store.blobs.open_path(text_layer.digest), store.blobs.open_path(projector_layer.digest)
    )
    try:
        found = [pair.chunks(text, shot) for shot in shots]
    finally:
        pair.close()
    return [(sum(n for n, _ in c), sum(n for n, rows in c if rows is not None)) for c in found]


def chat(url: str, messages: list[dict[str, Any]]) -> dict[str, Any]:
    options = {"num_predict": 4, "temperature": 0, "seed": 1}
    body = {"model": "q", "messages": messages, "options": options, "stream": False}
    reply: dict[str, Any] = httpx.post(f"{url}/api/chat", json=body, timeout=60).json()
    return reply


@pytest.mark.slow  # 5-10 s each: a tiny model written, converted, quantized and asked
@pytest.mark.parametrize("family", FAMILIES)
def test_a_converted_tiny_model_answers_with_libmtmd_counts_and_reuses_the_cache(
    server: Any, store: Store, tmp_path: Path, family: str
) -> None:
    client = created(store, server, family, tmp_path)
    shown = client.show("q")
    assert shown.details is not None
    assert (shown.details.format, shown.details.quantization_level) == ("gguf", "Q8_0")
    assert shown.capabilities is not None and "vision" in shown.capabilities
    projector = httpx.post(f"{server.url}/api/show", json={"model": "q"}).json()["projector_info"]
    assert projector["clip.projector_type"] == FAMILIES[family][1]

    shots = [picture(size=size) for size in (QWEN_SHAPES if family in QWEN else SHAPES)]
    counts = libmtmd_counts(store, tmp_path / "hf", family, shots)
    if family in QWEN:  # a larger picture costs more tokens
        assert counts[1][1] > counts[0][1]
    for shot, (total, pictures) in zip(shots, counts, strict=True):
        message = {"role": "user", "content": QUESTION, "images": [shot]}
        options = {"num_predict": 4, "temperature": 0}
        chunks = list(client.chat(model="q", messages=[message], options=options, stream=True))
        assert chunks[-1].done and chunks[-1].eval_count == 4
        assert "".join(c.message.content or "" for c in chunks)
        if shot == shots[0]:  # nothing cached yet: the whole prompt is evaluated
            assert chunks[-1].prompt_eval_count == total
        # The same question again: all of it but the last token comes from the cache.
        counted = chat(server.url, [{**message, "images": [base64.b64encode(shot).decode()]}])
        assert counted["prompt_eval_count"] + counted["prompt_cached_count"] == total
        assert counted["image_tokens"] == pictures > 0

    # A follow-up about the same picture decodes only the new turn.
    blue = base64.b64encode(picture(size=(64, 64), color="blue")).decode()
    first = [{"role": "user", "content": QUESTION, "images": [blue]}]
    answer = chat(server.url, first)
    again = chat(server.url, [*first, answer["message"], {"role": "user", "content": "Colour?"}])
    assert answer["image_tokens"] > 0 and again["image_tokens"] == answer["image_tokens"]
    whole = answer["prompt_eval_count"] + answer["prompt_cached_count"]
    assert again["prompt_cached_count"] >= whole  # the first turn and its picture
    assert again["prompt_eval_count"] < whole
    # The same follow-up computed afresh (another system turn cut the cache before the
    # picture) says the same: the cached turn sits where a fresh one goes, which for Qwen's
    # M-RoPE means positions, not tokens (a picture of h x w tokens spans max(h, w) of them).
    chat(server.url, [{"role": "system", "content": "Be brief."}, *first])
    fresh = chat(server.url, [*first, answer["message"], {"role": "user", "content": "Colour?"}])
    assert fresh["prompt_eval_count"] > again["prompt_eval_count"]
    assert fresh["message"]["content"] == again["message"]["content"]


def test_the_families_write_their_own_keys_and_tensors(tmp_path: Path) -> None:
    for family, (_, projector, _) in FAMILIES.items():
        folder = write_tiny_family(family, tmp_path / family)
        model, mmproj = convert(folder, tmp_path / f"{family}-gguf", "f16")
        info, vision = gguf_info(model), gguf_info(mmproj)
        assert vision["clip.projector_type"] == projector
        assert info["tokenizer.chat_template"] == (folder / "chat_template.jinja").read_text()
    next_info = gguf_info(tmp_path / "llava-next-gguf" / "mmproj.gguf")
    assert next_info["clip.vision.image_grid_pinpoints"] == [28, 28, 28, 56, 56, 28, 56, 56]
    assert next_info["clip.vision.mm_patch_merge_type"] == "spatial_unpad"
    gemma = gguf_info(tmp_path / "gemma3-gguf" / "model.gguf")
    assert gemma["general.architecture"] == "gemma3"
    assert (gemma["gemma3.rope.freq_base"], gemma["gemma3.rope.freq_base_swa"]) == (1e6, 1e4)
    gemma_projector = gguf_info(tmp_path / "gemma3-gguf" / "mmproj.gguf")
    assert gemma_projector["clip.vision.projector.scale_factor"] == 2  # 4x4 patches to 2x2
    smol = gguf_info(tmp_path / "smolvlm-gguf" / "mmproj.gguf")
    assert smol["clip.vision.projector.scale_factor"] == 2
    assert smol["clip.vision.preproc_image_size"] == 64  # the processor's longest_edge
    for family in QWEN:
        qwen = gguf_info(tmp_path / f"{family}-gguf" / "model.gguf")
        assert qwen["general.architecture"] == "qwen2vl"
        assert qwen["qwen2vl.rope.dimension_sections"] == [2, 3, 3, 0]
    qwen_projector = gguf_info(tmp_path / "qwen2.5-vl-gguf" / "mmproj.gguf")
    assert qwen_projector["clip.vision.n_wa_pattern"] == 2  # block 1 of 2 sees everything
    assert qwen_projector["clip.use_silu"] is True


def test_other_model_types_are_refused_naming_the_families(tmp_path: Path) -> None:
    folder = write_tiny_family("text", tmp_path / "text")
    with pytest.raises(
        InvalidRequest,
        match="families that do: llava, llava_next, gemma3, idefics3, qwen2_vl, qwen2_5_vl",
    ):
        convert(folder, tmp_path / "out", "q8_0")
    assert not (tmp_path / "out").exists()


def with_random_projection(folder: Path) -> None:
    """Gemma 3 starts its projection at zeros, so every picture would embed as zeros; seeded
    random values make the comparison below see the projector at work."""
    from safetensors.numpy import load_file, save_file

    tensors = load_file(folder / "model.safetensors")
    rng = np.random.default_rng(0)
    for key in [k for k in tensors if k.startswith("multi_modal_projector.mm_")]:
        tensors[key] = rng.standard_normal(tensors[key].shape).astype(np.float32) / 2
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})


def hf_picture_rows(model: Any, family: str, inputs: dict[str, Any]) -> np.ndarray:
    """The picture's embeddings computed in torch with the checkpoint's own modules."""
    import torch

    with torch.no_grad():
        if family == "llava-next":
            features = llava_graph(model, inputs["pixel_values"][0][:1])
        else:
            wanted = ("pixel_values", "pixel_attention_mask", "image_grid_thw")
            kept = {k: v for k, v in inputs.items() if k in wanted}
            features = model.model.get_image_features(**kept)
            features = getattr(features, "pooler_output", features)
        if isinstance(features, list | tuple):  # one tensor per picture
            features = torch.cat([f.reshape(-1, f.shape[-1]) for f in features])
    rows: np.ndarray = features.reshape(-1, features.shape[-1]).numpy()
    return rows


def llava_graph(model: Any, pixels: Any) -> Any:
    """LLaVA's whole-picture tile as llama.cpp's LLaVA graph computes it (as in
    test_gguf_convert: CLS after the patches, positions in that order, rows 1.. projected),
    which differs from transformers' in the last row (llama.cpp #25814)."""
    import torch

    tower = model.model.vision_tower
    x = tower.embeddings.patch_embedding(pixels).flatten(2).transpose(1, 2)
    x = torch.cat([x, tower.embeddings.class_embedding[None, None]], dim=1)
    x = tower.pre_layrnorm(x + tower.embeddings.position_embedding.weight[None])
    layers = len(tower.encoder.layers)
    feature = model.config.vision_feature_layer
    for layer in tower.encoder.layers[: feature + layers + 1 if feature < 0 else feature]:
        x = layer(x, None)
    return model.model.multi_modal_projector(x[0, 1:])


@pytest.mark.parametrize("family", FAMILIES)
def test_text_logits_and_picture_embeddings_match_transformers_at_f32(
    tmp_path: Path, family: str
) -> None:
    import torch
    from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoProcessor

    folder = write_tiny_family(family, tmp_path / "hf")
    if family == "gemma3":
        with_random_projection(folder)
    model_path, projector = convert(folder, tmp_path / "gguf", "f32")
    hf = AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.float32)
    hf.train(False)
    ids = [17, 40, 99, 123, 250, 77, 300, 12]
    with torch.no_grad():
        want = hf(input_ids=torch.tensor([ids])).logits[0].numpy()
    if family in QWEN:
        # Noise in whole 28-px cells, two attention windows wide: no resize, and the windows
        # and the positions of every patch show.
        shot, images = noise(224, 112), AutoImageProcessor.from_pretrained(folder)
    else:
        # A flat picture of the tower's own size: every resize and tile of it is the same.
        side = hf.config.vision_config.image_size
        shot = picture(size=(side, side), color=(200, 40, 90))
        images = AutoProcessor.from_pretrained(folder).image_processor  # type: ignore[no-untyped-call]
    inputs = images(images=[Image.open(io.BytesIO(shot))], return_tensors="pt")
    pair = Libmtmd(model_path, projector)
    try:
        pair.llama.eval(ids)
        got = np.array(pair.llama.scores[: len(ids)])
        rows = [
            r for _, r in pair.chunks(mtmd.mtmd_default_marker().decode(), shot) if r is not None
        ]
    finally:
        pair.close()
    assert np.abs(got - want).max() < 2e-3 * np.abs(want).max()
    expected = hf_picture_rows(hf, family, dict(inputs))
    first = rows[0][: len(expected)]
    assert np.abs(expected).max() > 1e-3  # a picture the projector does not erase
    assert np.abs(first - expected[: len(first)]).max() < 2e-3 * np.abs(expected).max()


def noise(width: int, height: int) -> bytes:
    pixels = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "PNG")
    return out.getvalue()


def test_a_cached_qwen_picture_keeps_its_m_rope_positions(tmp_path: Path) -> None:
    """A 280x168 picture is 10x6 = 60 tokens on max(10, 6) = 10 M-RoPE positions. The
    follow-up that reuses it from the cache must go on from the positions libmtmd gave the
    first turn, exactly where the same follow-up computed afresh goes."""
    from limner.engines import LoadOptions, Message, Options
    from limner.engines.llava_llamacpp import load

    convert(write_tiny_family("qwen2.5-vl", tmp_path / "hf"), tmp_path / "gguf", "f16")
    engine = load(tmp_path / "gguf", LoadOptions(num_ctx=512))
    options = Options(temperature=0, num_predict=4, seed=1)

    def ask(messages: list[Message]) -> tuple[str, Any]:
        steps = list(engine.chat(messages, options, lambda: False))
        return "".join(getattr(s, "text", "") for s in steps), steps[-1]

    first = [Message("user", QUESTION, [noise(280, 168)])]
    _, done = ask(first)
    assert done.image_tokens == 60
    prompt_positions = done.prompt_eval_count - 60 + 10
    assert engine.llama.n_tokens == prompt_positions + done.eval_count - 1  # the last unfed
    # An answer that tokenizes as it reads (a random model's own may not spell itself back).
    follow = [*first, Message("assistant", "A red square."), Message("user", "Colour?")]
    cached_text, cached = ask(follow)
    assert cached.prompt_cached_count >= done.prompt_eval_count  # the first turn came back
    cached_end = engine.llama.n_tokens
    ask([Message("system", "Be brief."), *first])  # the cache now diverges before the picture
    fresh_text, fresh = ask(follow)
    assert fresh.prompt_cached_count < done.prompt_eval_count - 60
    assert (engine.llama.n_tokens, fresh_text) == (cached_end, cached_text)
    total = fresh.prompt_eval_count + fresh.prompt_cached_count
    assert total == cached.prompt_eval_count + cached.prompt_cached_count  # tokens, not positions


@pytest.mark.parametrize("family", QWEN)
def test_qwen_text_tokenizes_as_transformers_does(tmp_path: Path, family: str) -> None:
    """Qwen2's tokenizer splits words by its own regex before the byte-level step; the GGUF
    names it ("qwen2") so that llama.cpp splits the same way."""
    from transformers import AutoTokenizer

    folder = write_tiny_family(family, tmp_path / "hf")
    model, _ = convert(folder, tmp_path / "gguf", "f16")
    assert gguf_info(model)["tokenizer.ggml.pre"] == "qwen2"
    hf = AutoTokenizer.from_pretrained(folder)
    vocab_only = llama_cpp.Llama(str(model), vocab_only=True, verbose=False)
    try:
        for text in [
            "It's 42 apples,\n\n  don't   you think?",
            "<|im_start|>user\nWhat is <|image_pad|> here?<|im_end|>\n",
            "Ünïcödé — émoji 🎨 123456",
        ]:
            ids = vocab_only.tokenize(text.encode(), add_bos=False, special=True)
            assert ids == hf.encode(text, add_special_tokens=False), text
    finally:
        vocab_only.close()


def test_qwen25_window_layouts_llama_cpp_does_not_compute_are_refused(tmp_path: Path) -> None:
    import json

    folder = write_tiny_family("qwen2.5-vl", tmp_path / "hf")
    config = json.loads((folder / "config.json").read_text())
    # Block 0 alone full: llama.cpp's every-(i+1)th rule would make block 1 full too.
    config["vision_config"]["fullatt_block_indexes"] = [0]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(InvalidRequest, match="not evenly spaced"):
        convert(folder, tmp_path / "out", "f16")
    config["vision_config"] |= {"fullatt_block_indexes": [1], "window_size": 224}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(InvalidRequest, match="window_size 224"):
        convert(folder, tmp_path / "out", "f16")
    assert not (tmp_path / "out").exists()


def test_an_idefics3_vocabulary_without_a_blank_line_token_is_refused(tmp_path: Path) -> None:
    import json

    folder = write_tiny_family("smolvlm", tmp_path / "hf")
    tok = json.loads((folder / "tokenizer.json").read_text())
    tok["added_tokens"] = [t for t in tok["added_tokens"] if t["content"] != "\n\n"]
    (folder / "tokenizer.json").write_text(json.dumps(tok))
    with pytest.raises(InvalidRequest, match=r'no single "\\n\\n" token'):
        convert(folder, tmp_path / "out", "f16")
    assert not (tmp_path / "out").exists()
