"""Tiny random-weight models of the vision families people run today, and a text-only one.

Each writer builds the family's real transformers classes at tiny widths (seeded), with a
tiny byte-level BPE tokenizer that carries the family's special tokens and a chat template
written as the family's published one is, and saves the folder as the Hugging Face Hub lays
it out (config.json, model.safetensors, tokenizer and processor files). `limner create
--from FOLDER` takes these folders as it takes the real models, so tests run the real
loading and processing code of each family. Needs torch and transformers.

    >>> folder = write_tiny_family("gemma3", Path("tiny-gemma3"))

Qwen2-VL, Qwen2.5-VL and MiniCPM-V 4.6 are built from their real model classes; their
processors need torchvision in transformers 5 (for video), which this project does not install:
their folders hold the tokenizer and the image processor's preprocessor_config.json, as the Hub
lays them out, without processor_config.json (limner's engines/processors.py builds theirs).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

FAMILIES = (
    "gemma3",
    "llava-next",
    "minicpm-v4.6",
    "mistral3",
    "qwen2-vl",
    "qwen2.5-vl",
    "smolvlm",
    "text",
)
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
# Qwen2-VL's and Qwen2.5-VL's published template (one for both), without video's and
# add_vision_id's branches; a chat without a system turn gets the default one.
QWEN_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
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
    split: str = "",
) -> Any:
    """A byte-level BPE tokenizer learnt from CORPUS, with the family's special tokens;
    `split`, a regex, splits words first (as Qwen2's does) instead of GPT-2's own."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = (
        pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(split), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
        if split
        else pre_tokenizers.ByteLevel(add_prefix_space=False)
    )  # fmt: skip
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


def _qwen_vl(dest: Path, version: str) -> None:
    """Qwen2-VL ("2") or Qwen2.5-VL ("2.5"): a Qwen2 text model with M-RoPE and a ViT of
    14-px patches merged 2x2; 2.5's tower has RMSNorm, a gated MLP and window attention."""
    from transformers import Qwen2VLImageProcessorPil

    from limner.store.gguf_families import QWEN2_SPLIT

    specials = [
        "<|endoftext|>",
        "<|im_start|>",
        "<|im_end|>",
        "<|vision_start|>",
        "<|vision_end|>",
        "<|vision_pad|>",
        "<|image_pad|>",
        "<|video_pad|>",
    ]
    tokenizer = _tokenizer(
        specials,
        eos="<|im_end|>",
        pad="<|endoftext|>",
        template=QWEN_TEMPLATE,
        split=QWEN2_SPLIT,
    )
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in specials}
    text = {
        **TEXT,
        "vocab_size": len(tokenizer),
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
        # head_dim 16: the rotary half (8) split into time, height and width sections
        "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]},
    }
    tokens = {
        "image_token_id": ids["<|image_pad|>"],
        "video_token_id": ids["<|video_pad|>"],
        "vision_start_token_id": ids["<|vision_start|>"],
        "vision_end_token_id": ids["<|vision_end|>"],
    }
    model = _qwen_vl_model(version, text, tokens)
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    # The Hub's image settings (14-px patches, 2x2 merge, two frames a patch, 56x56 px at least).
    Qwen2VLImageProcessorPil().save_pretrained(dest)  # type: ignore[no-untyped-call]


def _qwen_vl_model(version: str, text: dict[str, Any], tokens: dict[str, Any]) -> Any:
    if version == "2":
        from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

        vision = {"depth": 2, "embed_dim": 32, "hidden_size": TEXT["hidden_size"],
                  "mlp_ratio": 2, "num_heads": 2}  # fmt: skip
        return Qwen2VLForConditionalGeneration(
            Qwen2VLConfig(text_config=text, vision_config=vision, **tokens)
        )
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    vision = {
        "depth": 2,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_heads": 2,
        "out_hidden_size": TEXT["hidden_size"],
        "window_size": 112,  # the real models' (and the one llama.cpp computes with)
        "fullatt_block_indexes": [1],  # block 0 attends within windows, block 1 to all
    }
    return Qwen2_5_VLForConditionalGeneration(
        Qwen2_5_VLConfig(text_config=text, vision_config=vision, **tokens)
    )


def _text(dest: Path) -> None:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tokenizer = _tokenizer(specials, eos="<|im_end|>", pad="<|endoftext|>", template=TEXT_TEMPLATE)
    model = Qwen2ForCausalLM(Qwen2Config(**TEXT, vocab_size=len(tokenizer)))
    model.generation_config.eos_token_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)


# Mistral Small 3.1's published template (its chat_template.json), as text: a default system
# prompt with today's date, [INST] turns, "[IMG]" where a picture goes.
MISTRAL3_TEMPLATE = """{%- set today = strftime_now("%Y-%m-%d") %}
{%- set default_system_message = "You are Mistral Small 3, a Large Language Model (LLM) created by Mistral AI, a French startup headquartered in Paris.\\nYour knowledge base was last updated on 2023-10-01. The current date is " + today + ".\\n\\nWhen you're not sure about some information, you say that you don't have the information and don't make up anything.\\nIf the user's question is not clear, ambiguous, or does not provide enough context for you to accurately answer the question, you do not try to answer it right away and you rather ask the user to clarify their request (e.g. \\"What are some good restaurants around me?\\" => \\"Where are you?\\" or \\"When is the next flight to Tokyo\\" => \\"Where do you travel from?\\")" %}

{{- bos_token }}

{%- if messages[0]['role'] == 'system' %}
    {%- if messages[0] is string %}
        {%- set system_message = messages[0]['content'] %}
        {%- set loop_messages = messages[1:] %}
    {%- else %}
        {%- set system_message = messages[0]['content'][0]['text'] %}
        {%- set loop_messages = messages[1:] %}
    {%- endif %}
{%- else %}
    {%- set system_message = default_system_message %}
    {%- set loop_messages = messages %}
{%- endif %}
{{- '[SYSTEM_PROMPT]' + system_message + '[/SYSTEM_PROMPT]' }}

{%- for message in loop_messages %}
    {%- if message['role'] == 'user' %}
            {%- if message['content'] is string %}
            {{- '[INST]' + message['content'] + '[/INST]' }}
            {%- else %}
                    {{- '[INST]' }}
                    {%- for block in message['content'] %}
                            {%- if block['type'] == 'text' %}
                                    {{- block['text'] }}
                            {%- elif block['type'] == 'image' or block['type'] == 'image_url' %}
                                    {{- '[IMG]' }}
                                {%- else %}
                                    {{- raise_exception('Only text and image blocks are supported in message content!') }}
                                {%- endif %}
                        {%- endfor %}
                    {{- '[/INST]' }}
                {%- endif %}
    {%- elif message['role'] == 'system' %}
        {{- '[SYSTEM_PROMPT]' + message['content'] + '[/SYSTEM_PROMPT]' }}
    {%- elif message['role'] == 'assistant' %}
        {%- if message['content'] is string %}
            {{- message['content'] + eos_token }}
        {%- else %}
            {{- message['content'][0]['text'] + eos_token }}
        {%- endif %}
    {%- else %}
        {{- raise_exception('Only user, system and assistant roles are supported!') }}
    {%- endif %}
{%- endfor %}"""


def _mistral3(dest: Path) -> None:
    """Mistral Small 3.1: a Mistral text model, a Pixtral tower (2-D RoPE, any picture size)
    and the 2x2 patch merger. PixtralProcessor needs torchvision, so the processor's files
    are written as the Hub lays them out, beside the image processor's and the tokenizer's."""
    import json

    from transformers import (
        Mistral3Config,
        Mistral3ForConditionalGeneration,
        PixtralImageProcessorPil,
    )

    picture = {"image_token": "[IMG]", "image_break_token": "[IMG_BREAK]",
               "image_end_token": "[IMG_END]"}  # fmt: skip
    specials = ["<unk>", "<s>", "</s>", "[INST]", "[/INST]", *picture.values(), "<pad>",
                "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]"]  # fmt: skip
    tokenizer = _tokenizer(specials, eos="</s>", pad="<pad>", bos="<s>")
    _tekken_split(tokenizer)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in specials}
    patch, merge, longest = 8, 2, 64  # 16-px tokens; a picture fits in 64 px: 4x4 tokens at most
    config = Mistral3Config(
        text_config={
            **TEXT,
            "model_type": "mistral",
            "vocab_size": len(tokenizer),
            "head_dim": 16,
            "rms_norm_eps": 1e-5,  # the real model's, which its projector's norm shares
            "sliding_window": None,  # as Mistral Small 3.1: attention over the whole window
            "bos_token_id": ids["<s>"],
            "eos_token_id": ids["</s>"],
            "pad_token_id": ids["<pad>"],
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": longest,
            "patch_size": patch,
            "hidden_act": "silu",  # Mistral Small 3.1's tower
        },
        image_token_index=ids["[IMG]"],
        spatial_merge_size=merge,
        tie_word_embeddings=False,
    )
    model = Mistral3ForConditionalGeneration(config)
    model.generation_config.eos_token_id = ids["</s>"]
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    (dest / "chat_template.jinja").write_text(MISTRAL3_TEMPLATE, encoding="utf-8")
    PixtralImageProcessorPil(  # type: ignore[no-untyped-call]
        size={"longest_edge": longest}, patch_size={"height": patch, "width": patch}
    ).save_pretrained(dest)
    processor = {"processor_class": "PixtralProcessor", "patch_size": patch,
                 "spatial_merge_size": merge, **picture}  # fmt: skip
    (dest / "processor_config.json").write_text(json.dumps(processor, indent=2) + "\n")


def _tekken_split(tokenizer: Any) -> None:
    """Split text as Mistral's tekken tokenizer.json does (its regex, then bytes), so the
    folder's tokenizer is laid out as the real model's and llama.cpp reads it as "tekken"."""
    from tokenizers import Regex, pre_tokenizers

    from limner.store.gguf_families import TEKKEN_SPLIT

    tokenizer.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(TEKKEN_SPLIT), "isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )


# MiniCPM-V 4.6's template as Qwen3.5's turns (its language model's), shortened: no tools or
# thinking branches; a picture is "<|image_pad|>" on its own line, which the processor expands
# into the picture's <image>...</image> and <slice>...</slice> runs.
MINICPMV46_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' or 'image' in part or 'image_url' in part %}<|image_pad|>\n"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _minicpmv46(dest: Path) -> None:
    """MiniCPM-V 4.6: a SigLIP tower with a 2x2 window-attention merger after block
    `insert_layer_id`, a 2x2 merger MLP into a Qwen3.5 text model (Gated DeltaNet layers and
    gated full attention). The tower's positions are a 70x70 grid, as the real model's (and
    llama.cpp's); its pictures are cut into 32-px slices of 4x4-px patches (4 tokens each)."""
    from transformers import (
        MiniCPMV4_6Config,
        MiniCPMV4_6ForConditionalGeneration,
        MiniCPMV4_6ImageProcessorPil,
    )

    from limner.store.gguf_families import QWEN35_SPLIT

    named = {
        "image_token": "<|image_pad|>",
        "video_token": "<|video_pad|>",
        "image_start_token": "<image>",
        "image_end_token": "</image>",
        "slice_start_token": "<slice>",
        "slice_end_token": "</slice>",
        "image_id_start_token": "<image_id>",
        "image_id_end_token": "</image_id>",
    }
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>",
                "<|vision_end|>", *named.values(), "<think>", "</think>"]  # fmt: skip
    tokenizer = _tokenizer(
        specials,
        eos="<|im_end|>",
        pad="<|endoftext|>",
        named=named,
        template=MINICPMV46_TEMPLATE,
        split=QWEN35_SPLIT,
    )
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in specials}
    patch, slice_side = 4, 32  # 8x8 patches a slice, merged 4x4: 4 tokens
    config = MiniCPMV4_6Config(
        text_config={
            **TEXT,
            "model_type": "qwen3_5_text",
            "vocab_size": len(tokenizer),
            "num_hidden_layers": 4,
            "full_attention_interval": 2,  # Gated DeltaNet, full attention, twice
            "head_dim": 32,  # a quarter rotates: 4 pairs, split 2/1/1 as M-RoPE's sections
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 1e7,
                "partial_rotary_factor": 0.25,
                "mrope_section": [2, 1, 1],
                "mrope_interleaved": True,
            },
            "linear_key_head_dim": 16,
            "linear_value_head_dim": 16,
            "linear_num_key_heads": 2,
            "linear_num_value_heads": 4,  # two value heads a key head, as the real model's
            "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "patch_size": patch,
            "image_size": 70 * patch,  # the 70x70 position grid
        },
        insert_layer_id=0,
        image_size=slice_side,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
    )
    model = MiniCPMV4_6ForConditionalGeneration(config)
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    MiniCPMV4_6ImageProcessorPil(  # type: ignore[no-untyped-call]
        scale_resolution=slice_side, patch_size=patch
    ).save_pretrained(dest)


WRITERS: dict[str, Callable[[Path], None]] = {
    "gemma3": _gemma3,
    "llava-next": _llava_next,
    "minicpm-v4.6": _minicpmv46,
    "mistral3": _mistral3,
    "qwen2-vl": partial(_qwen_vl, version="2"),
    "qwen2.5-vl": partial(_qwen_vl, version="2.5"),
    "smolvlm": _smolvlm,
    "text": _text,
}
