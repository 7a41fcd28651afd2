"""A vision family's processor: its text template, its picture tokens and its pixels.

`AutoProcessor` builds transformers' own processor where it can. Some families' processors
need torchvision, which limner does not install:

- Qwen2-VL, Qwen2.5-VL and MiniCPM-V 4.6 only for video: their own processor class is built
  without its video processor (`_without_video`), with the Pillow image processor that
  `AutoImageProcessor` picks, so pictures go through transformers' own code.
- Mistral 3's PixtralProcessor imports the torchvision image processor: `PixtralPictures`
  does what it does for pictures with the Pillow one.

    processor = load_processor(Path("tiny-qwen2-vl"), "qwen2_vl")
    inputs = processor(text=prompt, images=[picture], return_tensors="pt")
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple

from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer, BatchFeature

from limner.errors import InvalidRequest


def load_processor(folder: Path, family: str) -> Any:
    """The family's processor: transformers' own, or one built without torchvision."""
    try:
        return AutoProcessor.from_pretrained(folder, local_files_only=True)  # type: ignore[no-untyped-call]
    except ImportError as error:
        if "torchvision" not in str(error).lower():
            raise InvalidRequest(f"the {family} processor cannot be loaded: {error}") from error
        if family == "mistral3":
            return PixtralPictures(folder)
        return _without_video(folder, family, error)


def _without_video(folder: Path, family: str, error: ImportError) -> Any:
    """transformers' own processor of `family`, built with no video processor."""
    from transformers.models.auto import processing_auto

    names: dict[str, str] = getattr(processing_auto, "PROCESSOR_MAPPING_NAMES", {})
    name = names.get(family)
    try:
        kind = processing_auto.processor_class_from_name(name) if name else None
    except ImportError:
        kind = None
    if kind is None or "video_processor" not in kind.get_attributes():
        raise InvalidRequest(
            f"the {family} processor needs torchvision, which limner does not install: {error}"
        ) from error

    class WithoutVideo(kind):  # type: ignore[misc, valid-type]
        def check_argument_for_proper_class(self, argument_name: str, argument: Any) -> Any:
            if argument_name == "video_processor":
                return None  # pictures only: the video processor is what needs torchvision
            return super().check_argument_for_proper_class(argument_name, argument)

    settings = {k: v for k, v in _settings(folder).items() if k != "processor_class"}
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    pictures = AutoImageProcessor.from_pretrained(folder, local_files_only=True)
    # MiniCPM-V reads its video processor's slicing settings when built: the pictures' stand in.
    video = _VideoSettings(getattr(pictures, "slice_mode", False),
                           getattr(pictures, "downsample_mode", "16x"))  # fmt: skip
    try:
        return WithoutVideo(image_processor=pictures, tokenizer=tokenizer, video_processor=video,
                            chat_template=_chat_template(folder, tokenizer), **settings)  # fmt: skip
    except (AttributeError, TypeError, ValueError) as built:
        raise InvalidRequest(
            f"the {family} processor needs torchvision, which limner does not install: {built}"
        ) from error


class _VideoSettings(NamedTuple):
    """What a processor reads of its video processor when built; no video ever reaches it."""

    slice_mode: bool
    downsample_mode: str


class PixtralPictures:
    """PixtralProcessor for pictures, with the Pillow image processor: each picture is resized
    to whole merged cells and written row by row, `[IMG]` per cell, `[IMG_BREAK]` after each
    row, `[IMG_END]` last (PixtralProcessor's defaults: 16-px patches, no merge)."""

    def __init__(self, folder: Path) -> None:
        settings = _settings(folder)
        self.tokenizer: Any = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        self.image_processor: Any = AutoImageProcessor.from_pretrained(
            folder, local_files_only=True
        )
        self.cell = int(settings.get("patch_size", 16)) * int(settings.get("spatial_merge_size", 1))
        self.image_token = settings.get("image_token", "[IMG]")
        self.row_end = settings.get("image_break_token", "[IMG_BREAK]")
        self.picture_end = settings.get("image_end_token", "[IMG_END]")
        self.chat_template = _chat_template(folder, self.tokenizer)

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
            pixels = self.image_processor(
                pictures, return_tensors=return_tensors, patch_size=self.cell
            )
        expanded = [pieces[0]]
        for number, piece in enumerate(pieces[1:]):
            expanded += [*self._tokens(pixels["image_sizes"][number]), piece]
        encoded = self.tokenizer("".join(expanded), return_tensors=return_tensors)
        return BatchFeature({**encoded, **pixels})

    def _tokens(self, size: Any) -> list[str]:
        height, width = (int(side) // self.cell for side in size)
        tokens = ([self.image_token] * width + [self.row_end]) * height
        tokens[-1] = self.picture_end
        return tokens


def _settings(folder: Path) -> dict[str, Any]:
    """The processor's own settings (processor_config.json), as the Hub keeps them."""
    path = folder / "processor_config.json"
    if not path.is_file():
        return {}
    loaded: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return loaded


def _chat_template(folder: Path, tokenizer: Any) -> str:
    """The chat template as the Hub keeps it beside a processor (a .jinja file or the json),
    else the tokenizer's."""
    jinja, stored = folder / "chat_template.jinja", folder / "chat_template.json"
    template = tokenizer.chat_template
    if jinja.is_file():
        template = jinja.read_text(encoding="utf-8")
    elif stored.is_file():
        template = json.loads(stored.read_text(encoding="utf-8")).get("chat_template")
    if not isinstance(template, str) or not template:
        raise InvalidRequest(
            f"{folder.name} has no chat template: add the model's chat_template.jinja"
        )
    return template
