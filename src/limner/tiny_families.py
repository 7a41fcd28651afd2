"""Tiny random-weight models of the vision families people run today, and a text-only one.

Each writer builds the family's real transformers classes at tiny widths (seeded), with a
tiny byte-level BPE tokenizer that carries the family's special tokens and a chat template
written as the family's published one is, and saves the folder as the Hugging Face Hub lays
it out (config.json, model.safetensors, tokenizer and processor files). `limner create
--from FOLDER` takes these folders as it takes the real models, so tests run the real
loading and processing code of each family. Needs torch and transformers.

    >>> folder = write_tiny_family("gemma3", Path("tiny-gemma3"))

Qwen2-VL and Qwen2.5-VL are not here: their processors need torchvision in transformers 5
(for video), which this project does not install.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

FAMILIES = ("gemma3", "llava-next", "smolvlm", "text")
TEXT: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-6,
}
CORPUS = [
    "What is in this picture? A red square on a white background.",
    "The picture shows a blue circle, a green triangle and a yellow star.",
    "Describe the colours and shapes you see, in one short sentence.",
    "system user assistant model image picture photo answer question",
]
QWEN_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# Qwen2.5's own template, shortened: tools offered in the system turn, calls in <tool_call> tags.
TEXT_TEMPLATE = (
    "{%- if tools %}<|im_start|>system\n"
    "{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] }}\n\n{% endif %}"
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>"
    "{% for tool in tools %}\n{{ tool | tojson }}{% endfor %}\n</tools>\n\n"
    "For each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\n<tool_call>\n"
    '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call><|im_end|>\n'
    "{% endif %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' and tools %}"
    "{% elif message['role'] == 'assistant' and message['tool_calls'] %}<|im_start|>assistant\n"
    "{% if message['content'] %}{{ message['content'] }}\n{% endif %}"
    "{% for call in message['tool_calls'] %}<tool_call>\n"
    '{"name": "{{ call.function.name }}", "arguments": {{ call.function.arguments | tojson }}}'
    "\n</tool_call>{% endfor %}<|im_end|>\n"
    "{% elif message['role'] == 'tool' %}<|im_start|>user\n<tool_response>\n"
    "{{ message['content'] }}\n</tool_response><|im_end|>\n"
    "{% else %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
GEMMA_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "<start_of_turn>{{ role }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<start_of_image>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
LLAVA_NEXT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' %}"
    "{{ message['content'][0]['text'] if message['content'] is not string else message['content'] }}\n"
    "{% else %}{{ message['role'].upper() }}: "
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image>\n"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}"
    "{% if message['role'] == 'assistant' %}</s>{% endif %}\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)
SMOLVLM_TEMPLATE = (
    "<|im_start|>{% for message in messages %}"
    "{{ message['role'] | capitalize }}"
    "{% if message['content'] is string %}: {{ message['content'] }}"
    "{% else %}{% if message['content'][0]['type'] == 'image' %}:{% else %}: {% endif %}"
    "{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image>{% elif part['type'] == 'text' %}{{ part['text'] }}"
    "{% endif %}{% endfor %}{% endif %}<end_of_utterance>\n{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)


def write_tiny_family(family: str, dest: Path, seed: int = 0) -> Path:
    """Write a tiny model of `family` (one of FAMILIES) into `dest`; returns `dest`."""
    try:
        writer = WRITERS[family]
    except KeyError:
        raise ValueError(f"no tiny {family!r}: choose one of {', '.join(FAMILIES)}") from None
    import torch

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        writer(dest)
    return dest


def _tokenizer(
    specials: list[str],
    eos: str,
    pad: str,
    bos: str | None = None,
    named: dict[str, str] | None = None,
    template: str = "",
) -> Any:
    """A byte-level BPE tokenizer learnt from CORPUS, with the family's special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=specials,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS, trainer)
    return PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tok,
        eos_token=eos,
        pad_token=pad,
        bos_token=bos,
        extra_special_tokens=named or {},
        chat_template=template or None,
    )


def _save(dest: Path, model: Any, processor: Any, eos_id: int) -> None:
    model.generation_config.eos_token_id = eos_id
    model.save_pretrained(dest)
    processor.save_pretrained(dest)


def _gemma3(dest: Path) -> None:
    from transformers import (
        Gemma3Config,
        Gemma3ForConditionalGeneration,
        Gemma3ImageProcessorPil,
        Gemma3Processor,
    )

    named = {
        "boi_token": "<start_of_image>",
        "eoi_token": "<end_of_image>",
        "image_token": "<image_soft_token>",
    }
    specials = ["<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>", *named.values()]
    tokenizer = _tokenizer(specials, eos="<eos>", pad="<pad>", bos="<bos>", named=named)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in specials}
    side, patch, per_side = 32, 8, 2  # 4x4 patches pooled to 2x2: 4 tokens a picture
    config = Gemma3Config(
        text_config={
            **TEXT,
            "vocab_size": len(tokenizer),
            "head_dim": 16,
            "query_pre_attn_scalar": 16,
            "sliding_window": 512,
            "bos_token_id": ids["<bos>"],
            "eos_token_id": ids["<eos>"],
            "pad_token_id": ids["<pad>"],
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": side,
            "patch_size": patch,
        },
        mm_tokens_per_image=per_side**2,
        boi_token_index=ids["<start_of_image>"],
        eoi_token_index=ids["<end_of_image>"],
        image_token_index=ids["<image_soft_token>"],
    )
    images = Gemma3ImageProcessorPil(size={"height": side, "width": side}, do_pan_and_scan=False)
    processor = Gemma3Processor(
        image_processor=images,
        tokenizer=tokenizer,
        chat_template=GEMMA_TEMPLATE,
        image_seq_length=per_side**2,
    )
    _save(dest, Gemma3ForConditionalGeneration(config), processor, ids["<end_of_turn>"])


def _llava_next(dest: Path) -> None:
    from transformers import (
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextImageProcessorPil,
        LlavaNextProcessor,
    )

    specials = ["<unk>", "<s>", "</s>", "<image>", "<pad>"]
    tokenizer = _tokenizer(
        specials, eos="</s>", pad="<pad>", bos="<s>", named={"image_token": "<image>"}
    )
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in specials}
    side, patch = 28, 14  # a 2x2-patch CLIP tower; any-resolution tiles of 28 px
    grid = [[side, side], [side, 2 * side], [2 * side, side], [2 * side, 2 * side]]
    config = LlavaNextConfig(
        text_config={**TEXT, "model_type": "mistral", "vocab_size": len(tokenizer)},
        vision_config={
            "model_type": "clip_vision_model",
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": side,
            "patch_size": patch,
            "projection_dim": 32,
        },
        image_grid_pinpoints=grid,
        image_token_index=ids["<image>"],
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
    )
    images = LlavaNextImageProcessorPil(
        size={"shortest_edge": side},
        crop_size={"height": side, "width": side},
        image_grid_pinpoints=grid,
    )
    processor = LlavaNextProcessor(  # type: ignore[no-untyped-call]
        image_processor=images,
        tokenizer=tokenizer,
        patch_size=patch,
        vision_feature_select_strategy="default",
        chat_template=LLAVA_NEXT_TEMPLATE,
        num_additional_image_tokens=1,
    )
    _save(dest, LlavaNextForConditionalGeneration(config), processor, ids["</s>"])


def _smolvlm(dest: Path) -> None:
    """SmolVLM as Idefics3 lays it out (its processor needs no video support)."""
    from transformers import (
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3ImageProcessorPil,
        Idefics3Processor,
    )

    specials = [
        "<|endoftext|>",
        "<|im_start|>",
        "<end_of_utterance>",
        "<image>",
        "<fake_token_around_image>",
        "<global-img>",
    ]
    tokenizer = _tokenizer(
        specials, eos="<end_of_utterance>", pad="<|endoftext|>", named={"image_token": "<image>"}
    )
    # SmolLM2's vocabulary has "\n\n" as one token, and llama.cpp relies on it between a
    # tiled picture's tiles and its whole view; this tiny BPE learns no such merge.
    tokenizer.add_tokens(["\n\n"])
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in specials}
    side, patch, scale = 32, 8, 2  # 4x4 patches shuffled to 2x2: 4 tokens a tile
    config = Idefics3Config(
        text_config={**TEXT, "model_type": "llama", "vocab_size": len(tokenizer)},
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": side,
            "patch_size": patch,
        },
        scale_factor=scale,
        image_token_id=ids["<image>"],
    )
    images = Idefics3ImageProcessorPil(
        size={"longest_edge": 2 * side},
        max_image_size={"longest_edge": side},
        do_image_splitting=True,
    )
    processor = Idefics3Processor(
        image_processor=images,
        tokenizer=tokenizer,
        chat_template=SMOLVLM_TEMPLATE,
        image_seq_len=(side // patch) ** 2 // scale**2,
    )
    _save(dest, Idefics3ForConditionalGeneration(config), processor, ids["<end_of_utterance>"])


def _text(dest: Path) -> None:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tokenizer = _tokenizer(specials, eos="<|im_end|>", pad="<|endoftext|>", template=TEXT_TEMPLATE)
    model = Qwen2ForCausalLM(Qwen2Config(**TEXT, vocab_size=len(tokenizer)))
    model.generation_config.eos_token_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)


WRITERS: dict[str, Callable[[Path], None]] = {
    "gemma3": _gemma3,
    "llava-next": _llava_next,
    "smolvlm": _smolvlm,
    "text": _text,
}
