"""`limner check`: is the store consistent, and (with `repair`) make it so without losing data.

A store is consistent when every manifest parses, every blob a manifest names is there and
hashes to its name, and no temporary file is left over. Writes are atomic (temporary name,
fsync, rename), so a crash can leave only temporary files (`.incoming-*`, a pull's
`*-partial*`, a manifest's `.manifest-*`, a creation's `.convert-*` or `.training-*` folder) — and a disk or a hand can
still damage the rest. Repair removes leftover temporary files (a pull's partial blob is kept:
the next pull resumes it), removes blobs whose bytes do not match their name (the model that
needs one is named, to be pulled again), and moves manifests that do not parse into
`manifests-damaged/`, never deleting them.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from limner.names import ModelName
from limner.store.blobs import file_digest
from limner.store.manifests import Manifest
from limner.store.store import DERIVED, Store

TEMPORARY_PREFIXES = (".incoming-", ".convert-", ".training-")
PARTIAL = "-partial"  # registry.py's resumable pulls: sha256-<hex>-partial and its parts


@dataclass
class Report:
    """What a check found; `problems` is empty for a consistent store."""

    manifests: int = 0
    blobs: int = 0
    problems: list[str] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)
    partial_pulls: list[str] = field(default_factory=list)  # kept: the next pull resumes them
    # younger than the grace: being written, or left by an operation the server lost
    in_progress: list[str] = field(default_factory=list)


def check(store: Store, repair: bool = False, grace: float = 0.0) -> Report:
    """Check every manifest and blob; fix what can be fixed safely when `repair`.

    Temporary files younger than `grace` seconds are left alone: a running server may be
    writing them.
    """
    report = Report()
    named = _check_manifests(store, report, repair)
    _check_blobs(store, named, report, repair)
    _check_temporary(store, report, repair, grace)
    return report


def _check_manifests(store: Store, report: Report, repair: bool) -> dict[str, list[str]]:
    """Each referenced digest -> the models that need it."""
    named: dict[str, list[str]] = {}
    root = store.manifests
    for path in sorted(root.glob("*/*/*/*")) if root.is_dir() else []:
        if not path.is_file() or path.name.startswith("."):
            continue
        where = "/".join(path.relative_to(root).parts)
        try:
            manifest = Manifest.model_validate_json(path.read_bytes())
        except ValueError:
            report.problems.append(f"manifest {where} does not parse")
            if repair:
                _quarantine(store, path)
                report.repaired.append(f"moved manifest {where} to manifests-damaged/")
            continue
        report.manifests += 1
        display = ModelName(*path.relative_to(root).parts).display()
        for digest in manifest.digests():
            named.setdefault(digest, []).append(display)
    return named


def _check_blobs(store: Store, named: dict[str, list[str]], report: Report, repair: bool) -> None:
    for digest, models in sorted(named.items()):
        try:
            path = store.blobs.path(digest)
        except ValueError:
            report.problems.append(f"{', '.join(models)} names an invalid digest {digest!r}")
            continue
        if not path.is_file():
            report.problems.append(f"blob {digest} is missing; pull or create {models[0]} again")
            continue
        report.blobs += 1
        if file_digest(path) != digest:
            report.problems.append(
                f"blob {digest} does not match its content; pull or create {models[0]} again"
            )
            if repair:
                path.unlink()
                report.repaired.append(f"removed damaged blob {digest}")


def _check_temporary(store: Store, report: Report, repair: bool, grace: float) -> None:
    now = time.time()
    for path in _temporary(store):
        where = "/".join(path.relative_to(store.root).parts)
        if now - path.stat().st_mtime < grace:
            report.in_progress.append(where)
            continue
        report.problems.append(f"leftover temporary {where}")
        if repair:
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
            report.repaired.append(f"removed {where}")
    blobs = store.blobs.root
    for path in sorted(blobs.glob(f"sha256-*{PARTIAL}")) if blobs.is_dir() else []:
        report.partial_pulls.append(path.name)


def _temporary(store: Store) -> list[Path]:
    """Where writes leave their temporary names: the store's root (conversions, trainings),
    the blobs folder (blobs being written) and beside each manifest (manifests being written)."""
    found = []
    for folder in (store.root, store.blobs.root):
        if folder.is_dir():
            found += [p for p in folder.iterdir() if p.name.startswith(TEMPORARY_PREFIXES)]
    if store.manifests.is_dir():
        found += [p for p in store.manifests.rglob(".manifest-*") if p.is_file()]
    derived = store.root / DERIVED
    if derived.is_dir():  # an engine's conversion cut short (openvino_draw.py)
        found += [p for p in derived.rglob(".converting-*") if p.is_dir()]
    return sorted(found)


def remove_leftovers(store: Store) -> list[str]:
    """Remove every temporary file in the store: for a server that has just taken it (so no
    write of its own is in flight, and no other server's can be). Partial pulls stay."""
    report = Report()
    _check_temporary(store, report, repair=True, grace=0.0)
    return report.repaired


def _quarantine(store: Store, path: Path) -> None:
    target = store.root / "manifests-damaged" / path.relative_to(store.manifests)
    target.parent.mkdir(parents=True, exist_ok=True)
    path.replace(target)
