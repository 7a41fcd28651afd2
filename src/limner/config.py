"""Every LIMNER_* environment variable: one accessor and one line of description each.

`describe()` feeds `limner serve --help`. Values are stripped of spaces and quotes, as
Ollama's envconfig does.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from limner.errors import InvalidRequest

FOREVER = math.inf


@dataclass(frozen=True)
class Variable:
    name: str
    default: str
    description: str


VARIABLES = [
    Variable("LIMNER_HOST", "127.0.0.1:11434", "address the server binds and clients call"),
    Variable("LIMNER_MODELS", "~/.limner/models", "model store (may be an Ollama models folder)"),
    Variable("LIMNER_KEEP_ALIVE", "5m", "how long an idle model stays loaded (-1: forever)"),
    Variable("LIMNER_MAX_LOADED_MODELS", "3", "most models loaded at once (idle LRU evicted)"),
    Variable("LIMNER_MAX_QUEUE", "512", "most requests waiting for a model; more get 503"),
    Variable(
        "LIMNER_MEMORY_LIMIT",
        "",
        "bytes all loaded models may use, e.g. 12GiB (default: 80% of RAM, or of GPU memory)",
    ),
    Variable(
        "LIMNER_CONTEXT_LENGTH",
        "32768",
        "largest default context window; a model's trained length below it wins",
    ),
    Variable("LIMNER_LOAD_TIMEOUT", "5m", "how long a model may take to load"),
    Variable("LIMNER_MAX_BODY_BYTES", "104857600", "largest request body (413 beyond)"),
    Variable("LIMNER_MAX_IMAGE_PIXELS", "50000000", "largest decoded picture, in pixels (413)"),
    Variable("LIMNER_MAX_PICTURES", "16", "most pictures one request may carry (413)"),
    Variable(
        "LIMNER_PICTURE_KEEP",
        "24h",
        "how long a picture uploaded to /api/blobs, and used by no model, is kept after its last use",
    ),
    Variable("LIMNER_GALLERY", "", "where drawn pictures are kept (default: beside the store)"),
    Variable("LIMNER_GALLERY_KEEP", "1000", "how many drawn pictures the gallery keeps (0: none)"),
    Variable(
        "LIMNER_MAX_CONNECTIONS",
        "256",
        "most requests in progress at once; more get 503 at once",
    ),
    Variable(
        "LIMNER_CLUSTER", "", "serve models on a Ray cluster: local, auto or ray://HEAD:10001"
    ),
    Variable("LIMNER_CLUSTER_REPLICAS", "1", "replicas of each model on the cluster"),
    Variable("LIMNER_CLUSTER_AUTOSCALE", "", "MIN-MAX: autoscale each model's replicas instead"),
    Variable("LIMNER_CLUSTER_CPUS", "1", "CPUs each replica reserves"),
    Variable(
        "LIMNER_CLUSTER_GPUS", "", "GPUs each replica reserves (default: 1 if the cluster has any)"
    ),
    Variable("LIMNER_HEADER_TIMEOUT", "10s", "time a client has to send its request headers (408)"),
    Variable("LIMNER_MAX_HEADER_BYTES", "65536", "largest request headers, in bytes (431)"),
    Variable(
        "LIMNER_BODY_TIMEOUT",
        "30s",
        "time a request body may take per 64 KiB (a small body: in all) before 408",
    ),
    Variable(
        "LIMNER_SHUTDOWN_TIMEOUT",
        "10s",
        "on SIGTERM, how long requests in progress may take to finish before they are cut",
    ),
    Variable("LIMNER_ORIGINS", "", "extra allowed browser origins, comma-separated"),
    Variable(
        "LIMNER_API_KEY",
        "",
        "token every request must carry (Authorization: Bearer); required off loopback",
    ),
    Variable(
        "LIMNER_API_KEY_READONLY", "", "token that may read and run models but not change them"
    ),
    Variable("LIMNER_ALLOWED_HOSTS", "", "extra Host names the server answers, comma-separated"),
    Variable(
        "LIMNER_PULL_PRIVATE",
        "0",
        "1: pulls may reach loopback and private addresses (local registries)",
    ),
    Variable(
        "LIMNER_DRAW_ENGINE",
        "",
        "torch or openvino: what draws on a CPU (default: openvino where it applies)",
    ),
    Variable(
        "LIMNER_STREAM_INTERVAL",
        "25ms",
        "text made faster than one piece per this long is streamed a few tokens at a time (0: each token)",
    ),
    Variable("LIMNER_DEBUG", "0", "1: debug logging, including runner output"),
]


def _get(name: str) -> str:
    default = next(v.default for v in VARIABLES if v.name == name)
    value = os.environ.get(name, "").strip().strip("\"'").strip()
    return value or default


def describe() -> list[tuple[str, str]]:
    """(name, description with default) for help texts."""
    return [(v.name, f"{v.description} (default {v.default or 'none'})") for v in VARIABLES]


def host() -> str:
    """The base URL, from LIMNER_HOST: `http://127.0.0.1:11434` by default."""
    return parse_host(_get("LIMNER_HOST"))


def parse_host(value: str) -> str:
    """Ollama's rules: a missing port is 11434, but 80 for http:// and 443 for https://."""
    value = value.strip() or "127.0.0.1:11434"
    scheme, port = "http", 11434
    if "://" in value:
        scheme = value.split("://", 1)[0]
        port = 443 if scheme == "https" else 80
    else:
        value = f"http://{value}"
    parts = urlsplit(value)
    hostname = parts.hostname or "127.0.0.1"
    if ":" in hostname:
        hostname = f"[{hostname}]"
    path = parts.path.rstrip("/")
    return f"{scheme}://{hostname}:{parts.port or port}{path}"


def bind() -> tuple[str, int]:
    """(interface, port) the server listens on."""
    parts = urlsplit(host())
    return (parts.hostname or "127.0.0.1", parts.port or 11434)


def models() -> Path:
    return Path(_get("LIMNER_MODELS")).expanduser()


def gallery(store: Path) -> Path:
    """The gallery folder: LIMNER_GALLERY, else `gallery` beside the store's folder."""
    given = _get("LIMNER_GALLERY")
    return Path(given).expanduser() if given else store.parent / "gallery"


def gallery_keep() -> int:
    return max(0, int(_get("LIMNER_GALLERY_KEEP")))


def keep_alive() -> float:
    """Seconds; the variable also takes bare integers as seconds."""
    raw = _get("LIMNER_KEEP_ALIVE")
    if re.fullmatch(r"-?\d+", raw):
        seconds = float(raw)
        return FOREVER if seconds < 0 else seconds
    return parse_keep_alive(raw)


def max_loaded_models() -> int:
    return max(1, int(_get("LIMNER_MAX_LOADED_MODELS")))


def max_queue() -> int:
    return max(1, int(_get("LIMNER_MAX_QUEUE")))


def memory_limit() -> int:
    """Bytes; unset means 80% of the GPU's memory when there is one, else of RAM."""
    raw = _get("LIMNER_MEMORY_LIMIT")
    if raw:
        return parse_bytes(raw)
    total = gpu_memory() or os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return int(total * 0.8)


def parse_bytes(text: str) -> int:
    """`12GiB`, `512MB`, `800000000`: binary (KiB, MiB, GiB) and decimal (KB, MB, GB) units."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B?|B)?\s*", text, re.IGNORECASE)
    if not match:
        raise ValueError(f"{text!r} is not a size; write e.g. 12GiB, 512MB or a byte count")
    number, unit = float(match.group(1)), (match.group(2) or "B").upper()
    power = "BKMGT".index(unit[0])
    base = 1024 if "I" in unit or (len(unit) == 1 and unit != "B") else 1000
    return int(number * base**power)


def format_bytes(size: int) -> str:
    """A size as people read memory and disk space: `1.5 GiB`, `300.0 MiB`, `12.0 KiB`."""
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if size >= 1 << shift:
            return f"{size / (1 << shift):.1f} {unit}"
    return f"{size} B"


def gpu_memory() -> int:
    """Total memory of the first NVIDIA GPU (from nvidia-smi), 0 without one."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return 0
    try:
        out = subprocess.run(
            [smi, "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout  # fmt: skip
        return int(out.split()[0]) << 20  # MiB
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return 0


def context_length() -> int:
    return max(256, int(_get("LIMNER_CONTEXT_LENGTH")))


def load_timeout() -> float:
    return parse_keep_alive(_get("LIMNER_LOAD_TIMEOUT"))


def max_body_bytes() -> int:
    return int(_get("LIMNER_MAX_BODY_BYTES"))


def max_image_pixels() -> int:
    return int(_get("LIMNER_MAX_IMAGE_PIXELS"))


def max_pictures() -> int:
    return max(1, int(_get("LIMNER_MAX_PICTURES")))


def max_connections() -> int:
    return max(1, int(_get("LIMNER_MAX_CONNECTIONS")))


def _seconds(name: str) -> float:
    """A duration variable: `10s`, `1m30s`, or a bare number of seconds."""
    raw = _get(name)
    if re.fullmatch(r"\d+(\.\d*)?", raw):
        return float(raw)
    return parse_keep_alive(raw)


DRAW_ENGINES = ("torch", "openvino")


def draw_engine() -> str:
    """LIMNER_DRAW_ENGINE: "torch", "openvino", or "" (each model's default)."""
    value = _get("LIMNER_DRAW_ENGINE").strip().lower()
    if value and value not in DRAW_ENGINES:
        raise ValueError(f"LIMNER_DRAW_ENGINE must be torch or openvino, not {value!r}")
    return value


def picture_keep() -> float:
    return _seconds("LIMNER_PICTURE_KEEP")


def header_timeout() -> float:
    return _seconds("LIMNER_HEADER_TIMEOUT")


def max_header_bytes() -> int:
    return max(1024, int(_get("LIMNER_MAX_HEADER_BYTES")))


def body_timeout() -> float:
    return _seconds("LIMNER_BODY_TIMEOUT")


def shutdown_timeout() -> float:
    return _seconds("LIMNER_SHUTDOWN_TIMEOUT")


def stream_interval() -> float:
    return _seconds("LIMNER_STREAM_INTERVAL")


def origins() -> list[str]:
    return [o.strip() for o in _get("LIMNER_ORIGINS").split(",") if o.strip()]


def api_key() -> str:
    return _get("LIMNER_API_KEY")


def api_key_readonly() -> str:
    return _get("LIMNER_API_KEY_READONLY")


def allowed_hosts() -> list[str]:
    return [h.strip() for h in _get("LIMNER_ALLOWED_HOSTS").split(",") if h.strip()]


def pull_private() -> bool:
    return _get("LIMNER_PULL_PRIVATE") not in ("", "0", "false")


def debug() -> bool:
    return _get("LIMNER_DEBUG") not in ("", "0", "false")


_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")


def parse_keep_alive(value: float | int | str) -> float:
    """keep_alive as Ollama reads it: a number is seconds, a string is a Go duration.

    Returns seconds; FOREVER (inf) for any negative value; 0 means unload after use.
    """
    if isinstance(value, bool):
        raise InvalidRequest("keep_alive must be a number of seconds or a duration like '5m'")
    if isinstance(value, int | float):
        return FOREVER if value < 0 else float(value)
    text = value.strip()
    sign = -1.0 if text.startswith("-") else 1.0
    body = text.lstrip("+-")
    if body == "0":
        return 0.0
    if not body or _DURATION.sub("", body):
        raise InvalidRequest(f'time: missing unit in duration "{text}"')
    seconds = sum(float(n) * _UNITS[u] for n, u in _DURATION.findall(body))
    return FOREVER if sign < 0 and seconds > 0 else seconds


def format_duration(seconds: float) -> str:
    """A Go-style duration string, e.g. 300 -> '5m0s'; inf -> '-1s'."""
    if seconds == FOREVER:
        return "-1s"
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{seconds:g}s"


def cluster() -> str:
    return _get("LIMNER_CLUSTER")


def cluster_settings() -> tuple[str, str, str, str, str]:
    """LIMNER_CLUSTER and its placement settings, as written (cluster.py parses them)."""
    names = ("LIMNER_CLUSTER", "LIMNER_CLUSTER_REPLICAS", "LIMNER_CLUSTER_AUTOSCALE",
             "LIMNER_CLUSTER_CPUS", "LIMNER_CLUSTER_GPUS")  # fmt: skip
    address, replicas, autoscale, cpus, gpus = (_get(name) for name in names)
    return address, replicas, autoscale, cpus, gpus
