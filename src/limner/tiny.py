"""Tiny random-weight models in the real on-disk formats, for tests, demos and users' CI.

`write_tiny_llava` writes a BakLLaVA-shaped LLaVA (Mistral text model, CLIP-336 vision tower,
two-layer GELU projector) at tiny widths, in the layout of the llava-hf checkpoints on the
Hugging Face Hub. Every file a real `llava-hf/bakLlava-v1-hf` folder holds is there, with the
same names and shapes of keys, so the real loading code runs unchanged against it.

It needs only numpy, safetensors and tokenizers (no torch, no transformers), runs offline in
a few tens of milliseconds, and the same seed always gives byte-identical files.

    >>> from pathlib import Path
    >>> folder = write_tiny_llava(Path("tiny-llava"))
    >>> sorted(p.name for p in folder.iterdir())[:3]
    ['added_tokens.json', 'chat_template.jinja', 'config.json']
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save_file
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

# Widths: BakLLaVA's topology (Mistral-7B + CLIP-L/336) with every width shrunk.
TEXT = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
}
VISION = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 3,
    "num_attention_heads": 2,
    "image_size": 336,  # real size: one picture = (336/14)^2 = 576 tokens, as in BakLLaVA
    "patch_size": 14,
}
BASE_VOCAB = 512  # unk, bos, eos, 256 byte pieces, then learned pieces
IMAGE_TOKEN, PAD_TOKEN = "<image>", "<pad>"  # added after the base vocab: ids 512 and 513
PADDED_VOCAB = 576  # embedding rows; BakLLaVA also pads its 32002 tokens to 32064 rows
STD = 0.02  # initializer_range of Mistral and CLIP

# OpenAI CLIP normalisation, as in llava-hf's preprocessor_config.json.
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

# The chat template of llava-hf/llava-1.5-7b-hf and llava-hf/bakLlava-v1-hf: a system text
# comes first with no role, pictures come before the text of their turn, and an assistant
# turn ends with a space (no </s>).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}{% endif %}"
    "{# Render all images first #}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\\n' }}{% endfor %}"
    "{# Render all text next #}"
    "{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] + ' '}}{% endfor %}"
    "{% else %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ content['text'] + ' '}}{% endgeneration %}{% endfor %}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)

# A small fixed corpus: enough distinct pairs to learn ~250 pieces, and the words a LLaVA
# prompt uses, so prompts tokenize into pieces rather than bytes.
CORPUS = [
    "A chat between a curious human and an artificial intelligence assistant.",
    "The assistant gives helpful, detailed, and polite answers to the human's questions.",
    "USER: What is in this image? ASSISTANT: The image shows a red square on a white background.",
    "USER: Describe the picture. ASSISTANT: A small cat is sitting next to a green plant.",
    "USER: How many people are there? ASSISTANT: There are three people standing by the river.",
    "USER: What colour is the car? ASSISTANT: The car is blue, and it is parked in the street.",
    "The quick brown fox jumps over the lazy dog while the sun sets behind the hills.",
    "A photograph of a kitchen with a wooden table, four chairs and a bowl of fruit.",
    "Two children are playing football in a park on a bright summer afternoon.",
    "The painting shows a mountain lake at dawn, with mist rising from the water.",
    "There is a sign that reads 'Open every day from nine to five'.",
    "In the centre of the picture, a dog is running along the sandy beach.",
    "The text in the image is written in black letters on a yellow board.",
    'Answer in JSON: {"object": "cat", "count": 1, "colours": ["black", "white"]}',
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 12 25 100 336 576 1024 4096.",
    "Hello, world! Thank you very much. Yes, no, maybe; perhaps later.",
]


def write_tiny_llava(dest: Path, seed: int = 0) -> Path:
    """Write a tiny BakLLaVA-shaped LLaVA in the llava-hf layout into `dest`; returns `dest`.

    The weights are random (normal, std 0.02, float32) and drawn from `seed`, so the same seed
    gives byte-identical files. The folder loads with `LlavaForConditionalGeneration` and
    `AutoProcessor` with no missing or unexpected weights.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)

    # 1. Tokenizer: byte-fallback BPE with Llama/Mistral's ids and conventions.
    tokenizer = _tokenizer()
    ids = tokenizer.get_vocab(with_added_tokens=True)
    image_id, pad_id = ids[IMAGE_TOKEN], ids[PAD_TOKEN]
    (dest / "tokenizer.json").write_text(tokenizer.to_str(pretty=True), encoding="utf-8")
    _write_json(dest / "tokenizer_config.json", _tokenizer_config(tokenizer))
    _write_json(
        dest / "special_tokens_map.json",
        {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": PAD_TOKEN},
    )
    # llama.cpp's converters read added tokens only from this file.
    _write_json(dest / "added_tokens.json", {IMAGE_TOKEN: image_id, PAD_TOKEN: pad_id})
    (dest / "chat_template.jinja").write_text(CHAT_TEMPLATE, encoding="utf-8")

    # 2. Processor: CLIP preprocessing (shortest edge 336, centre crop) and the image token.
    _write_json(dest / "preprocessor_config.json", _image_processor_config())
    _write_json(
        dest / "processor_config.json",
        {
            "image_token": IMAGE_TOKEN,
            "num_additional_image_tokens": 1,  # CLIP's CLS, dropped by strategy "default"
            "patch_size": VISION["patch_size"],
            "processor_class": "LlavaProcessor",
            "vision_feature_select_strategy": "default",
        },
    )

    # 3. Model config and generation defaults.
    _write_json(dest / "config.json", _model_config(image_id, pad_id))
    _write_json(
        dest / "generation_config.json",
        {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": pad_id},
    )

    # 4. Weights under the canonical llava-hf names.
    save_file(_weights(seed), str(dest / "model.safetensors"), metadata={"format": "pt"})
    return dest


def _tokenizer() -> Tokenizer:
    # Learn merges with whitespace splitting (SentencePiece never merges across words), then
    # rebuild the model with Mistral's fixed ids in front: unk 0, bos 1, eos 2, bytes 3-258.
    trainer_tok = Tokenizer(models.BPE(unk_token="<unk>"))
    trainer_tok.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="always", split=True)
    fixed = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    trainer = trainers.BpeTrainer(vocab_size=BASE_VOCAB - len(fixed), show_progress=False)
    trainer_tok.train_from_iterator(CORPUS, trainer)
    learned = json.loads(trainer_tok.to_str())["model"]
    pieces = sorted(learned["vocab"], key=learned["vocab"].__getitem__)
    vocab = {piece: i for i, piece in enumerate(fixed + pieces)}
    merges = [tuple(pair) for pair in learned["merges"]]

    tok = Tokenizer(
        models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True)
    )
    # The same pipeline transformers' LlamaTokenizer(legacy=False) builds, so the file and the
    # class agree: "▁" only before the first word, bytes fused on decode, one space stripped.
    tok.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first", split=False)
    tok.decoder = decoders.Sequence(
        [
            decoders.Replace("▁", " "),
            decoders.ByteFallback(),
            decoders.Fuse(),
            decoders.Strip(content=" ", left=1, right=0),
        ]
    )
    tok.post_processor = processors.TemplateProcessing(
        single="<s>:0 $A:0", pair="<s>:0 $A:0 <s>:1 $B:1", special_tokens=[("<s>", 1)]
    )
    tok.add_special_tokens([_special(t) for t in ("<unk>", "<s>", "</s>", IMAGE_TOKEN, PAD_TOKEN)])
    return tok


def _special(content: str) -> AddedToken:
    return AddedToken(content, special=True, normalized=False, lstrip=False, rstrip=False)


def _tokenizer_config(tok: Tokenizer) -> dict[str, Any]:
    ids = tok.get_vocab(with_added_tokens=True)
    added = {
        str(ids[t]): {
            "content": t,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for t in ("<unk>", "<s>", "</s>", IMAGE_TOKEN, PAD_TOKEN)
    }
    return {
        "add_bos_token": True,
        "add_eos_token": False,
        "add_prefix_space": None,
        "added_tokens_decoder": added,
        "bos_token": "<s>",
        "clean_up_tokenization_spaces": False,
        "eos_token": "</s>",
        "legacy": False,
        "model_max_length": 32768,
        "pad_token": PAD_TOKEN,
        "padding_side": "left",
        "processor_class": "LlavaProcessor",
        "sp_model_kwargs": {},
        "spaces_between_special_tokens": False,
        "tokenizer_class": "LlamaTokenizer",
        "unk_token": "<unk>",
        "use_default_system_prompt": False,
    }


def _image_processor_config() -> dict[str, Any]:
    size = VISION["image_size"]
    return {
        "crop_size": {"height": size, "width": size},
        "do_center_crop": True,
        "do_convert_rgb": True,
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": CLIP_MEAN,
        "image_processor_type": "CLIPImageProcessor",
        "image_std": CLIP_STD,
        "processor_class": "LlavaProcessor",
        "resample": 3,  # bicubic
        "rescale_factor": 1 / 255,
        "size": {"shortest_edge": size},
    }


def _model_config(image_id: int, pad_id: int) -> dict[str, Any]:
    return {
        "architectures": ["LlavaForConditionalGeneration"],
        "model_type": "llava",
        "image_token_index": image_id,
        "pad_token_id": pad_id,
        "ignore_index": -100,
        "image_seq_length": (VISION["image_size"] // VISION["patch_size"]) ** 2,
        "multimodal_projector_bias": True,
        "projector_hidden_act": "gelu",
        "tie_word_embeddings": False,
        "vision_feature_layer": -2,
        "vision_feature_select_strategy": "default",
        "vocab_size": PADDED_VOCAB,
        "torch_dtype": "float32",
        "text_config": {
            "_name_or_path": "mistralai/Mistral-7B-v0.1",
            "architectures": ["MistralForCausalLM"],
            "model_type": "mistral",
            **TEXT,
            "hidden_act": "silu",
            "max_position_embeddings": 32768,
            "sliding_window": 4096,
            "rms_norm_eps": 1e-5,
            "rope_theta": 10000.0,
            "bos_token_id": 1,
            "eos_token_id": 2,
            "tie_word_embeddings": False,
            "vocab_size": PADDED_VOCAB,
        },
        "vision_config": {
            "model_type": "clip_vision_model",
            **VISION,
            "hidden_act": "quick_gelu",
            "layer_norm_eps": 1e-5,
            "num_channels": 3,
            "projection_dim": VISION["hidden_size"],
        },
    }


def _weights(seed: int) -> dict[str, np.ndarray]:
    # Draw in one fixed order from one generator: that order is what makes a seed reproducible.
    rng = np.random.default_rng(seed)
    tensors: dict[str, np.ndarray] = {}

    def normal(name: str, *shape: int) -> None:
        tensors[name] = rng.normal(0.0, STD, size=shape).astype(np.float32)

    def norm(name: str, width: int, bias: bool) -> None:
        tensors[f"{name}.weight"] = np.ones(width, dtype=np.float32)
        if bias:
            tensors[f"{name}.bias"] = np.zeros(width, dtype=np.float32)

    def linear(name: str, out: int, inp: int, bias: bool) -> None:
        normal(f"{name}.weight", out, inp)
        if bias:
            normal(f"{name}.bias", out)

    # Text model: Mistral (no biases, RMSNorm, grouped-query attention).
    h, heads, kv, hd = (
        TEXT[k] for k in ("hidden_size", "num_attention_heads", "num_key_value_heads", "head_dim")
    )
    lm = "language_model.model"
    normal(f"{lm}.embed_tokens.weight", PADDED_VOCAB, h)
    for i in range(TEXT["num_hidden_layers"]):
        layer = f"{lm}.layers.{i}"
        linear(f"{layer}.self_attn.q_proj", heads * hd, h, bias=False)
        linear(f"{layer}.self_attn.k_proj", kv * hd, h, bias=False)
        linear(f"{layer}.self_attn.v_proj", kv * hd, h, bias=False)
        linear(f"{layer}.self_attn.o_proj", h, heads * hd, bias=False)
        linear(f"{layer}.mlp.gate_proj", TEXT["intermediate_size"], h, bias=False)
        linear(f"{layer}.mlp.up_proj", TEXT["intermediate_size"], h, bias=False)
        linear(f"{layer}.mlp.down_proj", h, TEXT["intermediate_size"], bias=False)
        norm(f"{layer}.input_layernorm", h, bias=False)
        norm(f"{layer}.post_attention_layernorm", h, bias=False)
    norm(f"{lm}.norm", h, bias=False)
    normal("language_model.lm_head.weight", PADDED_VOCAB, h)

    # Vision tower: CLIP ViT, kept under "vision_model." as llava-hf checkpoints store it.
    d, patch = VISION["hidden_size"], VISION["patch_size"]
    positions = (VISION["image_size"] // patch) ** 2 + 1  # patches + CLS
    vm = "vision_tower.vision_model"
    normal(f"{vm}.embeddings.class_embedding", d)
    normal(f"{vm}.embeddings.patch_embedding.weight", d, 3, patch, patch)
    normal(f"{vm}.embeddings.position_embedding.weight", positions, d)
    norm(f"{vm}.pre_layrnorm", d, bias=True)  # sic: CLIP's own spelling
    for i in range(VISION["num_hidden_layers"]):
        layer = f"{vm}.encoder.layers.{i}"
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            linear(f"{layer}.self_attn.{proj}", d, d, bias=True)
        linear(f"{layer}.mlp.fc1", VISION["intermediate_size"], d, bias=True)
        linear(f"{layer}.mlp.fc2", d, VISION["intermediate_size"], bias=True)
        norm(f"{layer}.layer_norm1", d, bias=True)
        norm(f"{layer}.layer_norm2", d, bias=True)
    norm(f"{vm}.post_layernorm", d, bias=True)

    # Projector: vision width -> text width, GELU, text width -> text width.
    linear("multi_modal_projector.linear_1", h, d, bias=True)
    linear("multi_modal_projector.linear_2", h, h, bias=True)
    return tensors


def _write_json(path: Path, value: dict[str, Any]) -> None:
    path.write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
