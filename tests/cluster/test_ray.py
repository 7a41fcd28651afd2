"""limner on a local Ray cluster started by the test: the shipped toy vision model as two
CPU replicas and the toy Stable Diffusion as one, behind the real HTTP API and the official
`ollama` client. Concurrent questions spread over both replicas, a killed replica is
replaced while its clients get a clean error, and no Ray process is left behind."""

from __future__ import annotations

import concurrent.futures
import io
import subprocess
import time
from collections.abc import Iterator
from functools import partial
from typing import Any

import ollama
import pytest
from PIL import Image

import helpers
import limner
from helpers import ThreadServer, add_fake, add_model
from limner.errors import InvalidRequest
from limner.scheduler import Scheduler
from limner.store import Store
from limner.toys import weights
from limner.toys.shapes import Spec, draw, judge_colour

ray = pytest.importorskip("ray")
from limner import cluster  # noqa: E402  (after the skip: it imports Ray)

GREEDY = {"temperature": 0}
QUESTION = "What colour is the shape?"


png = helpers.encoded  # a picture's PNG bytes


def ray_processes() -> list[str]:
    found = subprocess.run(["pgrep", "-fa", "raylet|gcs_server"], capture_output=True, text=True)
    return [line for line in found.stdout.splitlines() if "pgrep" not in line]


def test_cluster_settings_read_replicas_per_model_and_refuse_nonsense() -> None:
    settings = cluster.ClusterSettings.parse("local", "2,sd=1,llava:7b=4", "", "0.5", "")
    assert (settings.replicas_of("see:latest"), settings.replicas_of("sd:latest")) == (2, 1)
    assert settings.replicas_of("llava:7b") == 4 and settings.cpus == 0.5 and settings.gpus is None
    assert cluster.ClusterSettings.parse("auto", "1", "1-4", "1", "1").autoscale == (1, 4)
    for bad in (("x", "0", "", "1", ""), ("x", "two", "", "1", ""), ("x", "1", "4-1", "1", "")):
        with pytest.raises(InvalidRequest):
            cluster.ClusterSettings.parse(*bad)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadServer]:
    """A local Ray cluster of 6 logical CPUs and a limner server whose models live on it."""
    store = Store(tmp_path_factory.mktemp("cluster") / "models")
    for name in ("see", "draw"):
        folder = weights(name)
        add_model(store, name, {str(p.relative_to(folder)): p.read_bytes()
                                for p in folder.rglob("*") if p.is_file()})  # fmt: skip
    add_fake(store, "slow", token_delay=0.1)  # a held request: 100 words, 10 seconds
    add_fake(store, "batching", token_delay=0.05, concurrent=4)  # as vLLM's engine says
    ray.init(num_cpus=6, include_dashboard=False, log_to_driver=False, configure_logging=False)
    settings = cluster.ClusterSettings(
        "local", replicas=2, models={"draw": 1, "batching": 1}, cpus=1.0
    )
    cluster.connect(settings)
    start = partial(cluster.RayRunner.start, settings=settings)
    try:
        with ThreadServer(Scheduler(store, start_runner=start, keep_alive=600.0)) as server:
            yield server  # on exit the server deletes its models' Serve applications
    finally:
        cluster.disconnect()
    deadline = time.monotonic() + 20
    while ray_processes() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not ray_processes(), "Ray processes were left behind"


def runner_of(server: ThreadServer, name: str) -> Any:
    [model] = [m for m in server.scheduler.loaded.values() if m.name.display() == f"{name}:latest"]
    return model.runner


def ask(client: ollama.Client, colour: str) -> str:
    picture = png(draw(Spec(colour, "circle", "white")))
    message = {"role": "user", "content": QUESTION, "images": [picture]}
    return str(client.chat(model="see", messages=[message], options=GREEDY).message.content)


@pytest.mark.slow
def test_concurrent_questions_spread_over_both_replicas(served: ThreadServer) -> None:
    client = ollama.Client(host=served.url)
    colours = ["red", "green", "blue", "yellow"] * 2
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(partial(ask, client), colours))
    assert all(colour in answer.lower() for colour, answer in zip(colours, answers, strict=True))
    served_by = runner_of(served, "see").served
    assert len(served_by) == 2 and min(served_by.values()) >= 1, served_by
    assert sum(served_by.values()) == 8


@pytest.mark.slow
def test_the_drawing_model_draws_on_its_own_replica(served: ThreadServer) -> None:
    result = limner.Client(served.url).generate_image("draw", "a blue square", width=64,
                                                      height=64, seed=1)  # fmt: skip
    assert judge_colour(Image.open(io.BytesIO(result.png)).convert("RGB")) == "blue"
    assert sum(runner_of(served, "draw").served.values()) == 1


@pytest.mark.slow
def test_a_killed_replica_is_replaced_and_its_client_gets_a_clean_error(
    served: ThreadServer,
) -> None:
    client = ollama.Client(host=served.url)
    client.generate(model="slow", prompt="load")
    app = runner_of(served, "slow").app

    def hold() -> str:
        try:
            for _ in client.generate(model="slow", prompt="SLOW", stream=True):
                pass
            return "finished"
        except ollama.ResponseError as error:
            return f"error: {error.error}"

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        held = [pool.submit(hold) for _ in range(2)]
        time.sleep(1.0)  # both streams are under way, one per replica
        [victim, *_] = _replicas(app)
        ray.kill(ray.get_actor(victim, namespace="serve"))
        outcomes = [future.result(timeout=120) for future in held]
    failed = [outcome for outcome in outcomes if outcome.startswith("error")]
    assert len(failed) == 1, outcomes  # the killed replica's client, and only it
    assert all("replica" in outcome for outcome in failed), outcomes
    deadline = time.monotonic() + 60
    while len(_replicas(app)) < 2 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert len(_replicas(app)) == 2  # Serve started a new one
    assert client.generate(model="slow", prompt="again").response.endswith("again")


def _replicas(app: str) -> list[str]:
    """The names of the app's live replica actors (Serve names them after the app)."""
    named = ray.util.list_named_actors(all_namespaces=True)
    return sorted(a["name"] for a in named if a["namespace"] == "serve" and f"{app}#" in a["name"])


@pytest.mark.slow
def test_a_replica_whose_engine_batches_takes_several_requests_at_once(
    served: ThreadServer,
) -> None:
    client = ollama.Client(host=served.url)
    client.generate(model="batching", prompt="load")
    assert runner_of(served, "batching").concurrency == 4  # 1 replica x 4 at once
    started = time.monotonic()
    options = {"num_predict": 20}
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: client.generate(model="batching", prompt="SLOW",
                                                          options=options), range(4)))  # fmt: skip
    took = time.monotonic() - started
    assert all(answer.done for answer in answers)
    assert took < 2.5, took  # 20 words x 0.05 s each side by side: about 1 s, not 4
