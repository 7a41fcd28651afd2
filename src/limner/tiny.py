"""Tiny random-weight models in the real on-disk formats, for tests, demos and users' CI.

`write_tiny_llava` writes a BakLLaVA-shaped LLaVA (Mistral text model, CLIP-336 vision tower,
two-layer GELU projector) at tiny widths, in the layout of the llava-hf checkpoints on the
Hugging Face Hub. Every file a real `llava-hf/bakLlava-v1-hf` folder holds is there, with the
same names and shapes of keys, so the real loading code runs unchanged against it.
`write_tiny_llava_gguf` writes the same model as llama.cpp runs it (text GGUF + mmproj; needs
the `gguf` package).

`write_tiny_sd` writes a Stable Diffusion 1.5-shaped pipeline (four-level UNet, x8 VAE, CLIP
text encoder and tokenizer; optionally the 9-channel inpainting UNet, and a CLIP vision encoder
with IP-Adapter weights) at tiny widths, in the diffusers folder layout of
`runwayml/stable-diffusion-v1-5`, drawing 64x64 pictures. `write_tiny_sd_checkpoint` writes the
same weights as one A1111/Civitai-style single-file checkpoint (LDM layout), which loads with
the configs `write_tiny_sd_configs` writes (bundled with limner as `limner-tiny`).
`write_tiny_taesd` writes a tiny autoencoder (diffusers' `AutoencoderTiny`, TAESD's
architecture at tiny widths) in the folder layout of `madebyollin/taesd`; `write_tiny_sd(...,
tiny_vae=True)` keeps one in the model's `vae_tiny/` folder. `write_tiny_sdxl` writes a tiny
SDXL with diffusers' own classes (torch, for tests only).

All others need only numpy, safetensors and tokenizers (no torch, no transformers, no diffusers), run
offline in well under a second, and the same seed always gives byte-identical files.

    >>> from pathlib import Path
    >>> folder = write_tiny_llava(Path("tiny-llava"))
    >>> sorted(p.name for p in folder.iterdir())[:3]
    ['added_tokens.json', 'chat_template.jinja', 'config.json']
"""

from __future__ import annotations

import itertools
import json
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save_file
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from limner.engines.sd_configs import bytes_to_unicode

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


def _tokenizer(extra_corpus: Sequence[str] = ()) -> Tokenizer:
    # Learn merges with whitespace splitting (SentencePiece never merges across words), then
    # rebuild the model with Mistral's fixed ids in front: unk 0, bos 1, eos 2, bytes 3-258.
    # `extra_corpus` adds a model's own words (the toys' colours and shapes) to the merges.
    trainer_tok = Tokenizer(models.BPE(unk_token="<unk>"))
    trainer_tok.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="always", split=True)
    fixed = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    trainer = trainers.BpeTrainer(vocab_size=BASE_VOCAB - len(fixed), show_progress=False)
    trainer_tok.train_from_iterator([*CORPUS, *extra_corpus], trainer)
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
    return {**_clip_image_processor(VISION["image_size"]), "processor_class": "LlavaProcessor"}


def _clip_image_processor(size: int) -> dict[str, Any]:
    """OpenAI CLIP's preprocessing at `size`: resize, center crop, normalize."""
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


def write_tiny_llava_gguf(dest: Path, seed: int = 0, quantize: str = "f16") -> Path:
    """Write the tiny LLaVA as llama.cpp runs it: `dest/model.gguf` + `dest/mmproj.gguf`.

    The same weights as `write_tiny_llava(seed=seed)`, converted by `convert_llava` (which
    needs the `gguf` package, imported only here); returns `dest`.
    """
    from limner.store.gguf import convert_llava

    with tempfile.TemporaryDirectory() as tmp:
        convert_llava(write_tiny_llava(Path(tmp) / "tiny-llava", seed=seed), Path(dest), quantize)
    return Path(dest)


def _write_json(path: Path, value: dict[str, Any], mkdir: bool = False) -> None:
    if mkdir:
        path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


# --- Stable Diffusion ------------------------------------------------------------------------

# SD 1.5's topology at tiny widths: a UNet of four levels (the first three with cross-attention),
# a four-level x8 VAE and a CLIP text encoder. sample_size 8 latents x 8 = 64x64 pictures.
SD_UNET: dict[str, Any] = {
    "block_out_channels": [32, 32, 64, 64],
    "layers_per_block": 2,
    "cross_attention_dim": 32,
    "attention_head_dim": 2,  # SD 1.x's (misnamed) field: the number of heads
    "norm_num_groups": 8,
    "sample_size": 8,
}
SD_VAE: dict[str, Any] = {
    "block_out_channels": [8, 16, 32, 32],
    "layers_per_block": 1,
    "norm_num_groups": 8,
    "latent_channels": 4,
    "sample_size": 64,
}
SD_TEXT = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
}
SD_VISION = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "image_size": 32,
    "patch_size": 8,
    "projection_dim": 32,
}
# TAESD's architecture (diffusers' AutoencoderTiny defaults: four levels of 64 channels, x8)
# with one block per level and 8 channels: the same x8 factor and 4 latent channels as SD_VAE.
TAESD: dict[str, Any] = {
    "encoder_block_out_channels": [8, 8, 8, 8],
    "decoder_block_out_channels": [8, 8, 8, 8],
    "num_encoder_blocks": [1, 1, 1, 1],
    "num_decoder_blocks": [1, 1, 1, 1],
    "latent_channels": 4,
}
IP_TOKENS = 4  # the plain IP-Adapter projects one image embedding to 4 context tokens
CLIP_MERGES = 400  # learned BPE merges; real CLIP has 48894
DIFFUSERS_VERSION = "0.42.1"  # written into the configs; any diffusers >= 0.30 reads them

# Prompt-like text for the CLIP tokenizer's merges, so common prompt words are single pieces.
SD_CORPUS = [
    *CORPUS,
    "a photo of a cat sitting on a red chair, highly detailed, sharp focus, studio lighting",
    "an oil painting of a lighthouse on a cliff at sunset, dramatic sky, by a famous artist",
    "portrait of a woman with long hair, soft light, bokeh, 85mm, photograph, realistic",
    "a watercolor landscape with mountains, a river and trees in autumn, warm colors",
    "cyberpunk city street at night, neon lights, rain, reflections, cinematic, wide angle",
    "a cute dog wearing a hat, cartoon style, simple background, illustration, vector art",
    "low quality, blurry, ugly, deformed, bad anatomy, extra fingers, watermark, text",
    "astronaut riding a horse on the moon, digital art, trending on artstation, 4k, 8k",
]


def write_tiny_sd(
    dest: Path, seed: int = 0, inpaint: bool = False, ip_adapter: bool = True,
    tiny_vae: bool = False,
) -> Path:  # fmt: skip
    """Write a tiny Stable Diffusion 1.5-shaped pipeline in the diffusers layout; returns `dest`.

    The layout is that of `runwayml/stable-diffusion-v1-5` (model_index.json, unet/, vae/,
    text_encoder/, tokenizer/, scheduler/, feature_extractor/), with `inpaint` giving the
    9-channel UNet of `stable-diffusion-inpainting` (`StableDiffusionInpaintPipeline`). With
    `ip_adapter`, a CLIP vision `image_encoder/` (listed in model_index.json) and the IP-Adapter
    weights in `ip_adapter/ip-adapter.safetensors` (`image_proj.*`, `ip_adapter.N.to_k_ip/to_v_ip`,
    as in `h94/IP-Adapter`) are added. With `tiny_vae`, a tiny autoencoder (`write_tiny_taesd`)
    in `vae_tiny/`, where limner keeps a model's TAESD (not listed in model_index.json).

    Weights are random, drawn per component from `seed` (fan-in scaled normals, so pictures are
    not flat grey), float32. The same arguments give byte-identical files; the UNet, VAE and text
    encoder do not depend on `ip_adapter`. No torch, diffusers or transformers is needed.
    """
    dest = Path(dest)
    in_channels = 9 if inpaint else 4

    # 1. Tokenizer: CLIP's byte-level BPE files, as in the real SD 1.5 tokenizer/ folder.
    vocab = _write_clip_tokenizer(dest / "tokenizer")

    # 2. Components: a config and a safetensors file each, every one from its own seeded stream.
    _component(
        dest / "unet",
        "diffusion_pytorch_model",
        _unet_config(in_channels),
        _unet_weights(_rng(seed, 0), in_channels),
    )
    _component(dest / "vae", "diffusion_pytorch_model", _vae_config(), _vae_weights(_rng(seed, 1)))
    _component(
        dest / "text_encoder",
        "model",
        _clip_text_config(len(vocab)),
        _clip_text_weights(_rng(seed, 2), len(vocab)),
    )
    _write_json(dest / "scheduler" / "scheduler_config.json", _pndm_config(), mkdir=True)
    _write_json(
        dest / "feature_extractor" / "preprocessor_config.json",
        _feature_extractor_config(),
        mkdir=True,
    )

    # 3. IP-Adapter: the image encoder is a pipeline component; the adapter a weights file.
    if ip_adapter:
        _component(
            dest / "image_encoder",
            "model",
            _clip_vision_config(),
            _clip_vision_weights(_rng(seed, 3)),
        )
        (dest / "ip_adapter").mkdir(exist_ok=True)
        save_file(
            _ip_adapter_weights(_rng(seed, 4)),
            str(dest / "ip_adapter" / "ip-adapter.safetensors"),
            metadata={"format": "pt"},
        )

    if tiny_vae:
        write_tiny_taesd(dest / "vae_tiny", seed=seed)
    _write_json(dest / "model_index.json", _model_index(inpaint, ip_adapter))
    return dest


def write_tiny_taesd(dest: Path, seed: int = 0, latent_channels: int = 4) -> Path:
    """Write a tiny autoencoder in the layout of `madebyollin/taesd`; returns `dest`.

    `config.json` (`_class_name` "AutoencoderTiny") and `diffusion_pytorch_model.safetensors`
    with the state-dict names of diffusers' AutoencoderTiny: TAESD's topology (an encoder of
    strided convolutions and residual blocks, a decoder that upsamples x8) at 8 channels, with
    random weights from `seed`. It decodes the tiny SD's latents (`latent_channels` 4); another
    number makes one that does not fit, for tests. Deterministic; numpy and safetensors only.
    """
    config = {**TAESD, "latent_channels": latent_channels}
    _component(
        Path(dest),
        "diffusion_pytorch_model",
        {
            "_class_name": "AutoencoderTiny",
            "_diffusers_version": DIFFUSERS_VERSION,
            "act_fn": "relu",
            "in_channels": 3,
            "out_channels": 3,
            "latent_magnitude": 3,
            "latent_shift": 0.5,
            "scaling_factor": 1.0,
            "upsampling_scaling_factor": 2,
            "force_upcast": False,
            **config,
        },
        _taesd_weights(_rng(seed, 5), config),
    )
    return Path(dest)


def write_tiny_sdxl(dest: Path, tokenizer_folder: Path) -> Path:
    """A tiny SDXL (diffusers' own tiny test components: two CLIP text encoders, "text_time"
    conditioning, Euler) in the diffusers layout, with the tokenizer in `tokenizer_folder` (a
    tiny SD's `tokenizer/`); returns `dest`."""
    import torch  # built by diffusers' own classes, unlike the others here
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import (
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTextModelWithProjection,
        CLIPTokenizer,
    )

    torch.manual_seed(0)
    tokenizer = CLIPTokenizer.from_pretrained(tokenizer_folder)
    unet = UNet2DConditionModel(  # type: ignore[no-untyped-call]
        block_out_channels=(32, 64),
        layers_per_block=2,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=80,  # 6 x 8 + 32
        cross_attention_dim=64,  # the two encoders' widths side by side
        norm_num_groups=1,
    )
    vae = AutoencoderKL(  # type: ignore[no-untyped-call]
        block_out_channels=[32, 64],
        down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2,
        latent_channels=4,
        sample_size=128,
    )
    config = CLIPTextConfig(
        hidden_size=32,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        projection_dim=32,
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    pipe = StableDiffusionXLPipeline(  # type: ignore[no-untyped-call]
        vae=vae,
        text_encoder=CLIPTextModel(config),
        text_encoder_2=CLIPTextModelWithProjection(config),
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        unet=unet,
        scheduler=EulerDiscreteScheduler(  # type: ignore[no-untyped-call]
            beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1
        ),
        add_watermarker=False,
    )
    pipe.save_pretrained(dest)  # type: ignore[attr-defined]
    return dest


def write_tiny_sd_checkpoint(dest_file: Path, seed: int = 0, inpaint: bool = False) -> Path:
    """Write the tiny SD of `write_tiny_sd` as ONE single-file checkpoint; returns `dest_file`.

    The file is what Automatic1111 and Civitai distribute: a `.safetensors` in the original
    (LDM) layout, `model.diffusion_model.` (UNet), `first_stage_model.` (VAE, attention
    projections as 1x1 convolutions) and `cond_stage_model.transformer.text_model.` (CLIP text
    encoder), with no config and no tokenizer. Its weights are exactly those `write_tiny_sd`
    writes for the same `seed` and `inpaint` (9-channel UNet), so both load to the same model;
    its configs are limner's bundled `limner-tiny` / `limner-tiny-inpaint` (see
    `write_tiny_sd_configs`). Deterministic; numpy and safetensors only.
    """
    dest_file = Path(dest_file)
    dest_file.parent.mkdir(parents=True, exist_ok=True)
    vocab, _ = _clip_vocab()
    unet = _unet_weights(_rng(seed, 0), 9 if inpaint else 4)
    vae = _vae_weights(_rng(seed, 1))
    text = _clip_text_weights(_rng(seed, 2), len(vocab))
    tensors: dict[str, np.ndarray] = {}
    for name, value in unet.items():
        tensors["model.diffusion_model." + _ldm_unet_key(name)] = value
    for name, value in vae.items():
        key, value = _ldm_vae_tensor(name, value)
        tensors["first_stage_model." + key] = value
    for name, value in text.items():  # already under "text_model."
        tensors["cond_stage_model.transformer." + name] = value
    save_file(tensors, str(dest_file), metadata={"format": "pt"})
    return dest_file


def write_tiny_sd_configs(dest: Path, inpaint: bool = False) -> Path:
    """Write the diffusers configs of the tiny SD, without weights, into `dest`; returns it.

    This is limner's bundled `limner-tiny` (`limner-tiny-inpaint`) config folder, the one a
    tiny single-file checkpoint loads with: model_index.json, scheduler/, unet/, vae/,
    text_encoder/ and tokenizer/ (with the tiny vocabulary), as `write_tiny_sd` writes them,
    minus the IP-Adapter and feature extractor, which single files do not use.
    """
    dest = Path(dest)
    vocab = _write_clip_tokenizer(dest / "tokenizer")
    _write_json(dest / "unet" / "config.json", _unet_config(9 if inpaint else 4), mkdir=True)
    _write_json(dest / "vae" / "config.json", _vae_config(), mkdir=True)
    _write_json(dest / "text_encoder" / "config.json", _clip_text_config(len(vocab)), mkdir=True)
    _write_json(dest / "scheduler" / "scheduler_config.json", _pndm_config(), mkdir=True)
    index = _model_index(inpaint, ip_adapter=False)
    _write_json(dest / "model_index.json", {**index, "feature_extractor": [None, None]})
    return dest


def _write_clip_tokenizer(folder: Path) -> dict[str, int]:
    vocab, merges = _clip_vocab()
    folder.mkdir(parents=True, exist_ok=True)
    _write_json(folder / "vocab.json", vocab)
    (folder / "merges.txt").write_text(
        "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8"
    )
    _write_json(folder / "tokenizer_config.json", _clip_tokenizer_config())
    _write_json(
        folder / "special_tokens_map.json",
        {
            "bos_token": "<|startoftext|>",
            "eos_token": "<|endoftext|>",
            "pad_token": "<|endoftext|>",
            "unk_token": "<|endoftext|>",
        },
    )
    return vocab


# diffusers -> LDM names of the UNet and VAE (the inverse of diffusers' single-file conversion,
# as in diffusers' scripts/convert_diffusers_to_original_stable_diffusion.py).
_LDM_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}
_LDM_VAE_ATTENTION = {
    "group_norm": "norm",
    "to_q": "q",
    "to_k": "k",
    "to_v": "v",
    "to_out.0": "proj_out",
}


def _ldm_unet_prefixes() -> list[tuple[str, str, bool]]:
    """(diffusers prefix, LDM prefix, is a resnet) for SD 1.x's block layout at SD_UNET's size:
    each level has `layers` resnets (+ attentions) and then its down/upsampler, numbered on."""
    levels = len(SD_UNET["block_out_channels"])
    layers: int = SD_UNET["layers_per_block"]
    per_level = layers + 1
    prefixes = [
        ("time_embedding.linear_1.", "time_embed.0.", False),
        ("time_embedding.linear_2.", "time_embed.2.", False),
        ("conv_in.", "input_blocks.0.0.", False),
        ("conv_norm_out.", "out.0.", False),
        ("conv_out.", "out.2.", False),
        ("mid_block.resnets.0.", "middle_block.0.", True),
        ("mid_block.attentions.0.", "middle_block.1.", False),
        ("mid_block.resnets.1.", "middle_block.2.", True),
    ]
    for i in range(levels):
        for j in range(layers):
            block = per_level * i + j + 1
            prefixes.append((f"down_blocks.{i}.resnets.{j}.", f"input_blocks.{block}.0.", True))
            prefixes.append((f"down_blocks.{i}.attentions.{j}.", f"input_blocks.{block}.1.", False))
        prefixes.append(
            (
                f"down_blocks.{i}.downsamplers.0.conv.",
                f"input_blocks.{per_level * (i + 1)}.0.op.",
                False,
            )
        )
        for j in range(per_level):
            block = per_level * i + j
            prefixes.append((f"up_blocks.{i}.resnets.{j}.", f"output_blocks.{block}.0.", True))
            prefixes.append((f"up_blocks.{i}.attentions.{j}.", f"output_blocks.{block}.1.", False))
        # The upsampler follows the level's last resnet (and its attention, if the level has one).
        slot = 2 if i > 0 else 1  # up level 0 is UpBlock2D, without attention
        prefixes.append(
            (
                f"up_blocks.{i}.upsamplers.0.",
                f"output_blocks.{per_level * i + layers}.{slot}.",
                False,
            )
        )
    return prefixes


def _ldm_unet_key(name: str) -> str:
    for diffusers_prefix, ldm_prefix, resnet in _ldm_unet_prefixes():
        if name.startswith(diffusers_prefix):
            rest = name[len(diffusers_prefix) :]
            if resnet:
                module, _, param = rest.partition(".")
                rest = f"{_LDM_RESNET[module]}.{param}"
            return ldm_prefix + rest
    raise KeyError(f"no LDM name for UNet weight {name!r}")


def _ldm_vae_tensor(name: str, value: np.ndarray) -> tuple[str, np.ndarray]:
    """The LDM name of a VAE weight, and the weight, 1x1-conv shaped for mid-block attention."""
    last = len(SD_VAE["block_out_channels"]) - 1
    part, _, rest = name.partition(".")  # "encoder" / "decoder" / quant convs
    if part not in ("encoder", "decoder"):
        return name, value
    patterns: list[tuple[str, str]] = [
        (r"down_blocks\.(\d+)\.resnets\.(\d+)\.", "down.{0}.block.{1}."),
        (r"down_blocks\.(\d+)\.downsamplers\.0\.", "down.{0}.downsample."),
        (r"up_blocks\.(\d+)\.resnets\.(\d+)\.", "up.{u}.block.{1}."),
        (r"up_blocks\.(\d+)\.upsamplers\.0\.", "up.{u}.upsample."),
        (r"mid_block\.resnets\.(\d+)\.", "mid.block_{m}."),
    ]
    for pattern, template in patterns:
        match = re.match(pattern, rest)
        if match:
            groups = [int(g) for g in match.groups()]
            prefix = template.format(*groups, u=last - groups[0], m=groups[0] + 1)
            tail = rest[match.end() :].replace("conv_shortcut", "nin_shortcut")
            return f"{part}.{prefix}{tail}", value
    if rest.startswith("mid_block.attentions.0."):
        module, _, param = rest[len("mid_block.attentions.0.") :].rpartition(".")
        if value.ndim == 2:  # LDM's attention projections are 1x1 convolutions
            value = value[:, :, None, None]
        return f"{part}.mid.attn_1.{_LDM_VAE_ATTENTION[module]}.{param}", value
    if rest.startswith("conv_norm_out."):
        return f"{part}.norm_out.{rest.partition('.')[2]}", value
    return name, value  # conv_in, conv_out


def _rng(seed: int, component: int) -> np.random.Generator:
    return np.random.default_rng([seed, component])


def _component(
    folder: Path, stem: str, config: dict[str, Any], weights: dict[str, np.ndarray]
) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    _write_json(folder / "config.json", config)
    save_file(weights, str(folder / f"{stem}.safetensors"), metadata={"format": "pt"})


class _Draw:
    """Random tensors under their state-dict names, drawn in call order from one generator."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.tensors: dict[str, np.ndarray] = {}

    def normal(self, name: str, shape: tuple[int, ...], std: float) -> None:
        self.tensors[name] = self.rng.normal(0.0, std, size=shape).astype(np.float32)

    def linear(self, name: str, out: int, inp: int, bias: bool = True) -> None:
        self.normal(f"{name}.weight", (out, inp), inp**-0.5)
        if bias:
            self.tensors[f"{name}.bias"] = np.zeros(out, dtype=np.float32)

    def conv(self, name: str, out: int, inp: int, kernel: int = 3) -> None:
        self.normal(f"{name}.weight", (out, inp, kernel, kernel), (inp * kernel * kernel) ** -0.5)
        self.tensors[f"{name}.bias"] = np.zeros(out, dtype=np.float32)

    def norm(self, name: str, width: int) -> None:
        self.tensors[f"{name}.weight"] = np.ones(width, dtype=np.float32)
        self.tensors[f"{name}.bias"] = np.zeros(width, dtype=np.float32)

    def resnet(self, name: str, inp: int, out: int, temb: int | None) -> None:
        # diffusers' ResnetBlock2D; a 1x1 shortcut when the width changes.
        self.norm(f"{name}.norm1", inp)
        self.conv(f"{name}.conv1", out, inp)
        if temb is not None:
            self.linear(f"{name}.time_emb_proj", out, temb)
        self.norm(f"{name}.norm2", out)
        self.conv(f"{name}.conv2", out, out)
        if inp != out:
            self.conv(f"{name}.conv_shortcut", out, inp, kernel=1)

    def transformer(self, name: str, width: int, context: int) -> None:
        # diffusers' Transformer2DModel (1x1 conv projections, as SD 1.x) with one block.
        self.norm(f"{name}.norm", width)
        self.conv(f"{name}.proj_in", width, width, kernel=1)
        block = f"{name}.transformer_blocks.0"
        for attn, kv in (("attn1", width), ("attn2", context)):
            self.norm(f"{block}.norm{attn[-1]}", width)
            self.linear(f"{block}.{attn}.to_q", width, width, bias=False)
            self.linear(f"{block}.{attn}.to_k", width, kv, bias=False)
            self.linear(f"{block}.{attn}.to_v", width, kv, bias=False)
            self.linear(f"{block}.{attn}.to_out.0", width, width)
        self.norm(f"{block}.norm3", width)
        self.linear(f"{block}.ff.net.0.proj", 8 * width, width)  # GEGLU: value and gate
        self.linear(f"{block}.ff.net.2", width, 4 * width)
        self.conv(f"{name}.proj_out", width, width, kernel=1)

    def vae_attention(self, name: str, width: int) -> None:
        self.norm(f"{name}.group_norm", width)
        for proj in ("to_q", "to_k", "to_v", "to_out.0"):
            self.linear(f"{name}.{proj}", width, width)


def _unet_weights(rng: np.random.Generator, in_channels: int) -> dict[str, np.ndarray]:
    # The order of UNet2DConditionModel.__init__ for SD 1.5's block types.
    draw = _Draw(rng)
    widths: list[int] = SD_UNET["block_out_channels"]
    layers: int = SD_UNET["layers_per_block"]
    context: int = SD_UNET["cross_attention_dim"]
    temb = 4 * widths[0]
    last = len(widths) - 1
    draw.conv("conv_in", widths[0], in_channels)
    draw.linear("time_embedding.linear_1", temb, widths[0])
    draw.linear("time_embedding.linear_2", temb, temb)

    previous = widths[0]
    for i, width in enumerate(widths):
        for j in range(layers):
            draw.resnet(f"down_blocks.{i}.resnets.{j}", previous if j == 0 else width, width, temb)
            if i < last:  # CrossAttnDownBlock2D
                draw.transformer(f"down_blocks.{i}.attentions.{j}", width, context)
        if i < last:
            draw.conv(f"down_blocks.{i}.downsamplers.0.conv", width, width)
        previous = width

    reversed_widths = widths[::-1]
    for i, width in enumerate(reversed_widths):
        skip_in = reversed_widths[min(i + 1, last)]
        for j in range(layers + 1):
            skip = skip_in if j == layers else width
            draw.resnet(
                f"up_blocks.{i}.resnets.{j}", (previous if j == 0 else width) + skip, width, temb
            )
            if i > 0:  # CrossAttnUpBlock2D
                draw.transformer(f"up_blocks.{i}.attentions.{j}", width, context)
        if i < last:
            draw.conv(f"up_blocks.{i}.upsamplers.0.conv", width, width)
        previous = width

    middle = widths[-1]
    draw.resnet("mid_block.resnets.0", middle, middle, temb)
    draw.transformer("mid_block.attentions.0", middle, context)
    draw.resnet("mid_block.resnets.1", middle, middle, temb)
    draw.norm("conv_norm_out", widths[0])
    draw.conv("conv_out", 4, widths[0])
    return draw.tensors


def _vae_weights(rng: np.random.Generator) -> dict[str, np.ndarray]:
    draw = _Draw(rng)
    widths: list[int] = SD_VAE["block_out_channels"]
    layers: int = SD_VAE["layers_per_block"]
    latent: int = SD_VAE["latent_channels"]
    last = len(widths) - 1

    draw.conv("encoder.conv_in", widths[0], 3)
    previous = widths[0]
    for i, width in enumerate(widths):
        for j in range(layers):
            draw.resnet(
                f"encoder.down_blocks.{i}.resnets.{j}", previous if j == 0 else width, width, None
            )
        if i < last:
            draw.conv(f"encoder.down_blocks.{i}.downsamplers.0.conv", width, width)
        previous = width
    _vae_middle(draw, "encoder.mid_block", widths[-1])
    draw.norm("encoder.conv_norm_out", widths[-1])
    draw.conv("encoder.conv_out", 2 * latent, widths[-1])  # mean and log-variance

    draw.conv("decoder.conv_in", widths[-1], latent)
    _vae_middle(draw, "decoder.mid_block", widths[-1])
    previous = widths[-1]
    for i, width in enumerate(widths[::-1]):
        for j in range(layers + 1):
            draw.resnet(
                f"decoder.up_blocks.{i}.resnets.{j}", previous if j == 0 else width, width, None
            )
        if i < last:
            draw.conv(f"decoder.up_blocks.{i}.upsamplers.0.conv", width, width)
        previous = width
    draw.norm("decoder.conv_norm_out", widths[0])
    draw.conv("decoder.conv_out", 3, widths[0])

    draw.conv("quant_conv", 2 * latent, 2 * latent, kernel=1)
    draw.conv("post_quant_conv", latent, latent, kernel=1)
    return draw.tensors


def _taesd_weights(rng: np.random.Generator, config: dict[str, Any]) -> dict[str, np.ndarray]:
    # diffusers' EncoderTiny and DecoderTiny: nn.Sequential layers, numbered with the
    # activations and upsamplers that hold no weights. A block (AutoencoderTinyBlock) is three
    # 3x3 convolutions (`conv.0/2/4`) around ReLUs, with no shortcut weights at one width.
    draw = _Draw(rng)
    latent: int = config["latent_channels"]

    def block(name: str, width: int) -> None:
        for index in (0, 2, 4):
            draw.conv(f"{name}.conv.{index}", width, width)

    widths, counts = config["encoder_block_out_channels"], config["num_encoder_blocks"]
    index = 0
    for level, (width, count) in enumerate(zip(widths, counts, strict=True)):
        if level == 0:
            draw.conv(f"encoder.layers.{index}", width, 3)
        else:  # a strided convolution without bias halves the side
            draw.normal(f"encoder.layers.{index}.weight", (width, width, 3, 3), (9 * width) ** -0.5)
        index += 1
        for _ in range(count):
            block(f"encoder.layers.{index}", width)
            index += 1
    draw.conv(f"encoder.layers.{index}", latent, widths[-1])

    widths, counts = config["decoder_block_out_channels"], config["num_decoder_blocks"]
    draw.conv("decoder.layers.0", widths[0], latent)
    index = 2  # after the first convolution and its ReLU
    last = len(widths) - 1
    for level, (width, count) in enumerate(zip(widths, counts, strict=True)):
        for _ in range(count):
            block(f"decoder.layers.{index}", width)
            index += 1
        if level < last:  # an upsampler, then a convolution without bias
            index += 1
            draw.normal(f"decoder.layers.{index}.weight", (width, width, 3, 3), (9 * width) ** -0.5)
        else:  # its bias centres the output ([0, 1] before diffusers' x2 - 1): not all black
            draw.conv(f"decoder.layers.{index}", 3, width)
            draw.tensors[f"decoder.layers.{index}.bias"] += 0.5
        index += 1
    return draw.tensors


def _vae_middle(draw: _Draw, name: str, width: int) -> None:
    draw.resnet(f"{name}.resnets.0", width, width, None)
    draw.vae_attention(f"{name}.attentions.0", width)
    draw.resnet(f"{name}.resnets.1", width, width, None)


def _clip_encoder(draw: _Draw, prefix: str, config: dict[str, int]) -> None:
    d, inner = config["hidden_size"], config["intermediate_size"]
    for i in range(config["num_hidden_layers"]):
        layer = f"{prefix}.encoder.layers.{i}"
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            draw.linear(f"{layer}.self_attn.{proj}", d, d)
        draw.norm(f"{layer}.layer_norm1", d)
        draw.linear(f"{layer}.mlp.fc1", inner, d)
        draw.linear(f"{layer}.mlp.fc2", d, inner)
        draw.norm(f"{layer}.layer_norm2", d)


def _clip_text_weights(rng: np.random.Generator, vocab_size: int) -> dict[str, np.ndarray]:
    # "text_model." keys, as the SD 1.5 checkpoints on the Hub store them (transformers 5 also
    # reads them; it would write them without the prefix).
    draw = _Draw(rng)
    d = SD_TEXT["hidden_size"]
    draw.normal("text_model.embeddings.token_embedding.weight", (vocab_size, d), STD)
    draw.normal("text_model.embeddings.position_embedding.weight", (77, d), STD)
    _clip_encoder(draw, "text_model", SD_TEXT)
    draw.norm("text_model.final_layer_norm", d)
    return draw.tensors


def _clip_vision_weights(rng: np.random.Generator) -> dict[str, np.ndarray]:
    draw = _Draw(rng)
    d, patch = SD_VISION["hidden_size"], SD_VISION["patch_size"]
    positions = (SD_VISION["image_size"] // patch) ** 2 + 1
    draw.normal("vision_model.embeddings.class_embedding", (d,), STD)
    draw.normal(
        "vision_model.embeddings.patch_embedding.weight",
        (d, 3, patch, patch),
        (3 * patch * patch) ** -0.5,
    )
    draw.normal("vision_model.embeddings.position_embedding.weight", (positions, d), STD)
    draw.norm("vision_model.pre_layrnorm", d)  # sic: CLIP's own spelling
    _clip_encoder(draw, "vision_model", SD_VISION)
    draw.norm("vision_model.post_layernorm", d)
    draw.linear("visual_projection", SD_VISION["projection_dim"], d, bias=False)
    return draw.tensors


def _ip_adapter_weights(rng: np.random.Generator) -> dict[str, np.ndarray]:
    # One image embedding -> IP_TOKENS context tokens, then a key and value projection for them
    # beside every cross-attention. Cross-attentions are numbered 1, 3, 5, ... in the order of
    # `unet.attn_processors` (down blocks, up blocks, middle); the self-attentions take the even ids.
    draw = _Draw(rng)
    context = SD_UNET["cross_attention_dim"]
    draw.linear("image_proj.proj", IP_TOKENS * context, SD_VISION["projection_dim"])
    draw.norm("image_proj.norm", context)
    for n, width in enumerate(_cross_attention_widths()):
        draw.linear(f"ip_adapter.{2 * n + 1}.to_k_ip", width, context, bias=False)
        draw.linear(f"ip_adapter.{2 * n + 1}.to_v_ip", width, context, bias=False)
    return draw.tensors


def _cross_attention_widths() -> list[int]:
    widths: list[int] = SD_UNET["block_out_channels"]
    layers: int = SD_UNET["layers_per_block"]
    down = [w for w in widths[:-1] for _ in range(layers)]
    up = [w for w in widths[::-1][1:] for _ in range(layers + 1)]
    return [*down, *up, widths[-1]]


def _clip_vocab() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """CLIP's vocabulary layout: 256 byte symbols, the same with `</w>`, one token per learned
    merge, then `<|startoftext|>` and `<|endoftext|>` last; and the merges in rank order."""
    table = bytes_to_unicode()
    words: dict[tuple[str, ...], int] = {}
    for line in SD_CORPUS:
        # CLIP's pre-tokenizer, roughly: lower case; runs of letters, single digits, punctuation.
        for word in re.findall(r"[^\W\d_]+|\d|[^\s\w]+", line.lower()):
            chars = [table[b] for b in word.encode("utf-8")]
            chars[-1] += "</w>"
            words[tuple(chars)] = words.get(tuple(chars), 0) + 1

    merges: list[tuple[str, str]] = []
    for _ in range(CLIP_MERGES):
        pairs: dict[tuple[str, str], int] = {}
        for symbols, count in words.items():
            for pair in itertools.pairwise(symbols):
                pairs[pair] = pairs.get(pair, 0) + count
        if not pairs:
            break
        # Most frequent pair; ties broken by the pair itself, so the result is deterministic.
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        words = {_merge(symbols, best): count for symbols, count in words.items()}

    tokens = list(table.values())
    tokens += [t + "</w>" for t in tokens]
    tokens += ["".join(pair) for pair in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab: dict[str, int] = {}
    for token in tokens:
        vocab.setdefault(token, len(vocab))
    return vocab, merges


def _merge(symbols: tuple[str, ...], pair: tuple[str, str]) -> tuple[str, ...]:
    out: list[str] = []
    i = 0
    while i < len(symbols):
        if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == pair:
            out.append(symbols[i] + symbols[i + 1])
            i += 2
        else:
            out.append(symbols[i])
            i += 1
    return tuple(out)


def _clip_tokenizer_config() -> dict[str, Any]:
    return {
        "add_prefix_space": False,
        "bos_token": "<|startoftext|>",
        "clean_up_tokenization_spaces": True,
        "do_lower_case": True,
        "eos_token": "<|endoftext|>",
        "errors": "replace",
        "model_max_length": 77,  # without it, padding="max_length" in the pipeline breaks
        "pad_token": "<|endoftext|>",
        "tokenizer_class": "CLIPTokenizer",
        "unk_token": "<|endoftext|>",
    }


def _unet_config(in_channels: int) -> dict[str, Any]:
    levels = len(SD_UNET["block_out_channels"])
    return {
        "_class_name": "UNet2DConditionModel",
        "_diffusers_version": DIFFUSERS_VERSION,
        "act_fn": "silu",
        "center_input_sample": False,
        "down_block_types": ["CrossAttnDownBlock2D"] * (levels - 1) + ["DownBlock2D"],
        "downsample_padding": 1,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "in_channels": in_channels,
        "mid_block_scale_factor": 1,
        "norm_eps": 1e-05,
        "out_channels": 4,
        "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * (levels - 1),
        **SD_UNET,
    }


def _vae_config() -> dict[str, Any]:
    levels = len(SD_VAE["block_out_channels"])
    return {
        "_class_name": "AutoencoderKL",
        "_diffusers_version": DIFFUSERS_VERSION,
        "act_fn": "silu",
        "down_block_types": ["DownEncoderBlock2D"] * levels,
        "in_channels": 3,
        "out_channels": 3,
        "scaling_factor": 0.18215,
        "up_block_types": ["UpDecoderBlock2D"] * levels,
        **SD_VAE,
    }


def _clip_text_config(vocab_size: int) -> dict[str, Any]:
    # The tokenizer's real ids (not the Hub test config's eos 2, which picks the legacy
    # argmax path for the pooled output).
    return {
        "architectures": ["CLIPTextModel"],
        "model_type": "clip_text_model",
        **SD_TEXT,
        "hidden_act": "quick_gelu",
        "layer_norm_eps": 1e-05,
        "max_position_embeddings": 77,
        "projection_dim": SD_TEXT["hidden_size"],
        "vocab_size": vocab_size,
        "bos_token_id": vocab_size - 2,
        "eos_token_id": vocab_size - 1,
        "pad_token_id": vocab_size - 1,
        "torch_dtype": "float32",
    }


def _clip_vision_config() -> dict[str, Any]:
    return {
        "architectures": ["CLIPVisionModelWithProjection"],
        "model_type": "clip_vision_model",
        **SD_VISION,
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-05,
        "num_channels": 3,
        "torch_dtype": "float32",
    }


def _feature_extractor_config() -> dict[str, Any]:
    return _clip_image_processor(SD_VISION["image_size"])


def _pndm_config() -> dict[str, Any]:
    # SD 1.5's own scheduler/scheduler_config.json.
    return {
        "_class_name": "PNDMScheduler",
        "_diffusers_version": DIFFUSERS_VERSION,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "beta_start": 0.00085,
        "clip_sample": False,
        "num_train_timesteps": 1000,
        "prediction_type": "epsilon",
        "set_alpha_to_one": False,
        "skip_prk_steps": True,
        "steps_offset": 1,
        "timestep_spacing": "leading",
        "trained_betas": None,
    }


def _model_index(inpaint: bool, ip_adapter: bool) -> dict[str, Any]:
    return {
        "_class_name": "StableDiffusionInpaintPipeline" if inpaint else "StableDiffusionPipeline",
        "_diffusers_version": DIFFUSERS_VERSION,
        "feature_extractor": ["transformers", "CLIPImageProcessor"],
        "image_encoder": ["transformers", "CLIPVisionModelWithProjection"]
        if ip_adapter
        else [None, None],
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "scheduler": ["diffusers", "PNDMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
