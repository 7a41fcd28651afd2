"""A toy vision chat model that knows its shapes: asked "What colour is the shape?", it says "red".

BakLLaVA's architecture at tiny widths (`LlavaForConditionalGeneration`: a Mistral text model,
a CLIP vision tower, a two-layer GELU projector; Llama/Mistral tokenizer ids and the
LLaVA-1.5 chat template, as `limner.tiny` writes them) looking at 64x64 pictures through
8x8 patches, so one picture is 64 tokens. It is trained from scratch, on fresh `shapes.py`
pictures every batch, to answer the three `shapes.QUESTIONS` ("red", "circle", "a red
circle", each followed by end-of-sequence) exactly as limner's engines prompt it:

    <s> USER: <image>\\n{question} ASSISTANT: {answer}</s>

llama.cpp sees the same chat in two ways of its own, and the model is trained on each form,
half the time, independently, so that it answers alike on both engines:
- libmtmd tokenizes the text after a picture as a chunk of its own, with SentencePiece's
  dummy-prefix space in front ("▁", then "\\n"), where transformers does not;
- its llava graph puts CLIP's class token after the patches (llama.cpp #25814; the fix, PR
  #25844, is not in the llama.cpp limner runs): each patch gets its neighbour's position
  embedding, the first patch is dropped and the class token is fed as the last image token.
  A model trained only as transformers runs it named colours right on llama.cpp three times
  in four; see `_llama_cpp_image_features`, checked against libmtmd's output to 0.005.

`train` writes a llava-hf folder (float16 safetensors) that limner's transformers engine
loads like any stored model, and `write_gguf` converts it for llama.cpp. `evaluate` asks
about fresh pictures through either engine, greedily, and counts right answers.

    >>> metrics = train(Path("see"))  # about 9 minutes on one CPU core
    >>> evaluate(Path("see"), engine="llamacpp")["shape"]
    0.98
"""

from __future__ import annotations

import contextlib
import io
import math
import random
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from safetensors.torch import save
from transformers import AutoProcessor, LlavaConfig, LlavaForConditionalGeneration

from limner import tiny
from limner.toys.shapes import (
    COLOURS,
    QUESTIONS,
    SHAPES,
    SIZE,
    UNSEEN,
    Spec,
    answers,
    draw,
    random_spec,
)

# Widths. The text model only has to copy what the pictures tell it into one of a few words.
TEXT = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
}
VISION = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "image_size": SIZE,
    "patch_size": 8,
}
FEATURE_LAYER = -2  # the pictures' features come from the second to last block, as BakLLaVA's
IMAGE_TOKENS = (SIZE // 8) ** 2

# Steps and rates: about 8 minutes (0.15 s a step) on one core of a 2-core machine.
STEPS, BATCH, LEARNING_RATE, WARMUP = 3000, 48, 2e-3, 100
# One thread: the same seed then writes the same bytes on any machine (torch's sums split
# differently with more threads), and training beside another process does not stall (two
# threads sharing their cores with one took 2.9 s a step, twenty times longer).
THREADS = 1
LLAMA_CPP_SHARE = 0.5  # prompts tokenized, and pictures seen, as llama.cpp does (each alone)
EVAL_COUNT = 100  # pictures `train` asks about to report its accuracy
ENGINES = ("transformers", "llamacpp")
LOG_EVERY = 50

# The toys' words, so that each colour and shape is one piece of the tokenizer.
CORPUS = [
    *QUESTIONS.values(),
    *(f"a {colour} {shape}" for colour in (*COLOURS, *UNSEEN) for shape in SHAPES),
    *(f"The {shape} is {colour}." for colour in (*COLOURS, *UNSEEN) for shape in SHAPES),
]


def train(dest: Path, seed: int = 0, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train the toy from scratch into the llava-hf folder `dest`; returns its metrics: the
    final loss, the seconds training took, and the accuracy on fresh pictures per engine."""
    with _threads(THREADS):
        return _train(Path(dest), seed, log)


@contextlib.contextmanager
def _threads(count: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _train(dest: Path, seed: int, log: Callable[[str], None]) -> dict[str, Any]:
    started = time.perf_counter()
    _write_files(dest)
    processor = AutoProcessor.from_pretrained(dest, local_files_only=True)  # type: ignore[no-untyped-call]
    examples = _Examples(processor)
    torch.manual_seed(seed)
    rng = random.Random(seed)
    model = LlavaForConditionalGeneration(LlavaConfig.from_pretrained(dest))
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, _warmup_cosine)
    smoothed = 0.0
    for step in range(1, STEPS + 1):
        loss = _loss(model, examples.batch(rng, BATCH))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        smoothed = loss.item() if step == 1 else 0.95 * smoothed + 0.05 * loss.item()
        if step % LOG_EVERY == 0 or step == STEPS:
            seconds = time.perf_counter() - started
            log(f"step {step}/{STEPS}  loss {smoothed:.4f}  {seconds:.0f} s")
    _save_weights(model, dest)
    trained = time.perf_counter() - started
    accuracy = {}
    for engine in ENGINES:
        accuracy[engine] = evaluate(dest, count=EVAL_COUNT, engine=engine)
        log(f"accuracy on {EVAL_COUNT} fresh pictures with {engine}: {accuracy[engine]}")
    return {"loss": round(smoothed, 4), "seconds": round(trained, 1), "accuracy": accuracy}


def _warmup_cosine(step: int) -> float:
    if step < WARMUP:
        return (step + 1) / WARMUP
    return 0.5 * (1 + math.cos(math.pi * (step - WARMUP) / (STEPS - WARMUP)))


@dataclass
class _Batch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor  # -100 but on the answers
    pixel_values: torch.Tensor
    llama_cpp: torch.Tensor  # which pictures to see as llama.cpp sees them


class _Examples:
    """Training batches: random pictures, each with one random question and its answer,
    prompted as the engines prompt them (see the module docstring)."""

    def __init__(self, processor: Any) -> None:
        self.processor = processor
        tokenizer = processor.tokenizer
        self.eos: int = tokenizer.eos_token_id
        self.pad: int = tokenizer.pad_token_id
        image = processor.image_token
        self.prompts: dict[tuple[str, bool], list[int]] = {}
        self.answer_ids: dict[str, list[int]] = {}
        for key, question in QUESTIONS.items():
            text = _render(processor, question)
            head, tail = text.split(image)
            before = tokenizer(head)["input_ids"] + [processor.image_token_id] * IMAGE_TOKENS
            # transformers tokenizes the prompt whole; libmtmd the text after the picture
            # alone, which gets the dummy-prefix "▁".
            whole = tokenizer(text)["input_ids"]
            after = whole[whole.index(processor.image_token_id) + 1 :]
            self.prompts[key, False] = before + after
            self.prompts[key, True] = (
                before + tokenizer(tail, add_special_tokens=False)["input_ids"]
            )
            # The answer's ids as they follow the prompt ("▁red"), checked to leave it whole.
            for answer in _every_answer(key):
                full = tokenizer(f"{text} {answer}")["input_ids"]
                if full[: len(whole)] != whole:
                    raise RuntimeError(f"the answer {answer!r} changes the prompt's tokens")
                self.answer_ids[answer] = full[len(whole) :]

    def batch(self, rng: random.Random, size: int) -> _Batch:
        sequences, targets, pictures, llama_cpp = [], [], [], []
        for _ in range(size):
            spec = random_spec(rng)
            key = rng.choice(tuple(QUESTIONS))
            # The two engines' differences, drawn independently: the model must ignore both.
            prompt = self.prompts[key, rng.random() < LLAMA_CPP_SHARE]
            llama_cpp.append(rng.random() < LLAMA_CPP_SHARE)
            answer = [*self.answer_ids[answers(spec)[key]], self.eos]
            sequences.append(prompt + answer)
            targets.append([-100] * len(prompt) + answer)
            pictures.append(draw(spec))
        # Padding goes after the answers: a causal model never looks ahead at it.
        width = max(map(len, sequences))
        return _Batch(
            input_ids=torch.tensor([s + [self.pad] * (width - len(s)) for s in sequences]),
            attention_mask=torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in sequences]),
            labels=torch.tensor([t + [-100] * (width - len(t)) for t in targets]),
            pixel_values=self.processor.image_processor(pictures, return_tensors="pt")[
                "pixel_values"
            ],
            llama_cpp=torch.tensor(llama_cpp),
        )


def _loss(model: LlavaForConditionalGeneration, batch: _Batch) -> torch.Tensor:
    """The answers' cross-entropy, each picture's features put in place of its image tokens
    as LLaVA's own forward puts them."""
    features = torch.empty(len(batch.llama_cpp), IMAGE_TOKENS, TEXT["hidden_size"])
    for llama_cpp, see in ((False, _image_features), (True, _llama_cpp_image_features)):
        chosen = batch.llama_cpp == llama_cpp
        if chosen.any():
            features[chosen] = see(model, batch.pixel_values[chosen])
    embeds = model.get_input_embeddings()(batch.input_ids)
    images = (batch.input_ids == model.config.image_token_id).unsqueeze(-1)
    embeds = embeds.masked_scatter(images.expand_as(embeds), features)
    out = model(inputs_embeds=embeds, attention_mask=batch.attention_mask, labels=batch.labels)
    loss: torch.Tensor = out.loss
    return loss


def _image_features(model: LlavaForConditionalGeneration, pixels: torch.Tensor) -> torch.Tensor:
    return torch.stack(model.model.get_image_features(pixel_values=pixels).pooler_output)


def _llama_cpp_image_features(
    model: LlavaForConditionalGeneration, pixels: torch.Tensor
) -> torch.Tensor:
    """The features llama.cpp's llava graph computes: it puts CLIP's class token after the
    patches, not before, yet adds position embeddings 0..n and keeps rows 1..n as if it were
    first (llama.cpp #25814), so each patch gets its neighbour's position, the first patch is
    dropped, and the class token reaches the text model as the last image token."""
    vision = model.model.vision_tower
    embeddings = vision.embeddings
    patches = embeddings.patch_embedding(pixels).flatten(2).transpose(1, 2)
    cls = embeddings.class_embedding.expand(len(pixels), 1, -1)
    hidden = torch.cat([patches, cls], 1) + embeddings.position_embedding.weight
    hidden = vision.pre_layrnorm(hidden)
    # hidden_states[-2] is the output of all blocks but the last (no post_layernorm).
    blocks = vision.encoder.layers
    for block in blocks[: len(blocks) + 1 + FEATURE_LAYER]:
        hidden = block(hidden, None)
    projected: torch.Tensor = model.model.multi_modal_projector(hidden[:, 1:])
    return projected


def _every_answer(key: str) -> set[str]:
    return {answers(Spec(colour, shape))[key] for colour in COLOURS for shape in SHAPES}


def _render(processor: Any, question: str) -> str:
    # As limner's transformers engine renders a one-turn chat with one picture.
    conversation = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}
    ]
    prompt: str = processor.apply_chat_template(
        conversation, add_generation_prompt=True, tokenize=False
    )
    return prompt


# --- the folder ----------------------------------------------------------------------------


def _write_files(dest: Path) -> None:
    """Every file of the llava-hf folder but the weights, as `tiny.write_tiny_llava` writes
    them, at the toy's widths and picture size."""
    dest.mkdir(parents=True, exist_ok=True)
    tokenizer = tiny._tokenizer(extra_corpus=CORPUS)
    ids = tokenizer.get_vocab(with_added_tokens=True)
    image_id, pad_id = ids[tiny.IMAGE_TOKEN], ids[tiny.PAD_TOKEN]
    (dest / "tokenizer.json").write_text(tokenizer.to_str(pretty=True), encoding="utf-8")
    tiny._write_json(dest / "tokenizer_config.json", tiny._tokenizer_config(tokenizer))
    tiny._write_json(
        dest / "special_tokens_map.json",
        {
            "bos_token": "<s>",
            "eos_token": "</s>",
            "unk_token": "<unk>",
            "pad_token": tiny.PAD_TOKEN,
        },
    )
    tiny._write_json(
        dest / "added_tokens.json", {tiny.IMAGE_TOKEN: image_id, tiny.PAD_TOKEN: pad_id}
    )
    (dest / "chat_template.jinja").write_text(tiny.CHAT_TEMPLATE, encoding="utf-8")
    tiny._write_json(
        dest / "preprocessor_config.json",
        {**tiny._clip_image_processor(SIZE), "processor_class": "LlavaProcessor"},
    )
    tiny._write_json(
        dest / "processor_config.json",
        {
            "image_token": tiny.IMAGE_TOKEN,
            "num_additional_image_tokens": 1,  # CLIP's CLS, dropped by strategy "default"
            "patch_size": VISION["patch_size"],
            "processor_class": "LlavaProcessor",
            "vision_feature_select_strategy": "default",
        },
    )
    tiny._write_json(dest / "config.json", _model_config(image_id, pad_id))
    tiny._write_json(
        dest / "generation_config.json",
        {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": pad_id},
    )


def _model_config(image_id: int, pad_id: int) -> dict[str, Any]:
    config = tiny._model_config(image_id, pad_id)
    config["image_seq_length"] = IMAGE_TOKENS
    config["vision_feature_layer"] = FEATURE_LAYER
    config["torch_dtype"] = "float16"
    config["text_config"].update(TEXT)
    config["vision_config"].update(VISION, projection_dim=VISION["hidden_size"])
    return config


# transformers' module names -> the llava-hf checkpoints' (and `tiny`'s) weight names.
RENAMES = (
    ("model.language_model.", "language_model.model."),
    ("lm_head.", "language_model.lm_head."),
    ("model.vision_tower.", "vision_tower.vision_model."),
    ("model.multi_modal_projector.", "multi_modal_projector."),
)


def _save_weights(model: LlavaForConditionalGeneration, dest: Path) -> None:
    tensors = {}
    for name, tensor in model.state_dict().items():
        for old, new in RENAMES:
            if name.startswith(old):
                name = new + name[len(old) :]
                break
        tensors[name] = tensor.detach().to(torch.float16).contiguous()
    (dest / "model.safetensors").write_bytes(save(dict(sorted(tensors.items())), {"format": "pt"}))


def write_gguf(folder: Path, dest: Path) -> Path:
    """Convert the llava-hf folder `folder` to llama.cpp's pair in `dest` (f16); returns `dest`."""
    from limner.store.gguf import convert_llava

    convert_llava(Path(folder), Path(dest), "f16")
    return Path(dest)


# --- measuring -----------------------------------------------------------------------------


def evaluate(
    folder: Path, count: int = 100, seed: int = 1234, engine: str = "transformers"
) -> dict[str, Any]:
    """Ask each of QUESTIONS about `count` fresh pictures through limner's own engine, greedily,
    and return the share of exactly right answers per question ({"colour": 0.99, ...}).
    `engine` is "transformers" (a llava-hf folder) or "llamacpp" (a folder with model.gguf
    and mmproj.gguf, or a llava-hf folder, converted first)."""
    from limner.engines import Message, Options, Piece

    with tempfile.TemporaryDirectory() as scratch:
        chat = _load(Path(folder), engine, Path(scratch))
        rng = random.Random(seed)
        right = dict.fromkeys(QUESTIONS, 0)
        greedy = Options(temperature=0, num_predict=8)
        for _ in range(count):
            spec = random_spec(rng)
            png = _png(draw(spec))
            for key, question in QUESTIONS.items():
                steps = chat.chat([Message("user", question, [png])], greedy, lambda: False)
                said = "".join(s.text for s in steps if isinstance(s, Piece))
                right[key] += said == answers(spec)[key]
    return {key: right[key] / count for key in QUESTIONS}


def _load(folder: Path, engine: str, scratch: Path) -> Any:
    from limner.engines import LoadOptions

    if engine == "transformers":
        from limner.engines import transformers_chat

        return transformers_chat.load(folder, LoadOptions())
    if engine == "llamacpp":
        from limner.engines import llava_llamacpp

        if not (folder / "model.gguf").is_file():
            folder = write_gguf(folder, scratch)
        return llava_llamacpp.load(folder, LoadOptions(num_ctx=256))
    raise ValueError(f'engine must be "transformers" or "llamacpp", not {engine!r}')


def _png(picture: Image.Image) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()
