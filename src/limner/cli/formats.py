"""How the CLI prints models: Ollama's tables, sizes (`4.7 GB`), times (`2 days ago`) and
`ollama show`'s sections."""

from __future__ import annotations

import math
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from limner.types import ShowResponse


def processor(size: int, size_vram: int) -> str:
    if size_vram == 0:
        return "100% CPU"
    if size_vram == size:
        return "100% GPU"
    if size_vram > size or size == 0:
        return "Unknown"
    cpu = round((size - size_vram) / size * 100)
    return f"{cpu}%/{100 - cpu}% CPU/GPU"


def table(header: list[str], rows: list[list[str]]) -> str:
    return columns([header, *rows])


def columns(rows: list[list[str]]) -> str:
    """Left-aligned columns four spaces apart (as Ollama's tables), no trailing spaces."""
    width = max(len(row) for row in rows)
    rows = [row + [""] * (width - len(row)) for row in rows]
    widths = [max(len(row[i]) for row in rows) for i in range(width)]
    return "\n".join(
        "    ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    )


def human_bytes(size: int) -> str:
    """Ollama's format.HumanBytes: decimal units, one decimal below 10 unless whole."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if size >= scale:
            value = size / scale
            if value >= 10 or value == math.trunc(value):
                return f"{int(value)} {unit}"
            return f"{value:.1f} {unit}"
    return f"{size} B"


def now(reference: datetime) -> datetime:
    return datetime.now(reference.tzinfo) if reference.tzinfo else datetime.now()


def human_time(moment: datetime) -> str:
    """`2 days ago`, `4 minutes from now`, or `Forever` beyond twenty years."""
    seconds = (now(moment) - moment).total_seconds()
    if seconds < -20 * 365 * 86400:
        return "Forever"
    if seconds < 0:
        return f"{human_duration(-seconds)} from now"
    return f"{human_duration(seconds)} ago"


def human_duration(seconds: float) -> str:
    """Ollama's format.humanDuration, unit by unit."""
    if seconds < 1:
        return "Less than a second"
    if int(seconds) == 1:
        return "1 second"
    if seconds < 60:
        return f"{int(seconds)} seconds"
    minutes = int(seconds // 60)
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = round(seconds / 3600)
    if hours == 1:
        return "About an hour"
    for limit, divisor, unit in ((48, 1, "hours"), (24 * 14, 24, "days"), (24 * 60, 24 * 7, "weeks"),
                                 (24 * 730, 24 * 30, "months")):  # fmt: skip
        if hours < limit:
            return f"{hours // divisor} {unit}"
    return f"{int(seconds // 3600) // 24 // 365} years"


NO_FIELD = {
    "license": "No license was specified for this model.",
    "parameters": "No parameters were specified for this model.",
    "system": "No system message was specified for this model.",
    "template": "No prompt template was specified for this model.",
}


def show_field(info: ShowResponse, field: str) -> str:
    value = getattr(info, field)
    return str(value).rstrip("\n") if value else NO_FIELD.get(field, "")


def format_show(info: ShowResponse) -> str:
    """`ollama show`'s sections: Model, Projector, Capabilities, Parameters, System, License."""
    sections = [
        ("Model", model_rows(info)),
        ("Projector", projector_rows(info)),
        ("Capabilities", [[c] for c in info.capabilities]),
        (
            "Parameters",
            [line.split(None, 1) for line in (info.parameters or "").splitlines() if line.strip()],
        ),
        ("System", head(info.system or "", 2)),
        ("License", head(info.license or "", 2)),
    ]
    blocks = [f"  {title}\n{_indent(columns(rows))}" for title, rows in sections if rows]
    return "\n\n".join(blocks) + "\n"


def _indent(text: str) -> str:
    return "\n".join(f"    {line}".rstrip() for line in text.splitlines())


def model_rows(info: ShowResponse) -> list[list[str]]:
    mi = info.model_info
    arch = str(mi.get("general.architecture") or info.details.family)
    params = info.details.parameter_size or _human_count(mi.get("general.parameter_count"))
    rows = [["architecture", arch], ["parameters", params]]
    for key, label in (
        ("context_length", "context length"),
        ("embedding_length", "embedding length"),
    ):
        if f"{arch}.{key}" in mi:
            rows.append([label, str(mi[f"{arch}.{key}"])])
    rows.append(["quantization", info.details.quantization_level])
    if mi.get(f"{arch}.tiny_vae"):  # a drawing model's TAESD (create --tiny-vae)
        rows.append(["tiny VAE", "TAESD"])
    return rows


def projector_rows(info: ShowResponse) -> list[list[str]]:
    """LLaVA's vision tower: a GGUF projector's `clip.vision.*` keys, else the
    `<arch>.vision.*` keys of model_info."""
    values, prefix = info.model_info, f"{info.model_info.get('general.architecture', '')}.vision"
    if info.projector_info:
        values, prefix = info.projector_info, "clip.vision"
    labels = (("image_size", "image size"), ("patch_size", "patch size"),
              ("image_tokens", "image tokens"), ("embedding_length", "embedding length"))  # fmt: skip
    return [[label, str(values[f"{prefix}.{key}"])]
            for key, label in labels if f"{prefix}.{key}" in values]  # fmt: skip


def _human_count(value: Any) -> str:
    if not isinstance(value, int | float):
        return ""
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if value >= scale:
            return f"{value / scale:.1f}".rstrip("0").rstrip(".") + unit
    return str(int(value))


def head(text: str, count: int) -> list[list[str]]:
    """The first `count` non-empty lines, then `...` when there are more."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return [[line] for line in lines[:count]] + ([["..."]] if len(lines) > count else [])


# --- rm, cp, stop -----------------------------------------------------------------------
