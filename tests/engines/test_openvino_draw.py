"""Drawing on OpenVINO: the tiny Stable Diffusion draws the same pictures on both engines
(within bf16/fp32 tolerance), in every mode, with its graphs converted once and kept."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from limner.engines import ImageRequest, ImageResult, LoadOptions
from limner.engines.diffusion import DiffusionEngine, load
from limner.tiny import write_tiny_sd, write_tiny_sdxl

pytest.importorskip("openvino")
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

# Mean absolute difference per channel (0-255) allowed between the two engines' pictures: the
# same model in float32 with different kernels and summation orders.
TOLERANCE = 2.0


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ov")
    return {
        "plain": write_tiny_sd(root / "plain", seed=0, ip_adapter=False),
        "inpaint": write_tiny_sd(root / "inpaint", seed=0, inpaint=True, ip_adapter=False),
        "ip": write_tiny_sd(root / "ip", seed=0),
        "cache": root / "cache",
    }


def engines(
    folder: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> dict[str, DiffusionEngine]:
    built = {}
    for name in ("torch", "openvino"):
        monkeypatch.setenv("LIMNER_DRAW_ENGINE", name)
        built[name] = load(folder, LoadOptions(precision="fp32", cache=str(cache)))
    monkeypatch.delenv("LIMNER_DRAW_ENGINE")
    return built


def draw(engine: DiffusionEngine, **fields: Any) -> np.ndarray:
    fields = {"prompt": "a red cat", "steps": 3, "seed": 1, "scheduler": "euler", **fields}
    *_, result = engine.generate_image(ImageRequest(**fields), lambda: False)
    assert isinstance(result, ImageResult)
    return np.asarray(Image.open(io.BytesIO(result.png)).convert("RGB")).astype(float)


def png(size: tuple[int, int] = (64, 64), mask: bool = False) -> bytes:
    if mask:
        data = np.zeros((size[1], size[0]), np.uint8)
        data[:, : size[0] // 2] = 255
        picture = Image.fromarray(data, "L")
    else:
        noise = np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        picture = Image.fromarray(noise)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def test_both_engines_draw_the_same_pictures_in_every_mode(
    folders: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    plain = engines(folders["plain"], folders["cache"] / "plain", monkeypatch)
    assert plain["openvino"].openvino is not None and plain["torch"].openvino is None
    requests: list[dict[str, Any]] = [
        {},
        {"width": 64, "height": 128, "scheduler": "dpm++ 2m karras"},
        {"width": 64, "height": 72},  # a side the graph's upsamplers do not divide: torch
        {"image": png(), "strength": 0.6},
        {"image": png(), "mask": png(mask=True), "strength": 1.0},
    ]
    for fields in requests:
        torch_picture, ov_picture = (draw(plain[name], **fields) for name in ("torch", "openvino"))
        assert np.abs(torch_picture - ov_picture).mean() < TOLERANCE, fields
        if "mask" in fields:  # the unmasked half comes back exactly, on OpenVINO too
            original = np.asarray(Image.open(io.BytesIO(png()))).astype(float)
            assert np.array_equal(ov_picture[:, 32:], original[:, 32:])
    inpaint = engines(folders["inpaint"], folders["cache"] / "inpaint", monkeypatch)
    fields = {"image": png(), "mask": png(mask=True), "strength": 1.0}
    difference = draw(inpaint["torch"], **fields) - draw(inpaint["openvino"], **fields)
    assert np.abs(difference).mean() < TOLERANCE


def test_sdxl_draws_the_same_pictures_with_its_size_conditions_in_the_graph(
    folders: dict[str, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    xl = write_tiny_sdxl(tmp_path / "xl", folders["plain"] / "tokenizer")
    both = engines(xl, folders["cache"] / "xl", monkeypatch)
    graph = both["openvino"].openvino
    assert graph is not None and graph.conditions == ("text_embeds", "time_ids")
    ran: list[str] = []
    run = graph._run
    monkeypatch.setattr(graph, "_run", lambda name, inputs: ran.append(name) or run(name, inputs))
    for fields in ({"steps": 2}, {"image": png((128, 128)), "strength": 0.6, "steps": 4}):
        fields = {"width": 128, "height": 128, **fields}
        torch_picture, ov_picture = (draw(both[name], **fields) for name in ("torch", "openvino"))
        assert np.abs(torch_picture - ov_picture).mean() < TOLERANCE, fields
    assert ran.count("unet") == 2 + 2 and "decoder" in ran  # strength 0.6 of 4 steps: 2


def test_an_lcm_unet_takes_its_guidance_embedding_as_a_graph_input(
    folders: dict[str, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from diffusers import UNet2DConditionModel

    lcm = write_tiny_sd(tmp_path / "lcm", seed=0, ip_adapter=False)
    plain = UNet2DConditionModel.from_pretrained(lcm / "unet")
    # An LCM-distilled UNet embeds the guidance scale (time_cond_proj_dim) instead of a batch of 2.
    unet = UNet2DConditionModel.from_config(plain.config, time_cond_proj_dim=16)
    unet.load_state_dict(plain.state_dict(), strict=False)
    unet.save_pretrained(lcm / "unet")
    both = engines(lcm, folders["cache"] / "lcm", monkeypatch)
    graph = both["openvino"].openvino
    assert graph is not None and graph.conditions == ("timestep_cond",)
    ran: list[str] = []
    run = graph._run
    monkeypatch.setattr(graph, "_run", lambda name, inputs: ran.append(name) or run(name, inputs))
    torch_picture, ov_picture = (draw(both[name], scheduler="lcm", steps=2, guidance_scale=4)
                                 for name in ("torch", "openvino"))  # fmt: skip
    assert np.abs(torch_picture - ov_picture).mean() < TOLERANCE
    assert ran.count("unet") == 2


def test_the_graphs_are_converted_once_and_kept_in_the_cache(
    folders: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = folders["cache"] / "plain"  # the first test's load converted them, if it ran
    monkeypatch.setenv("LIMNER_DRAW_ENGINE", "openvino")
    if not any(cache.glob("openvino-*")):
        load(folders["plain"], LoadOptions(precision="fp32", cache=str(cache)))
    (kept,) = cache.glob("openvino-*")
    assert {"unet.xml", "unet.bin", "vae_decoder.xml", "vae_decoder.bin"} <= {
        p.name for p in kept.iterdir()
    }
    import openvino

    def never(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("converted again")

    monkeypatch.setattr(openvino, "convert_model", never)
    again = load(folders["plain"], LoadOptions(precision="fp32", cache=str(cache)))
    assert draw(again).shape == (64, 64, 3)


def test_the_tiny_vae_decodes_on_torch_beside_the_graphs(
    folders: dict[str, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # The plain model's weights and graphs (the same seed), with a tiny autoencoder beside.
    fast = write_tiny_sd(tmp_path / "fast", seed=0, ip_adapter=False, tiny_vae=True)
    both = engines(fast, folders["cache"] / "plain", monkeypatch)
    assert both["openvino"].openvino is not None
    decoded: list[Any] = []
    graph = both["openvino"].openvino
    run = graph._run
    monkeypatch.setattr(
        graph, "_run", lambda name, inputs: decoded.append(name) or run(name, inputs)
    )
    torch_picture, ov_picture = (draw(both[name], vae="tiny") for name in ("torch", "openvino"))
    assert np.abs(torch_picture - ov_picture).mean() < TOLERANCE
    assert "unet" in decoded and "decoder" not in decoded  # TAESD ran on torch, not the graph


def test_what_the_graphs_cannot_do_draws_on_torch(
    folders: dict[str, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("LIMNER_DRAW_ENGINE", "openvino")
    with_adapter = load(folders["ip"], LoadOptions(precision="fp32", cache=str(tmp_path)))
    assert with_adapter.openvino is None  # its IP-Adapter's tokens are not in the graphs
    assert draw(with_adapter, style_images=[png()]).shape == (64, 64, 3)
    monkeypatch.setenv("LIMNER_DRAW_ENGINE", "tpu")
    with pytest.raises(ValueError, match="LIMNER_DRAW_ENGINE must be torch or openvino"):
        load(folders["plain"], LoadOptions(precision="fp32"))


def test_by_default_a_cpu_server_keeps_the_graphs_in_the_store_until_the_model_goes(
    folders: dict[str, Path], store: Any, server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import limner
    from helpers import add_model
    from limner.cli.models import folder_files

    monkeypatch.delenv("LIMNER_DRAW_ENGINE")  # the default: OpenVINO on a CPU
    add_model(store, "plain", {rel: p.read_bytes() for rel, p in folder_files(folders["plain"])})
    client = limner.Client(server.url)
    drawn = client.generate_image("plain", "a red cat", steps=2, seed=1, width=64, height=64)
    assert drawn.pil().size == (64, 64)
    digest = store.entry(store.resolve("plain")).digest
    (graphs,) = store.derived(digest).glob("openvino-*")
    assert (graphs / "unet.xml").is_file() and (graphs / "vae_decoder.xml").is_file()
    client.delete("plain")
    assert not store.derived(digest).exists()
