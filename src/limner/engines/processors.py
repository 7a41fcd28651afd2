"""A vision family's processor: its text template, its picture tokens and its pixels.

`AutoProcessor` builds transformers' own processor where it can. For Qwen2-VL, Qwen2.5-VL and
Mistral 3 (Pixtral) it cannot without torchvision, which limner does not install: their
processors also handle video (Qwen) or import the torchvision image processor (Pixtral). For
those, `PicturesProcessor` does the same for pictures with the pieces transformers has without
torchvision: the family's Pillow image processor (which `AutoImageProcessor` picks), the
tokenizer and the chat template, and the family's rule for how many placeholder tokens a
processed picture takes (`PICTURE_TOKENS`, as the family's processor writes them).

    processor = load_processor(Path("tiny-qwen2-vl"), "qwen2_vl")
    inputs = processor(text=prompt, images=[picture], return_tensors="pt")
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer, BatchFeature

from limner.errors import InvalidRequest


@dataclass(frozen=True)
class _Family:
    image_token: str
    tokens: Callable[[PicturesProcessor, Any, int], list[str]]  # (processor, pixels, picture)
    token_types: bool = False  # the model wants mm_token_type_ids (M-RoPE finds pictures so)


def _qwen_tokens(processor: PicturesProcessor, pixels: Any, picture: int) -> list[str]:
    """One `<|image_pad|>` per merged cell: the patch grid (t, h, w) over merge_size²."""
    cells = int(pixels["image_grid_thw"][picture].prod())
    return ["<|image_pad|>"] * (cells // processor.image_processor.merge_size**2)


def _pixtral_tokens(processor: PicturesProcessor, pixels: Any, picture: int) -> list[str]:
    """Row by row: `[IMG]` per merged cell, `[IMG_BREAK]` after each row, `[IMG_END]` last."""
    side = _pixtral_cell(processor.settings)
    height, width = (int(v) for v in pixels["image_sizes"][picture])
    settings = processor.settings
    row = ["[IMG]"] * (width // side) + [settings.get("image_break_token", "[IMG_BREAK]")]
    tokens = row * (height // side)
    tokens[-1] = settings.get("image_end_token", "[IMG_END]")
    return tokens


def _pixtral_cell(settings: dict[str, Any]) -> int:
    """The side of one merged cell (PixtralProcessor's defaults: 16-px patches, no merge)."""
    return int(settings.get("patch_size", 16)) * int(settings.get("spatial_merge_size", 1))


FAMILIES = {
    "qwen2_vl": _Family("<|image_pad|>", _qwen_tokens, token_types=True),
    "qwen2_5_vl": _Family("<|image_pad|>", _qwen_tokens, token_types=True),
    "mistral3": _Family("[IMG]", _pixtral_tokens),
}


def load_processor(folder: Path, family: str) -> Any:
    """The family's processor: transformers' own, or `PicturesProcessor` where that needs
    torchvision."""
    try:
        return AutoProcessor.from_pretrained(folder, local_files_only=True)  # type: ignore[no-untyped-call]
    except ImportError as error:
        if "torchvision" not in str(error).lower() or family not in FAMILIES:
            raise InvalidRequest(
                f"the {family} processor cannot be loaded on this install: {error}"
            ) from error
    return PicturesProcessor(folder, family)


class PicturesProcessor:
    """A family's processor for text and pictures, without video (see the module's text)."""

    def __init__(self, folder: Path, family: str) -> None:
        self.family = FAMILIES[family]
        self.tokenizer: Any = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        self.image_processor: Any = AutoImageProcessor.from_pretrained(
            folder, local_files_only=True
        )
        self.settings = _json(folder / "processor_config.json")
        self.image_token = self.family.image_token
        self.image_token_id = self.tokenizer.convert_tokens_to_ids(self.image_token)
        self.chat_template = _chat_template(folder) or self.tokenizer.chat_template
        if not self.chat_template:
            raise InvalidRequest(
                f"{folder.name} has no chat template: add the model's chat_template.jinja"
            )

    def apply_chat_template(self, conversation: list[dict[str, Any]], **kwargs: Any) -> Any:
        return self.tokenizer.apply_chat_template(
            conversation, chat_template=self.chat_template, **kwargs
        )

    def __call__(
        self, text: str, images: list[Any] | None = None, return_tensors: str = "pt"
    ) -> BatchFeature:
        pictures = images or []
        pieces = text.split(self.image_token)
        if len(pieces) - 1 != len(pictures):
            raise InvalidRequest(
                f"the prompt has {len(pieces) - 1} picture places for {len(pictures)} pictures"
            )
        pixels: Any = {}
        if pictures:
            pixels = self.image_processor(pictures, return_tensors=return_tensors, **self._sizes())
        expanded = [pieces[0]]
        for number, piece in enumerate(pieces[1:]):
            expanded += [*self.family.tokens(self, pixels, number), piece]
        encoded = self.tokenizer("".join(expanded), return_tensors=return_tensors)
        data = {**encoded, **pixels}
        if self.family.token_types:
            data["mm_token_type_ids"] = (encoded["input_ids"] == self.image_token_id).to(
                torch.int32
            )
        return BatchFeature(data)

    def _sizes(self) -> dict[str, Any]:
        # Pixtral's pictures are resized to whole merged cells, as PixtralProcessor asks.
        if self.family.tokens is _pixtral_tokens:
            return {"patch_size": _pixtral_cell(self.settings)}
        return {}


def _json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    loaded: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return loaded


def _chat_template(folder: Path) -> str | None:
    """The chat template as the Hub keeps it beside a processor: a .jinja file or the json."""
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    template = _json(folder / "chat_template.json").get("chat_template")
    return template if isinstance(template, str) else None
