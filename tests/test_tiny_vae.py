"""The tiny autoencoder (TAESD) of a drawing model: stored as its `vae_tiny/` layers (`limner
create --tiny-vae`), reported by /api/show, decoding `vae: "tiny"` pictures and every preview."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from helpers import add_fake, add_fake_draw, add_model, add_tiny_sd
from limner.client import Client
from limner.engines import ImageRequest, ImageResult, LoadOptions, Progress
from limner.engines.drawing import checked
from limner.errors import InvalidRequest
from limner.names import ModelName
from limner.store import Store
from limner.tiny import write_tiny_sd, write_tiny_taesd

diffusion = pytest.importorskip("limner.engines.diffusion")
# diffusers' Euler scheduler calls np.array(tensor, copy=False); harmless, and not ours.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

FAMILY = "stable-diffusion"


def upload(sdk: Client, folder: Path) -> dict[str, str]:
    """A TAESD folder's two files as uploaded blobs, as `limner create --tiny-vae` sends them."""
    return {name: sdk.create_blob(folder / name)
            for name in ("config.json", "diffusion_pytorch_model.safetensors")}  # fmt: skip


def layer_names(store: Store, model: str) -> list[str]:
    return sorted(layer.name or "" for layer in store.entry(ModelName.parse(model)).manifest.layers)


def files_of(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


# --- the store: create, show, pull's config ---------------------------------------------------


def test_create_adds_the_tiny_vae_as_layers_and_show_reports_it(
    server: Any, store: Store, tmp_path: Path
) -> None:
    add_tiny_sd(store, tmp_path)
    sdk = Client(server.url)
    taesd = upload(sdk, write_tiny_taesd(tmp_path / "taesd"))

    assert sdk.create("sd-fast", from_="sd", tiny_vae=taesd).status == "success"

    tiny = ["vae_tiny/config.json", "vae_tiny/diffusion_pytorch_model.safetensors"]
    assert set(tiny) <= set(layer_names(store, "sd-fast"))
    assert not set(tiny) & set(layer_names(store, "sd"))
    assert sdk.show("sd-fast").model_info[f"{FAMILY}.tiny_vae"] is True
    assert sdk.show("sd").model_info[f"{FAMILY}.tiny_vae"] is False

    # Again from the model that has one: its tiny autoencoder is replaced, not doubled.
    sdk.create("sd-faster", from_="sd-fast", tiny_vae=taesd)
    assert [n for n in layer_names(store, "sd-faster") if n.startswith("vae_tiny/")] == tiny


def test_a_stored_taesd_or_a_model_with_one_can_be_named(
    server: Any, store: Store, tmp_path: Path
) -> None:
    add_tiny_sd(store, tmp_path)
    add_model(store, "taesd", files_of(write_tiny_taesd(tmp_path / "taesd")))  # as pulled
    sdk = Client(server.url)
    shown = sdk.show("taesd")
    assert shown.capabilities == [] and shown.details.family == "taesd"

    sdk.create("sd-fast", from_="sd", tiny_vae="taesd")
    sdk.create("sd-too", from_="sd", tiny_vae="sd-fast")  # the one another model holds
    for name in ("sd-fast", "sd-too"):
        assert sdk.show(name).model_info[f"{FAMILY}.tiny_vae"] is True
    assert layer_names(store, "sd-fast") == layer_names(store, "sd-too")


def test_a_folder_with_vae_tiny_is_stored_with_it(store: Store, tmp_path: Path) -> None:
    from limner.store.described import stored_config

    folder = write_tiny_sd(tmp_path / "sd", seed=0, ip_adapter=False, tiny_vae=True)
    add_model(store, "sd-fast", files_of(folder))
    config = stored_config(store, store.entry(ModelName.parse("sd-fast")).manifest)
    assert config["model_info"][f"{FAMILY}.tiny_vae"] is True


def test_limner_create_tiny_vae_takes_a_folder_or_a_stored_model(
    server: Any, store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    from limner.cli.main import main

    monkeypatch.setenv("LIMNER_HOST", server.url)
    add_tiny_sd(store, tmp_path)
    folder = write_tiny_taesd(tmp_path / "taesd")
    (folder / "taesd_decoder.safetensors").write_bytes(b"another file of the repo")

    assert main(["create", "sd-fast", "--from", "sd", "--tiny-vae", str(folder)]) == 0
    assert "copying file diffusion_pytorch_model.safetensors" in capsys.readouterr().out
    assert main(["create", "sd-too", "--from", "sd", "--tiny-vae", "sd-fast"]) == 0
    capsys.readouterr()
    assert main(["show", "sd-too"]) == 0
    assert re.search(r"tiny VAE\s+TAESD", capsys.readouterr().out)
    assert layer_names(store, "sd-fast") == layer_names(store, "sd-too")
    assert main(["create", "sd-bad", "--from", "sd", "--tiny-vae", str(tmp_path / "no")]) == 1
    assert "--tiny-vae takes a diffusers AutoencoderTiny folder" in capsys.readouterr().err


def test_bad_tiny_vaes_are_400s_and_write_nothing(
    server: Any, store: Store, tmp_path: Path
) -> None:
    add_tiny_sd(store, tmp_path)
    add_fake(store, "chat")
    sdk = Client(server.url)
    good = upload(sdk, write_tiny_taesd(tmp_path / "taesd"))
    wide = upload(sdk, write_tiny_taesd(tmp_path / "wide", latent_channels=16))
    sd = tmp_path / "sd"  # add_tiny_sd's folder: a full VAE is no tiny one
    full_vae = {name: sdk.create_blob(sd / "vae" / name)
                for name in ("config.json", "diffusion_pytorch_model.safetensors")}  # fmt: skip
    pickle = tmp_path / "taesd.bin"
    pickle.write_bytes(b"\x80\x02" + b"p" * 64)
    cases: list[tuple[str, Any, str]] = [
        ("sd", {**good, "diffusion_pytorch_model.safetensors": sdk.create_blob(pickle)}, "pickle"),
        ("sd", wide, "16 latent channels"),
        ("sd", full_vae, "AutoencoderKL"),
        ("sd", {"config.json": good["config.json"]}, "needs"),
        ("sd", {**good, "notes.txt": good["config.json"]}, "neither"),
        ("sd", {**good, "config.json": "sha256:" + "0" * 64}, "upload it first"),
        ("chat", good, "not one"),
        ("sd", "missing", "not found"),
        ("sd", "chat", "holds no tiny autoencoder"),
    ]
    for base, tiny_vae, said in cases:
        with pytest.raises(InvalidRequest, match=said):
            sdk.create("sd-bad", from_=base, tiny_vae=tiny_vae)
    assert [entry.name.model for entry in store.entries()] == ["chat", "sd"]


# --- the request field --------------------------------------------------------------------


def test_vae_is_checked_with_the_request(server: Any, store: Store) -> None:
    assert checked(ImageRequest("x", vae=" Tiny ")).vae == "tiny"
    assert checked(ImageRequest("x", vae="full")).vae == "full"
    with pytest.raises(InvalidRequest, match='vae must be "full"'):
        checked(ImageRequest("x", vae="taesd"))
    add_fake_draw(store)
    for vae, said in (("huge", 'vae must be "full"'), ("tiny", "--tiny-vae PATH")):
        reply = httpx.post(f"{server.url}/api/generate",
                           json={"model": "draw", "prompt": "x", "vae": vae})  # fmt: skip
        assert reply.status_code == 400
        assert said in reply.json()["error"]
    assert server.scheduler.loads == 0  # refused before any model loaded


# --- the engine: what decodes ---------------------------------------------------------------


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Any:
    folder = write_tiny_sd(tmp_path_factory.mktemp("sd") / "sd", ip_adapter=False, tiny_vae=True)
    return diffusion.load(folder, LoadOptions(precision="fp32"))


def spy(monkeypatch: pytest.MonkeyPatch, module: Any) -> list[Any]:
    """The latents each `module.decode` call receives."""
    calls: list[Any] = []
    decode = module.decode

    def recorded(latents: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(latents.clone())
        return decode(latents, *args, **kwargs)

    monkeypatch.setattr(module, "decode", recorded)
    return calls


def draw(engine: Any, **fields: Any) -> tuple[list[Progress], ImageResult]:
    fields = {"prompt": "a red cat", "steps": 3, "seed": 1, "scheduler": "euler", **fields}
    *progress, result = engine.generate_image(ImageRequest(**fields), lambda: False)
    assert isinstance(result, ImageResult)
    return progress, result


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)


def test_the_tiny_vae_decodes_the_latents_as_the_unet_sees_them(
    engine: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert type(engine.tiny_vae).__name__ == "AutoencoderTiny"
    full, tiny = spy(monkeypatch, engine.vae), spy(monkeypatch, engine.tiny_vae)

    _, by_vae = draw(engine)
    assert (len(full), len(tiny)) == (1, 0)
    _, by_tiny = draw(engine, vae="tiny")
    assert (len(full), len(tiny)) == (1, 1)

    # The same seed gives the same latents: the VAE unscales them, TAESD reads them as they are.
    scale = engine.vae.config.scaling_factor
    assert np.allclose(tiny[0].numpy(), full[0].numpy() * scale, atol=1e-5)
    assert not np.array_equal(pixels(by_tiny.png), pixels(by_vae.png))
    assert by_tiny.parameters["vae"] == "tiny" and "vae" not in by_vae.parameters
    text = Image.open(io.BytesIO(by_tiny.png)).text
    assert text["parameters"].endswith(", VAE: TAESD")
    assert json.loads(text["limner"])["vae"] == "tiny"


def test_previews_always_come_from_the_tiny_vae(
    engine: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    full, tiny = spy(monkeypatch, engine.vae), spy(monkeypatch, engine.tiny_vae)
    progress, _ = draw(engine, preview_every=1)
    assert [p.preview is not None for p in progress] == [True, True, False]
    assert (len(full), len(tiny)) == (1, 2)  # the picture by the VAE, both previews by TAESD
    preview = Image.open(io.BytesIO(progress[0].preview or b""))
    assert preview.format == "PNG" and preview.size == (64, 64)


def test_tiny_draws_every_mode_and_inpainting_keeps_the_unmasked_pixels(engine: Any) -> None:
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    mask = np.zeros((64, 64), np.uint8)
    mask[:, :32] = 255
    picture, hole = (io.BytesIO(), io.BytesIO())
    Image.fromarray(noise).save(picture, "PNG")
    Image.fromarray(mask, "L").save(hole, "PNG")

    _, redrawn = draw(engine, vae="tiny", image=picture.getvalue(), strength=0.6)
    assert redrawn.parameters["mode"] == "img2img"
    _, inpainted = draw(engine, vae="tiny", image=picture.getvalue(), mask=hole.getvalue())
    assert inpainted.parameters["mode"] == "inpaint"
    assert np.array_equal(pixels(inpainted.png)[:, 32:], noise[:, 32:])


def test_tiny_without_a_tiny_vae_says_how_to_add_one(
    engine: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine, "tiny_vae", None)
    with pytest.raises(InvalidRequest, match="limner create NAME --from MODEL --tiny-vae"):
        draw(engine, vae="tiny")
    _, result = draw(engine, preview_every=1)  # previews fall back to the VAE
    assert "vae" not in result.parameters


def test_a_tiny_vae_of_other_latents_does_not_load(tmp_path: Path) -> None:
    folder = write_tiny_sd(tmp_path / "sd", ip_adapter=False)
    write_tiny_taesd(folder / "vae_tiny", latent_channels=16)
    with pytest.raises(InvalidRequest, match="16 latent channels"):
        diffusion.load(folder, LoadOptions(precision="fp32"))


def test_a_single_file_checkpoint_takes_a_tiny_vae_too(store: Store, tmp_path: Path) -> None:
    from limner.store.create import create
    from limner.store.described import stored_config
    from limner.tiny import write_tiny_sd_checkpoint
    from limner.types import CreateRequest

    checkpoint = write_tiny_sd_checkpoint(tmp_path / "ckpt" / "tiny.safetensors")
    add_model(store, "ckpt", {"tiny.safetensors": checkpoint.read_bytes()})
    taesd = write_tiny_taesd(tmp_path / "ckpt" / "vae_tiny")  # beside it, as the runner links
    digests = {p.name: store.blobs.write_bytes(p.read_bytes())[0] for p in taesd.iterdir()}
    for _ in create(store, CreateRequest(model="fast", **{"from": "ckpt"}, tiny_vae=digests)):
        pass
    config = stored_config(store, store.entry(ModelName.parse("fast")).manifest)
    assert config["model_info"][f"{FAMILY}.tiny_vae"] is True

    engine = diffusion.load_checkpoint(tmp_path / "ckpt", LoadOptions(precision="fp32"))
    _, result = draw(engine, vae="tiny", steps=1)
    assert result.parameters["vae"] == "tiny"


# --- end to end: SDK -> server -> runner -> engine --------------------------------------------


@pytest.mark.slow
def test_the_sdk_draws_with_the_tiny_vae_through_a_runner(
    server: Any, store: Store, tmp_path: Path
) -> None:
    add_tiny_sd(store, tmp_path)
    sdk = Client(server.url)
    sdk.create("sd-fast", from_="sd", tiny_vae=upload(sdk, write_tiny_taesd(tmp_path / "taesd")))
    seen: list[tuple[int, int]] = []
    picture = sdk.generate_image("sd-fast", "a red cat", steps=2, seed=1, scheduler="euler",
                                 vae="tiny", progress=lambda *step: seen.append(step))  # fmt: skip
    assert picture.parameters["vae"] == "tiny"
    assert picture.pil().size == (64, 64) and seen[-1] == (2, 2)
