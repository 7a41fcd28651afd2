"""Model names, as Ollama spells them (types/model/name.go).

Grammar:  [host/][namespace/]model[:tag]
Defaults: host `registry.ollama.ai`, namespace `library`, tag `latest`.

- The tag is split at the last `:` only when it follows the last `/`, so a host may keep a
  port (`localhost:5000/ns/m`).
- Each part starts with a letter, digit or `_`; then letters, digits, `_`, `-` and `.`
  (no `.` in the namespace); `:` only in the host. Host 1-350 characters, others 1-80.
- The display form drops the default host and the `library` namespace and always keeps
  the tag: `llava:latest`, `me/m:latest`, `example.com/ns/m:v1`.

Because every part is checked against this grammar, a valid name can never contain `/`,
`..` or a separator inside a part, so it is safe to turn into a path.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from limner.errors import InvalidRequest

DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"

_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")
_NAMESPACE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_\-]*$")
_HOST = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-:]*$")


@dataclass(frozen=True)
class ModelName:
    host: str
    namespace: str
    model: str
    tag: str

    @classmethod
    def parse(cls, text: str) -> ModelName:
        """Parse and fill defaults; raise InvalidRequest("invalid model name") if invalid."""
        name = _split(text.strip())
        if not name.is_valid():
            raise InvalidRequest("invalid model name")
        return name

    def is_valid(self) -> bool:
        return (
            _fits(self.host, _HOST, 350)
            and _fits(self.namespace, _NAMESPACE, 80)
            and _fits(self.model, _PART, 80)
            and _fits(self.tag, _PART, 80)
            and ".." not in self.host
        )

    def parts(self) -> tuple[str, str, str, str]:
        return (self.host, self.namespace, self.model, self.tag)

    def casefold(self) -> tuple[str, ...]:
        return tuple(p.casefold() for p in self.parts())

    def display(self) -> str:
        """Ollama's DisplayShortest: `llava:latest`, `me/m:latest`, `host/ns/m:tag`."""
        prefix = ""
        if self.host != DEFAULT_HOST:
            prefix = f"{self.host}/{self.namespace}/"
        elif self.namespace != DEFAULT_NAMESPACE:
            prefix = f"{self.namespace}/"
        return f"{prefix}{self.model}:{self.tag}"

    def __str__(self) -> str:
        return self.display()


def _fits(part: str, pattern: re.Pattern[str], limit: int) -> bool:
    return 0 < len(part) <= limit and pattern.match(part) is not None


def _split(text: str) -> ModelName:
    for scheme in ("https://", "http://"):
        if text.startswith(scheme):
            text = text[len(scheme) :]
    tag = DEFAULT_TAG
    colon, slash = text.rfind(":"), text.rfind("/")
    if colon > slash:
        text, tag = text[:colon], text[colon + 1 :]
    pieces = text.split("/")
    if len(pieces) == 1:
        return ModelName(DEFAULT_HOST, DEFAULT_NAMESPACE, pieces[0], tag)
    if len(pieces) == 2:
        return ModelName(DEFAULT_HOST, pieces[0], pieces[1], tag)
    if len(pieces) == 3:
        return ModelName(pieces[0], pieces[1], pieces[2], tag)
    return ModelName("", "", "", "")  # too many parts: invalid
