"""The tiny LLaVA is a real llava-hf folder: fast, deterministic, and loadable by transformers."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.numpy import load_file
from tokenizers import Tokenizer

from limner.tiny import write_tiny_llava

FILES = {
    "added_tokens.json",
    "chat_template.jinja",
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "preprocessor_config.json",
    "processor_config.json",
    "special_tokens_map.json",
    "tokenizer.json",
    "tokenizer_config.json",
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_llava(tmp_path_factory.mktemp("tiny") / "llava", seed=0)


def test_written_fast_and_identical_for_a_seed(tmp_path: Path) -> None:
    started = time.perf_counter()
    first = write_tiny_llava(tmp_path / "a", seed=7)
    elapsed = time.perf_counter() - started
    second = write_tiny_llava(tmp_path / "b", seed=7)
    other = write_tiny_llava(tmp_path / "c", seed=8)

    assert elapsed < 2.0
    assert {p.name for p in first.iterdir()} == FILES
    for name in FILES:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    # A seed changes the weights only.
    assert (first / "model.safetensors").read_bytes() != (other / "model.safetensors").read_bytes()
    assert (first / "tokenizer.json").read_bytes() == (other / "tokenizer.json").read_bytes()


def test_builds_without_torch_or_transformers(tmp_path: Path) -> None:
    code = (
        "import sys; from pathlib import Path; from limner.tiny import write_tiny_llava; "
        f"write_tiny_llava(Path({str(tmp_path)!r})); "
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_tokenizer_follows_mistral_conventions(tiny: Path) -> None:
    tok = Tokenizer.from_file(str(tiny / "tokenizer.json"))
    assert [tok.id_to_token(i) for i in range(3)] == ["<unk>", "<s>", "</s>"]
    assert tok.id_to_token(3) == "<0x00>" and tok.id_to_token(258) == "<0xFF>"
    assert tok.get_vocab_size() == 514
    assert json.loads((tiny / "added_tokens.json").read_text()) == {"<image>": 512, "<pad>": 513}

    encoding = tok.encode("USER: <image>\nWhat is this? é")
    assert encoding.ids[0] == 1  # BOS
    assert encoding.ids.count(512) == 1  # <image> is one token
    assert encoding.tokens[1] == "▁USER:"  # Metaspace: "▁" before the first word only
    assert "<0xC3>" in encoding.tokens  # byte fallback for characters outside the vocab
    assert tok.decode(encoding.ids) == "USER: \nWhat is this? é"


def test_config_is_bakllava_shaped(tiny: Path) -> None:
    config = json.loads((tiny / "config.json").read_text())
    assert config["architectures"] == ["LlavaForConditionalGeneration"]
    assert config["image_token_index"] == 512 and config["pad_token_id"] == 513
    assert config["vision_feature_layer"] == -2
    assert config["vision_feature_select_strategy"] == "default"
    assert config["text_config"]["model_type"] == "mistral"
    assert config["text_config"]["sliding_window"] == 4096
    assert config["vision_config"]["image_size"] == 336
    assert config["vision_config"]["patch_size"] == 14


def test_weights_use_llava_hf_names(tiny: Path) -> None:
    names = set(load_file(str(tiny / "model.safetensors")))
    prefixes = ("language_model.model.", "vision_tower.vision_model.", "multi_modal_projector.")
    assert all(n.startswith(prefixes) or n == "language_model.lm_head.weight" for n in names)
    assert "vision_tower.vision_model.embeddings.patch_embedding.weight" in names
    assert "multi_modal_projector.linear_2.bias" in names


# transformers is imported only below: the checks above must pass without it.
transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")


def test_transformers_loads_every_weight(tiny: Path) -> None:
    model, info = transformers.LlavaForConditionalGeneration.from_pretrained(
        tiny, local_files_only=True, output_loading_info=True
    )
    assert info["missing_keys"] == set()
    assert info["unexpected_keys"] == set()
    assert info["mismatched_keys"] == set()
    assert info["error_msgs"] == []

    # Nothing was initialised at random: the loaded tensors are the file's.
    saved = load_file(str(tiny / "model.safetensors"))
    assert sum(p.numel() for p in model.parameters()) == sum(t.size for t in saved.values())
    tower = model.model.vision_tower  # transformers 5 keeps CLIP without its "vision_model."
    pairs = {
        "language_model.lm_head.weight": model.lm_head.weight,
        "language_model.model.embed_tokens.weight": model.get_input_embeddings().weight,
        "vision_tower.vision_model.embeddings.patch_embedding.weight": (
            tower.embeddings.patch_embedding.weight
        ),
        "multi_modal_projector.linear_1.weight": model.model.multi_modal_projector.linear_1.weight,
    }
    for name, loaded in pairs.items():
        assert torch.equal(loaded.detach(), torch.from_numpy(saved[name])), name

    text = model.config.text_config
    assert (text.hidden_size, text.num_hidden_layers, text.num_key_value_heads) == (64, 2, 2)
    assert text.max_position_embeddings == 32768
    assert model.config.image_seq_length == 576


def test_processor_expands_one_picture_to_576_tokens(tiny: Path) -> None:
    from PIL import Image

    processor = transformers.AutoProcessor.from_pretrained(tiny, local_files_only=True)
    assert len(processor.tokenizer) == 514
    raw = Tokenizer.from_file(str(tiny / "tokenizer.json"))
    for text in ["USER: <image>\nWhat is this? ASSISTANT:", "  two  spaces\n\nand é"]:
        assert processor.tokenizer(text)["input_ids"] == raw.encode(text).ids

    conversation = [
        {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "A cat."}]},
        {"role": "user", "content": [{"type": "text", "text": "Sure?"}]},
    ]
    prompt = processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
    assert prompt == "Be brief. USER: <image>\nWhat? ASSISTANT: A cat. USER: Sure? ASSISTANT:"

    inputs = processor(text=prompt, images=[Image.new("RGB", (40, 30))], return_tensors="pt")
    ids = inputs["input_ids"][0].tolist()
    assert ids[0] == 1 and ids.count(512) == 576
    assert tuple(inputs["pixel_values"].shape) == (1, 3, 336, 336)
