"""Throughput and latency of 8 concurrent clients: the single-machine server against limner
on a local Ray cluster with 1 and 2 replicas, in one run on one machine.

    .venv/bin/python bench/cluster.py               # 8 clients x 6 questions per setup
    .venv/bin/python bench/cluster.py --requests 2  # a quick look

Each setup is a real `limner serve` process on the same store (the shipped toy vision model,
`limner.toys.weights("see")`, run by the transformers engine):
  single     LIMNER_CLUSTER unset: one runner process, one request at a time
  ray x1     LIMNER_CLUSTER=local, LIMNER_CLUSTER_REPLICAS=1: the same, through Ray Serve
  ray x2     LIMNER_CLUSTER=local, LIMNER_CLUSTER_REPLICAS=2: two replicas
Every request is a picture of a coloured shape and "What colour is the shape?" through /api/chat
(greedy, at most 8 tokens), a fresh picture each time. After a warm-up (the load and one
request per client), --clients threads send --requests each; reported: requests per second,
p50 and p99 latency, and each setup's ratio to `single`. "ray x1 / single" is the Ray path's
overhead. Each replica reserves --cpus logical CPUs (Ray's bookkeeping, not a thread limit):
on a 2-core machine two replicas share the cores, so x2 shows the routing, not more compute.

This is a benchmark, not a test: it prints numbers and asserts nothing.
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import io
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from limner.store import Store
from limner.store.create import create
from limner.toys import weights
from limner.toys.shapes import draw, random_spec
from limner.types import CreateRequest


@dataclass
class Result:
    setup: str
    seconds: float
    latencies: list[float]

    @property
    def throughput(self) -> float:
        return len(self.latencies) / self.seconds

    def percentile(self, share: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def store_with_toy(root: Path) -> Path:
    store = Store(root / "models")
    folder = weights("see")
    files = {str(p.relative_to(folder)): p for p in folder.rglob("*") if p.is_file()}
    digests = {name: store.blobs.write_bytes(path.read_bytes())[0] for name, path in files.items()}
    for _ in create(store, CreateRequest(model="see", files=digests)):
        pass
    return store.root


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def serve(models: Path, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    environment = {**os.environ, "LIMNER_MODELS": str(models), "HF_HUB_OFFLINE": "1",
                   "LIMNER_HOST": f"127.0.0.1:{port}", "LIMNER_LOAD_TIMEOUT": "10m", **env}  # fmt: skip
    process = subprocess.Popen([sys.executable, "-m", "limner", "serve"], env=environment,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/api/version", timeout=1).status_code == 200:
                return process, url
        except httpx.TransportError:
            time.sleep(0.2)
    process.kill()
    raise RuntimeError("limner serve did not start")


def question(rng: random.Random) -> dict[str, object]:
    buffer = io.BytesIO()
    draw(random_spec(rng)).save(buffer, format="PNG")
    picture = base64.b64encode(buffer.getvalue()).decode()
    message = {"role": "user", "content": "What colour is the shape?", "images": [picture]}
    return {"model": "see", "messages": [message], "stream": False,
            "options": {"temperature": 0, "num_predict": 8}}  # fmt: skip


def ask(url: str, body: dict[str, object]) -> float:
    started = time.perf_counter()
    reply = httpx.post(url + "/api/chat", json=body, timeout=600)
    reply.raise_for_status()
    return time.perf_counter() - started


def run(setup: str, url: str, clients: int, requests: int, seed: int) -> Result:
    rng = random.Random(seed)
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        list(pool.map(lambda body: ask(url, body), [question(rng) for _ in range(clients)]))
        bodies = [question(rng) for _ in range(clients * requests)]
        started = time.perf_counter()
        latencies = list(pool.map(lambda body: ask(url, body), bodies))
        seconds = time.perf_counter() - started
    return Result(setup, seconds, latencies)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=6, help="per client")
    parser.add_argument("--cpus", default="1", help="logical CPUs each replica reserves")
    args = parser.parse_args()
    setups = {
        "single": {},
        "ray x1": {"LIMNER_CLUSTER": "local", "LIMNER_CLUSTER_REPLICAS": "1",
                   "LIMNER_CLUSTER_CPUS": args.cpus},
        "ray x2": {"LIMNER_CLUSTER": "local", "LIMNER_CLUSTER_REPLICAS": "2",
                   "LIMNER_CLUSTER_CPUS": args.cpus},
    }  # fmt: skip
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="limner-bench-") as root:
        models = store_with_toy(Path(root))
        for setup, env in setups.items():
            process, url = serve(models, env)
            try:
                results.append(run(setup, url, args.clients, args.requests, seed=0))
            finally:
                process.send_signal(signal.SIGTERM)
                process.wait(60)
            print(f"{setup}: done", file=sys.stderr)
    base = results[0]
    print(f"{args.clients} clients x {args.requests} questions, toy vision model (transformers)")
    print(f"{'setup':<8} {'req/s':>7} {'p50 s':>7} {'p99 s':>7} {'req/s vs single':>16} "
          f"{'p50 vs single':>14}")  # fmt: skip
    for result in results:
        print(f"{result.setup:<8} {result.throughput:7.2f} {result.percentile(0.5):7.3f} "
              f"{result.percentile(0.99):7.3f} {result.throughput / base.throughput:16.2f} "
              f"{result.percentile(0.5) / base.percentile(0.5):14.2f}")  # fmt: skip
    ray1 = next(r for r in results if r.setup == "ray x1")
    overhead = statistics.mean(ray1.latencies) / statistics.mean(base.latencies) - 1
    print(f"Ray path overhead at 1 replica (mean latency): {overhead:+.1%}")


if __name__ == "__main__":
    main()
