"""The diffusers engine, run for real on the tiny random-weight Stable Diffusion 1.5, on its
torch path as every test but test_openvino_draw.py's (which compares the two) draws."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from safetensors.numpy import load_file

from limner.engines import SCHEDULERS, ImageRequest, ImageResult, LoadOptions, Progress
from limner.errors import InsufficientMemory, InvalidImage, InvalidRequest
from limner.tiny import write_tiny_sd, write_tiny_sdxl

pytest.importorskip("diffusers")

import torch

from limner.engines import diffusion
from limner.engines.diffusion import DiffusionEngine, a1111_parameters, cpu_has_bf16, load

# diffusers' Euler scheduler calls np.array(tensor, copy=False); harmless, and not ours.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sd")
    return {
        "ip": write_tiny_sd(root / "ip", seed=0),
        "plain": write_tiny_sd(root / "plain", seed=0, ip_adapter=False),
        "inpaint": write_tiny_sd(root / "inpaint", seed=0, inpaint=True, ip_adapter=False),
    }


# fp32 engines: faster than bf16 at tiny widths on CPU, and the precision test covers auto.
@pytest.fixture(scope="module")
def engine(folders: dict[str, Path]) -> DiffusionEngine:
    """4-channel UNet with an IP-Adapter."""
    return load(folders["ip"], LoadOptions(precision="fp32"))


@pytest.fixture(scope="module")
def plain(folders: dict[str, Path]) -> DiffusionEngine:
    """The same weights without an IP-Adapter."""
    return load(folders["plain"], LoadOptions(precision="fp32"))


@pytest.fixture(scope="module")
def inpainter(folders: dict[str, Path]) -> DiffusionEngine:
    """9-channel inpainting UNet."""
    return load(folders["inpaint"], LoadOptions(precision="fp32"))


def never() -> bool:
    return False


def draw(
    engine: DiffusionEngine, cancelled: Callable[[], bool] = never, **fields: Any
) -> tuple[list[Progress], ImageResult]:
    fields = {"prompt": "a red cat", "steps": 2, "seed": 1, "scheduler": "euler", **fields}
    steps = list(engine.generate_image(ImageRequest(**fields), cancelled))
    *progress, result = steps
    assert all(isinstance(p, Progress) for p in progress)
    assert isinstance(result, ImageResult)
    return progress, result


def pixels(result: ImageResult) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(result.png)).convert("RGB")).astype(int)


def png(size: tuple[int, int] = (64, 64), seed: int = 0, fmt: str = "PNG") -> bytes:
    noise = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, format=fmt)
    return buffer.getvalue()


def left_half_mask(size: tuple[int, int] = (64, 64)) -> bytes:
    mask = np.zeros((size[1], size[0]), dtype=np.uint8)
    mask[:, : size[0] // 2] = 255
    buffer = io.BytesIO()
    Image.fromarray(mask, "L").save(buffer, format="PNG")
    return buffer.getvalue()


# --- text-to-image, seeds, progress ---------------------------------------------------------


def test_txt2img_reports_every_step_then_one_png_of_the_requested_size(
    engine: DiffusionEngine,
) -> None:
    progress, result = draw(engine, steps=3, width=48, height=32)

    assert [(p.completed, p.total) for p in progress] == [(1, 3), (2, 3), (3, 3)]
    picture = Image.open(io.BytesIO(result.png))
    assert picture.format == "PNG"
    assert picture.size == (48, 32)
    assert result.parameters["mode"] == "txt2img"
    assert (result.parameters["width"], result.parameters["height"]) == (48, 32)


def test_default_size_steps_and_the_models_own_scheduler(engine: DiffusionEngine) -> None:
    # Size: UNet sample_size 8 x VAE factor 8. PNDM (the model's own) evaluates its first
    # step twice: four calls, counted as the three steps asked for.
    progress, result = draw(engine, scheduler="", steps=3)

    assert Image.open(io.BytesIO(result.png)).size == (engine.default_size,) * 2 == (64, 64)
    assert [p.completed for p in progress] == [1, 2, 3]
    assert {p.total for p in progress} == {3}
    assert result.parameters["scheduler"] == "pndm"
    assert result.parameters["guidance_scale"] == 7.5


def test_same_seed_gives_identical_bytes_and_another_seed_does_not(
    engine: DiffusionEngine,
) -> None:
    _, first = draw(engine, seed=7)
    _, again = draw(engine, seed=7)
    _, other = draw(engine, seed=8)

    assert first.png == again.png
    assert not np.array_equal(pixels(first), pixels(other))


def test_a_random_seed_is_reported_and_reproduces_the_picture(engine: DiffusionEngine) -> None:
    _, result = draw(engine, seed=-1)
    seed = result.parameters["seed"]

    assert 0 <= seed < 2**32
    assert draw(engine, seed=seed)[1].png == result.png


# --- image-to-image and inpainting ----------------------------------------------------------


def test_img2img_runs_steps_times_strength_at_the_pictures_size(engine: DiffusionEngine) -> None:
    # 43x59 is rounded down to 40x56.
    progress, result = draw(engine, image=png((43, 59)), steps=5, strength=0.5)

    assert [(p.completed, p.total) for p in progress] == [(1, 2), (2, 2)]
    assert Image.open(io.BytesIO(result.png)).size == (40, 56)
    assert result.parameters["mode"] == "img2img"
    assert result.parameters["strength"] == 0.5


@pytest.mark.parametrize("which", ["inpainter", "engine"], ids=["9-channel", "4-channel"])
def test_inpainting_keeps_unmasked_pixels_exactly(which: str, request: Any) -> None:
    model: DiffusionEngine = request.getfixturevalue(which)
    original = np.asarray(Image.open(io.BytesIO(png()))).astype(int)

    progress, result = draw(model, image=png(), mask=left_half_mask(), steps=4, strength=1.0)
    out = pixels(result)

    assert model.inpainting_unet is (which == "inpainter")
    assert len(progress) == 4
    assert result.parameters["mode"] == "inpaint"
    assert np.array_equal(out[:, 32:], original[:, 32:])  # black half: untouched
    assert np.abs(out[:, :32] - original[:, :32]).mean() > 10  # white half: repainted


def test_a_grey_mask_edge_blends_the_drawing_into_the_picture(engine: DiffusionEngine) -> None:
    """A blurred mask (the page's and A1111's "mask blur"): white repaints, black keeps the
    pixels exactly, and grey between mixes the two by its level."""
    drawn, kept = Image.new("RGB", (3, 1), (200, 100, 0)), Image.new("RGB", (3, 1), (0, 0, 0))
    levels = Image.frombytes("L", (3, 1), bytes([255, 64, 0]))
    mixed = np.asarray(diffusion._overlay(drawn, kept, levels))[0]
    assert mixed.tolist() == [[200, 100, 0], [50, 25, 0], [0, 0, 0]]

    grey = np.zeros((64, 64), dtype=np.uint8)
    grey[:, :24], grey[:, 24:32] = 255, 64  # repaint, then a quarter-white band
    buffer = io.BytesIO()
    Image.fromarray(grey).save(buffer, format="PNG")
    original = np.asarray(Image.open(io.BytesIO(png()))).astype(int)
    _, result = draw(engine, image=png(), mask=buffer.getvalue(), steps=2, strength=1.0)
    out = pixels(result)
    assert np.array_equal(out[:, 32:], original[:, 32:])  # black: exactly the picture
    assert not np.array_equal(out[:, 24:32], original[:, 24:32])  # grey: blended


def test_the_inpainting_model_also_draws_from_text_and_from_a_picture(
    inpainter: DiffusionEngine,
) -> None:
    progress, result = draw(inpainter, steps=2)
    assert len(progress) == 2 and result.parameters["mode"] == "txt2img"

    progress, result = draw(inpainter, image=png(), steps=4, strength=0.5)
    assert len(progress) == 2 and result.parameters["mode"] == "img2img"


# --- style transfer -------------------------------------------------------------------------


def test_style_pictures_change_the_picture_and_strength_0_equals_none(
    engine: DiffusionEngine, plain: DiffusionEngine
) -> None:
    _, base = draw(engine)
    _, styled = draw(engine, style_images=[png(seed=3)], style_strength=0.8)
    _, zero = draw(engine, style_images=[png(seed=3)], style_strength=0.0)
    _, two = draw(engine, style_images=[png(seed=3), png(seed=4)], style_strength=0.8)
    _, without_adapter = draw(plain)

    assert styled.parameters["style"] == "ip-adapter"
    assert styled.parameters["style_strength"] == 0.8
    assert not np.array_equal(pixels(styled), pixels(base))
    assert not np.array_equal(pixels(two), pixels(styled))
    assert np.array_equal(pixels(zero), pixels(base))
    # No style pictures: the adapter is idle, as if the model had none.
    assert np.array_equal(pixels(base), pixels(without_adapter))


def test_style_works_with_img2img_and_inpainting(engine: DiffusionEngine) -> None:
    _, result = draw(
        engine, image=png(), mask=left_half_mask(), strength=1.0, style_images=[png(seed=3)]
    )
    assert (result.parameters["mode"], result.parameters["style"]) == ("inpaint", "ip-adapter")


def test_without_an_ip_adapter_style_falls_back_to_img2img_from_the_style_picture(
    plain: DiffusionEngine,
) -> None:
    style = png((48, 40), seed=3)
    progress, result = draw(plain, steps=10, style_images=[style], style_strength=0.6)

    assert result.parameters["mode"] == "img2img"
    assert result.parameters["style"] == "img2img"
    assert result.parameters["strength"] == pytest.approx(0.4)
    assert len(progress) == 4  # int(10 x 0.4)
    assert Image.open(io.BytesIO(result.png)).size == (48, 40)
    # Full style strength still runs one step.
    progress, _ = draw(plain, steps=10, style_images=[style], style_strength=1.0)
    assert len(progress) == 1

    with pytest.raises(InvalidRequest, match="no IP-Adapter"):
        draw(plain, image=png(), style_images=[style])


# --- schedulers -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", SCHEDULERS)
def test_every_scheduler_name_draws(engine: DiffusionEngine, name: str) -> None:
    progress, result = draw(engine, scheduler=name.upper(), steps=2)

    assert result.parameters["scheduler"] == name
    assert progress[-1].completed == progress[-1].total
    sampler = diffusion.SCHEDULER_TABLE[name][2]
    assert f"Sampler: {sampler}," in Image.open(io.BytesIO(result.png)).text["parameters"]


def test_lcm_defaults_to_4_steps_without_guidance(engine: DiffusionEngine) -> None:
    progress, result = draw(engine, scheduler="lcm", steps=0)
    assert len(progress) == 4
    assert (result.parameters["steps"], result.parameters["guidance_scale"]) == (4, 1.0)


# --- refusals -------------------------------------------------------------------------------


BAD: list[tuple[dict[str, Any], type[Exception], str]] = [
    ({"scheduler": "heun"}, InvalidRequest, "unknown scheduler 'heun'; use one of: euler, "),
    ({"width": 65}, InvalidRequest, "multiples of 8 .at least 8., got 65x0"),
    ({"height": 4}, InvalidRequest, "multiples of 8 .at least 8., got 0x4"),
    ({"height": -8}, InvalidRequest, "multiples of 8"),
    ({"steps": 151}, InvalidRequest, "steps must be between 1 and 150"),
    ({"steps": -1}, InvalidRequest, "steps must be between 1 and 150"),
    ({"guidance_scale": -1.0}, InvalidRequest, "guidance_scale"),
    ({"style_strength": 3.0}, InvalidRequest, "style_strength"),
    ({"image": png(), "strength": 0.0}, InvalidRequest, "strength must be above 0"),
    ({"image": png(), "strength": 1.5}, InvalidRequest, "strength must be above 0"),
    ({"image": png(), "steps": 2, "strength": 0.3}, InvalidRequest, "raise steps or strength"),
    ({"image": png(), "mask": left_half_mask((32, 64))}, InvalidRequest, "the mask is 32x64"),
    ({"mask": left_half_mask()}, InvalidRequest, "a mask needs the picture"),
    ({"image": b"not a picture"}, InvalidImage, "the picture is not a PNG, JPEG or WebP"),
    ({"image": png()[:60]}, InvalidImage, "the picture is truncated or corrupt"),
    ({"image": png(), "mask": b"GIF89a"}, InvalidImage, "the mask is not"),
    ({"style_images": [png(), b"x"]}, InvalidImage, "style picture 2 is not"),
    ({"image": png((4, 4))}, InvalidRequest, "at least 8x8"),
]


@pytest.mark.parametrize(("fields", "error", "message"), BAD)
def test_bad_requests_are_refused_before_any_work(
    engine: DiffusionEngine, fields: dict[str, Any], error: type[Exception], message: str
) -> None:
    calls = CallCounter(engine.unet)
    with pytest.raises(error, match=message.replace("(", r"\(")) as caught:
        draw(engine, **fields)
    calls.remove()
    assert type(caught.value) is error
    assert calls.count == 0


def test_jpeg_and_webp_pictures_are_accepted(engine: DiffusionEngine) -> None:
    for fmt in ("JPEG", "WEBP"):
        _, result = draw(engine, image=png(fmt=fmt), strength=1.0)
        assert result.parameters["mode"] == "img2img"


def test_an_unknown_pipeline_class_is_refused_at_load(tmp_path: Path) -> None:
    folder = write_tiny_sd(tmp_path / "flux", ip_adapter=False)
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({**index, "_class_name": "FluxPipeline"}))
    with pytest.raises(InvalidRequest, match="'FluxPipeline'; this engine runs Stable Diffusion"):
        load(folder, LoadOptions(precision="fp32"))


# --- cancel ---------------------------------------------------------------------------------


class CallCounter:
    """Counts forward calls of a module until removed."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.count = 0
        self.handle = module.register_forward_hook(self._hook)

    def _hook(self, *args: Any) -> None:
        self.count += 1

    def remove(self) -> None:
        self.handle.remove()


def test_cancelling_after_the_first_step_stops_without_a_picture(engine: DiffusionEngine) -> None:
    seen: list[Any] = []
    unet, decoder = CallCounter(engine.unet), CallCounter(engine.vae.decoder)
    request = ImageRequest(prompt="a cat", steps=10, scheduler="euler")
    for step in engine.generate_image(request, lambda: bool(seen)):
        seen.append(step)
    unet.remove()
    decoder.remove()

    assert seen and all(isinstance(s, Progress) for s in seen)
    assert unet.count < 10
    assert len(seen) <= unet.count <= len(seen) + 1
    assert decoder.count == 0
    # The engine is free for the next call.
    assert draw(engine)[1].png


def test_closing_the_stream_stops_the_worker_and_frees_the_engine(
    engine: DiffusionEngine,
) -> None:
    unet = CallCounter(engine.unet)
    stream = engine.generate_image(ImageRequest(prompt="a cat", steps=50, scheduler="euler"), never)
    assert isinstance(next(stream), Progress)
    stream.close()
    stopped_at = unet.count
    unet.remove()

    assert stopped_at < 50
    assert draw(engine)[1].png


def test_a_call_cancelled_before_it_starts_yields_nothing(engine: DiffusionEngine) -> None:
    assert list(engine.generate_image(ImageRequest(prompt="a cat"), lambda: True)) == []


# --- the PNG --------------------------------------------------------------------------------


def test_the_png_carries_the_parameters_in_a1111_and_json_chunks(engine: DiffusionEngine) -> None:
    digest = "0123456789abcdef" * 4
    _, result = draw(
        engine,
        prompt="a red cat, oil painting",
        negative_prompt="blurry",
        image=png(),
        strength=0.5,
        steps=4,
        seed=42,
        guidance_scale=6.0,
        metadata={"model": "tiny-sd:latest", "digest": digest},
    )
    text = Image.open(io.BytesIO(result.png)).text

    assert text["parameters"] == (
        "a red cat, oil painting\n"
        "Negative prompt: blurry\n"
        'Steps: 4, Sampler: Euler, CFG scale: 6, Seed: 42, Size: 64x64, Model: "tiny-sd:latest", '
        "Model hash: 0123456789, Denoising strength: 0.5"
    )
    assert json.loads(text["limner"]) == result.parameters
    assert result.parameters == {
        "prompt": "a red cat, oil painting",
        "negative_prompt": "blurry",
        "steps": 4,
        "scheduler": "euler",
        "guidance_scale": 6.0,
        "seed": 42,
        "width": 64,
        "height": 64,
        "strength": 0.5,
        "mode": "img2img",
        "model": "tiny-sd:latest",
        "digest": digest,
        "style": None,
        "style_strength": None,
    }


def test_a1111_text_without_negative_prompt_or_model() -> None:
    parameters = {"prompt": "日本の猫", "negative_prompt": "", "steps": 20, "scheduler": "pndm"}
    parameters |= {"guidance_scale": 7.5, "seed": 1, "width": 512, "height": 768}
    assert a1111_parameters(parameters) == (
        "日本の猫\nSteps: 20, Sampler: PLMS, CFG scale: 7.5, Seed: 1, Size: 512x768"
    )
    picture = diffusion.png_with_parameters(Image.new("RGB", (8, 8)), parameters)
    assert Image.open(io.BytesIO(picture)).text["parameters"].startswith("日本の猫\n")


# --- precision and memory -------------------------------------------------------------------


def test_precision_auto_follows_the_cpu_and_fp32_forces_float32(
    folders: dict[str, Path], plain: DiffusionEngine
) -> None:
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    expected = "bf16" if ("avx512_bf16" in flags or "amx_bf16" in flags) else "fp32"
    auto = load(folders["plain"], LoadOptions())

    assert cpu_has_bf16() is (expected == "bf16")
    assert auto.precision == expected
    assert auto.unet.dtype == {"bf16": torch.bfloat16, "fp32": torch.float32}[expected]
    assert draw(auto)[1].png
    assert plain.precision == "fp32"
    assert {p.dtype for p in plain.unet.parameters()} == {torch.float32}
    assert {p.dtype for p in plain.pipes["txt2img"].text_encoder.parameters()} == {torch.float32}
    with pytest.raises(InvalidRequest, match="precision must be"):
        load(folders["plain"], LoadOptions(precision="int4"))


def test_cpu_flags_are_read_from_cpuinfo(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor : 0\nflags : fpu sse avx512f amx_bf16 amx_tile\n")
    assert cpu_has_bf16(info)
    info.write_text("processor : 0\nflags : fpu sse avx512f\n")
    assert not cpu_has_bf16(info)
    assert not cpu_has_bf16(tmp_path / "missing")


def test_memory_bytes_counts_every_weight(
    folders: dict[str, Path], engine: DiffusionEngine
) -> None:
    stored = sum(
        array.nbytes
        for path in folders["ip"].rglob("*.safetensors")
        for array in load_file(path).values()
    )
    assert engine.memory_bytes() == stored
    # The image-to-image and inpainting pipelines hold the same modules, not copies.
    base = engine.pipes["txt2img"].components
    for pipe in (engine.pipes["img2img"], engine.pipes["inpaint"]):
        for name in ("unet", "vae", "text_encoder", "image_encoder"):
            assert pipe.components[name] is base[name]


def test_peak_estimate_grows_with_the_size(engine: DiffusionEngine) -> None:
    small, large = engine.estimate_peak_bytes(64, 64), engine.estimate_peak_bytes(512, 512)
    assert 0 < small < large
    # The decoder's last width (8) x 3 maps x 512x512 x 4 bytes is one of its lower bounds.
    assert large >= 3 * 8 * 512 * 512 * 4


def test_memory_switches_turn_on_when_memory_is_short_and_off_afterwards(
    plain: DiffusionEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, normal = draw(plain)
    width, height = Image.open(io.BytesIO(normal.png)).size
    frugal = plain.estimate_peak_bytes(width, height, frugal=True)
    assert frugal < plain.estimate_peak_bytes(width, height)
    before = {name: type(p) for name, p in plain.unet.attn_processors.items()}
    seen: list[tuple[bool, set[str]]] = []
    original = plain.unet.forward

    def spy(*args: Any, **kwargs: Any) -> Any:
        kinds = {type(p).__name__ for p in plain.unet.attn_processors.values()}
        seen.append((plain.vae.use_tiling, kinds))
        return original(*args, **kwargs)

    monkeypatch.setattr(plain.unet, "forward", spy)
    monkeypatch.setattr(diffusion, "_available_bytes", lambda device: frugal)
    _, saving = draw(plain)
    monkeypatch.undo()

    assert seen and all(tiling and kinds == {"SlicedAttnProcessor"} for tiling, kinds in seen)
    assert not plain.vae.use_tiling
    assert {name: type(p) for name, p in plain.unet.attn_processors.items()} == before
    assert np.abs(pixels(saving) - pixels(normal)).max() <= 2


def test_a_picture_too_large_even_when_frugal_is_a_507_before_any_step(
    plain: DiffusionEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    steps: list[object] = []
    monkeypatch.setattr(plain.unet, "forward", lambda *args, **kwargs: steps.append(args))
    monkeypatch.setattr(diffusion, "_available_bytes", lambda device: 8 << 30)
    huge = ImageRequest(prompt="a red cat", width=4096, height=4096, steps=1)
    with pytest.raises(InsufficientMemory, match=r"4096x4096 picture needs about [\d.]+ GiB"
                       r".* and 8.0 GiB is free; draw it smaller"):  # fmt: skip
        list(plain.generate_image(huge, never))
    assert not steps


# --- SDXL -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sdxl(folders: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> DiffusionEngine:
    folder = write_tiny_sdxl(tmp_path_factory.mktemp("sdxl") / "xl", folders["ip"] / "tokenizer")
    return load(folder, LoadOptions(precision="fp32"))


def test_sdxl_draws_every_mode(sdxl: DiffusionEngine) -> None:
    assert sdxl.xl
    assert type(sdxl.pipes["inpaint"]).__name__ == "StableDiffusionXLInpaintPipeline"
    assert sdxl.pipes["img2img"].unet is sdxl.pipes["txt2img"].unet  # one copy of the weights

    progress, result = draw(sdxl, steps=2, negative_prompt="")
    assert len(progress) == 2
    assert Image.open(io.BytesIO(result.png)).size == (sdxl.default_size,) * 2
    assert result.parameters["scheduler"] == "euler"

    _, result = draw(sdxl, image=png(), steps=4, strength=0.5)
    assert result.parameters["mode"] == "img2img"

    original = np.asarray(Image.open(io.BytesIO(png()))).astype(int)
    _, result = draw(sdxl, image=png(), mask=left_half_mask(), steps=2, strength=1.0)
    assert np.array_equal(pixels(result)[:, 32:], original[:, 32:])


def test_progress_counts_the_steps_asked_even_when_the_scheduler_calls_more(
    plain: DiffusionEngine,
) -> None:
    progress, _ = draw(plain, scheduler="pndm", steps=4)  # PNDM: 5 calls for 4 steps
    assert {p.total for p in progress} == {4}
    assert [p.completed for p in progress] == [1, 2, 3, 4]  # each count once, in order
    assert diffusion._asked_steps(3, 3, 3) == (3, 3)
