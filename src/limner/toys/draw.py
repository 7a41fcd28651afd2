"""A toy Stable Diffusion that knows its shapes: "a blue square" draws a blue square.

SD 1.5's topology at tiny widths (a four-level UNet with cross-attention, an x8 VAE with 4
latent channels, a CLIP text encoder and BPE tokenizer) drawing 64x64 pictures, trained from
scratch on `shapes.py` pictures and captions. The UNet and the text encoder never see orange
(`shapes.UNSEEN`), so that a LoRA can teach it. `train` writes a diffusers folder (`StableDiffusionPipeline` layout, float16
safetensors, about 4 MB) that limner's drawing engine loads like any stored model; `evaluate`
draws every colour x shape prompt through that engine and judges the pictures by their pixels.

Training takes three stages, all from one seed, on fresh random pictures every batch:
1. the VAE learns to rebuild shapes pictures, half of them in random colours so that it can
   encode orange too (L1 + MSE, a small KL term), three of its latent channels also holding
   the picture's colours (see `_train_vae`);
2. its `scaling_factor` is set so that the latents have unit variance, as SD's 0.18215 does;
3. the UNet and the text encoder learn together with diffusers' DDPM loss on those latents,
   15% of captions empty so that classifier-free guidance works.

Choices that differ from SD 1.5, each because the SD 1.5 one failed at this size (measured):
GroupNorm with one group (a group per channel normalises colours away); v-prediction on the
cosine noise schedule (with epsilon on SD's schedule the 8x8 latents show their mean colour
through the noise, and the model drew the colour of the starting noise, not the prompt's);
and DDIM from the last timestep ("trailing") as the model's scheduler, so that limner's
default call (20 steps, guidance 7.5) draws good pictures.

    >>> metrics = train(Path("draw"))  # about 14 minutes on 2 CPU cores
    >>> evaluate(Path("draw"), count=48)["colour"]  # and 0.83 for "shape"
    1.0
"""

from __future__ import annotations

import copy
import io
import math
import random
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DDPMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from PIL import Image
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from limner.tiny import write_tiny_sd_configs
from limner.toys.shapes import (
    COLOURS,
    SHAPES,
    SIZE,
    Spec,
    caption,
    draw,
    judge_colour,
    judge_shape,
    random_spec,
)

# Widths. The latents are 8x8x4, so the UNet's four levels work at 8, 4, 2 and 1 pixels.
UNET: dict[str, Any] = {
    "block_out_channels": [32, 32, 64, 64],
    "layers_per_block": 1,
    "cross_attention_dim": 32,
    "attention_head_dim": 2,  # SD 1.x's (misnamed) field: the number of heads
    "norm_num_groups": 1,  # see VAE
    "sample_size": SIZE // 8,
    "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
}
VAE: dict[str, Any] = {
    "block_out_channels": [8, 16, 32, 32],
    "layers_per_block": 1,
    # One group: with a group per channel (as 8 groups of 8 channels are), GroupNorm would
    # normalise every colour channel away, and the VAE could not learn colours.
    "norm_num_groups": 1,
    "latent_channels": 4,
    "sample_size": SIZE,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
}
TEXT: dict[str, Any] = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
}

# Steps and rates: measured to fit about 15 minutes on 2 CPU cores (see the module docstring).
VAE_SMALL_STEPS, VAE_STEPS, VAE_BATCH, VAE_LR, KL_WEIGHT = 1500, 250, 8, 2e-3, 1e-4
UNET_STEPS, UNET_BATCH, UNET_LR, WARMUP = 3500, 64, 1e-3, 100
COLOUR_WEIGHT = 0.3
# The VAE is a codec for every colour, as SD's is: half its pictures have random colours. Shown
# only the four named ones, it decoded orange as yellow, and no LoRA could teach orange.
ANY_COLOUR = 0.5
INITIAL_LOG_VARIANCE = -8.0
EMA_DECAY = 0.995
EMPTY_CAPTIONS = 0.15  # the share of captions dropped, for classifier-free guidance
EVAL_COUNT = 48  # pictures `train` draws to report its accuracy
LOG_EVERY = 250

# The prompts the toy knows: every training colour with every shape.
PAIRS = [(colour, shape) for colour in COLOURS for shape in SHAPES]

NOISE: dict[str, Any] = {
    "beta_schedule": "squaredcos_cap_v2",
    "num_train_timesteps": 1000,
    "prediction_type": "v_prediction",
    "clip_sample": False,
}


def train(dest: Path, seed: int = 0, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train the toy from scratch and write it as a diffusers folder into `dest`.

    Returns the metrics: seconds spent training, the last losses, and the colour and shape
    accuracy of `EVAL_COUNT` pictures drawn through limner's engine (see `evaluate`).
    """
    dest = Path(dest)
    started = time.monotonic()
    torch.manual_seed(seed)
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory(prefix="limner-draw-") as tmp:
        tokenizer_dir = write_tiny_sd_configs(Path(tmp)) / "tokenizer"
        tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir)
        vae, vae_loss = _train_vae(rng, log)
        scale = _latent_scale(vae, rng)
        vae.register_to_config(scaling_factor=scale)
        log(f"vae: latents scaled by {scale:.4f} to unit variance")
        unet, text_encoder, unet_loss = _train_unet(vae, tokenizer, rng, log)
        _save(dest, vae, unet, text_encoder, tokenizer_dir)
    seconds = time.monotonic() - started
    log(f"trained in {seconds:.0f} s; drawing {EVAL_COUNT} pictures to judge them")
    scores = evaluate(dest, count=EVAL_COUNT)
    log(f"draw: colour {scores['colour']:.0%}, shape {scores['shape']:.0%} ({scores['precision']})")
    return {"seconds": seconds, "vae_loss": vae_loss, "unet_loss": unet_loss, **scores}


def evaluate(
    folder: Path, count: int = 100, seed: int = 1234, precision: str = "", steps: int = 0
) -> dict[str, Any]:
    """Draw `count` pictures, every colour x shape prompt in turn, through limner's engine at
    `precision` ("" = the engine's default) and `steps` (0 = the model's default), and judge
    them: the share of pictures of the requested colour, and of the requested shape."""
    from limner.engines import ImageRequest, ImageResult, LoadOptions
    from limner.engines.diffusion import load

    engine = load(Path(folder), LoadOptions(precision=precision))
    colours = shapes = 0
    for i in range(count):
        colour, shape = PAIRS[i % len(PAIRS)]
        request = ImageRequest(caption(Spec(colour, shape)), seed=seed + i, steps=steps)
        (png,) = [
            s.png for s in engine.generate_image(request, never) if isinstance(s, ImageResult)
        ]
        picture = Image.open(io.BytesIO(png))
        colours += judge_colour(picture) == colour
        shapes += judge_shape(picture) == shape
    return {
        "colour": colours / count,
        "shape": shapes / count,
        "count": count,
        "precision": engine.precision,
    }


def never() -> bool:
    """The `cancelled` of a call nobody cancels."""
    return False


# --- Data ------------------------------------------------------------------------------------


def _batch(
    rng: random.Random, count: int, size: int = SIZE, any_colour: float = 0.0
) -> tuple[torch.Tensor, list[Spec]]:
    """`count` fresh random pictures in [-1, 1], NCHW, and their specs (never orange). A share
    `any_colour` of them is filled with a random colour instead of its spec's."""
    specs = [random_spec(rng) for _ in range(count)]
    fills = [_random_colour(rng) if rng.random() < any_colour else None for _ in specs]
    pixels = np.stack(
        [
            np.asarray(draw(spec, size, fill), dtype=np.float32)
            for spec, fill in zip(specs, fills, strict=True)
        ]
    )
    return torch.from_numpy(pixels).permute(0, 3, 1, 2) / 127.5 - 1, specs


def _random_colour(rng: random.Random) -> tuple[int, int, int]:
    return (rng.randrange(256), rng.randrange(256), rng.randrange(256))


# --- 1. VAE ----------------------------------------------------------------------------------


def _train_vae(rng: random.Random, log: Callable[[str], None]) -> tuple[Any, float]:
    started = time.monotonic()
    vae = _new(
        AutoencoderKL, in_channels=3, out_channels=3, act_fn="silu", scaling_factor=1.0, **VAE
    )
    # Start nearly deterministic: latents sampled with unit variance would drown the signal.
    with torch.no_grad():
        vae.quant_conv.bias[VAE["latent_channels"] :].fill_(INITIAL_LOG_VARIANCE)
    optimiser = torch.optim.AdamW(vae.parameters(), lr=VAE_LR, weight_decay=0.0)
    total = VAE_SMALL_STEPS + VAE_STEPS
    schedule = _cosine(optimiser, total, warmup=20)
    vae.train()
    loss_value = 0.0
    for step in range(1, total + 1):
        # Most steps on half-size pictures: four times the pictures for the same work, and the
        # convolutions learn the same flat colours and edges; the last steps at full size.
        small = step <= VAE_SMALL_STEPS
        count, size = (VAE_BATCH * 4, SIZE // 2) if small else (VAE_BATCH, SIZE)
        pictures, _ = _batch(rng, count, size, any_colour=ANY_COLOUR)
        posterior = vae.encode(pictures).latent_dist
        rebuilt = vae.decode(posterior.sample()).sample
        kl = posterior.kl().mean() / posterior.mean[0].numel()  # per latent number
        # Three latent channels also hold the picture's colours, pooled 8x8 (SD's latents look
        # like the picture, too): left free, the VAE hid colour in faint patterns that the UNet
        # learned slowly, and drew the colour of the starting noise rather than the prompt's.
        colours = F.mse_loss(posterior.mean[:, :3], F.avg_pool2d(pictures, 8))
        loss = (
            F.l1_loss(rebuilt, pictures)
            + F.mse_loss(rebuilt, pictures)
            + KL_WEIGHT * kl
            + COLOUR_WEIGHT * colours
        )
        _step(optimiser, schedule, loss)
        loss_value = _smooth(loss_value, loss, step)
        if step % LOG_EVERY == 0 or step == total:
            log(
                f"vae step {step}/{total}: loss {loss_value:.4f}  {time.monotonic() - started:.0f} s"
            )
    vae.eval()
    return vae, loss_value


@torch.no_grad()
def _latent_scale(vae: Any, rng: random.Random, batches: int = 8) -> float:
    """1 / the standard deviation of the latents, rounded, as SD's scaling_factor is."""
    latents = torch.cat(
        [vae.encode(_batch(rng, 64)[0]).latent_dist.sample() for _ in range(batches)]
    )
    return round(1.0 / float(latents.std()), 4)


# --- 2. UNet and text encoder ----------------------------------------------------------------


def _train_unet(
    vae: Any, tokenizer: Any, rng: random.Random, log: Callable[[str], None]
) -> tuple[Any, CLIPTextModel, float]:
    started = time.monotonic()
    unet = _new(
        UNet2DConditionModel,
        in_channels=4,
        out_channels=4,
        act_fn="silu",
        flip_sin_to_cos=True,
        freq_shift=0,
        **UNET,
    )
    text_encoder = CLIPTextModel(_text_config(len(tokenizer)))
    ema = copy.deepcopy(unet).requires_grad_(False)
    ema_text: Any = copy.deepcopy(text_encoder).requires_grad_(False)
    noise_schedule = _new(DDPMScheduler, **NOISE)
    parameters = [*unet.parameters(), *text_encoder.parameters()]
    optimiser = torch.optim.AdamW(parameters, lr=UNET_LR, weight_decay=0.0)
    schedule = _cosine(optimiser, UNET_STEPS, warmup=WARMUP)
    # Every caption the toy ever sees, tokenized once; the empty one for guidance.
    prompts = ["", *(caption(Spec(c, s)) for c, s in PAIRS)]
    tokens = tokenizer(prompts, padding="max_length", max_length=77, return_tensors="pt").input_ids
    unet.train()
    text_encoder.train()
    loss_value = 0.0
    for step in range(1, UNET_STEPS + 1):
        pictures, specs = _batch(rng, UNET_BATCH)
        with torch.no_grad():
            latents = vae.encode(pictures).latent_dist.sample() * vae.config["scaling_factor"]
        which = torch.tensor(
            [0 if rng.random() < EMPTY_CAPTIONS else prompts.index(caption(s)) for s in specs]
        )
        # Each distinct caption once through the text encoder, then picked per picture.
        context = text_encoder(tokens).last_hidden_state[which]
        noise = torch.randn_like(latents)
        timesteps = torch.randint(0, NOISE["num_train_timesteps"], (len(specs),))
        noisy = noise_schedule.add_noise(latents, noise, timesteps)
        target = noise_schedule.get_velocity(latents, noise, timesteps)
        predicted = unet(noisy, timesteps, context).sample
        loss = F.mse_loss(predicted, target)
        _step(optimiser, schedule, loss)
        _ema(ema, unet)
        _ema(ema_text, text_encoder)
        loss_value = _smooth(loss_value, loss, step)
        if step % LOG_EVERY == 0 or step == UNET_STEPS:
            log(
                f"unet step {step}/{UNET_STEPS}: loss {loss_value:.4f}  {time.monotonic() - started:.0f} s"
            )
    return ema.eval(), ema_text.eval(), loss_value


def _new(kind: Any, **config: Any) -> Any:
    """A diffusers object; typed Any, as diffusers' own classes are untyped."""
    return kind(**config)


def _text_config(vocab_size: int) -> CLIPTextConfig:
    # bos and eos are the last two ids of a CLIP vocabulary; eos also pads.
    return CLIPTextConfig(
        **TEXT,
        hidden_act="quick_gelu",
        max_position_embeddings=77,
        projection_dim=TEXT["hidden_size"],
        vocab_size=vocab_size,
        bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1,
        pad_token_id=vocab_size - 1,
    )


@torch.no_grad()
def _ema(average: torch.nn.Module, model: torch.nn.Module) -> None:
    for kept, new in zip(average.parameters(), model.parameters(), strict=True):
        kept.lerp_(new, 1 - EMA_DECAY)


# --- Shared training pieces ------------------------------------------------------------------


def _cosine(
    optimiser: torch.optim.Optimizer, steps: int, warmup: int
) -> torch.optim.lr_scheduler.LambdaLR:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    return torch.optim.lr_scheduler.LambdaLR(optimiser, factor)


def _smooth(average: float, loss: torch.Tensor, step: int) -> float:
    """A running mean of the loss, for the log (one batch is noisy)."""
    return float(loss.detach()) if step == 1 else 0.95 * average + 0.05 * float(loss.detach())


def _step(
    optimiser: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LambdaLR,
    loss: torch.Tensor,
) -> None:
    optimiser.zero_grad(set_to_none=True)
    loss.backward()  # type: ignore[no-untyped-call]
    torch.nn.utils.clip_grad_norm_(
        [p for group in optimiser.param_groups for p in group["params"]], 1.0
    )
    optimiser.step()
    schedule.step()


# --- Saving ----------------------------------------------------------------------------------


def _save(
    dest: Path,
    vae: Any,
    unet: Any,
    text_encoder: Any,
    tokenizer_dir: Path,
) -> None:
    """The diffusers folder, weights in float16, replacing whatever `dest` held."""
    scheduler = _new(
        DDIMScheduler, **NOISE, set_alpha_to_one=False, steps_offset=1, timestep_spacing="trailing"
    )
    pipe = _new(
        StableDiffusionPipeline,
        vae=vae.to(torch.float16),
        text_encoder=text_encoder.to(torch.float16),
        tokenizer=CLIPTokenizer.from_pretrained(tokenizer_dir),
        unet=unet.to(torch.float16),
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    if dest.exists():
        shutil.rmtree(dest)
    pipe.save_pretrained(dest, safe_serialization=True)
    # CLIP's own vocab.json and merges.txt, as SD 1.5 ships them (transformers would write
    # only its tokenizer.json, which older tools cannot read).
    shutil.rmtree(dest / "tokenizer")
    shutil.copytree(tokenizer_dir, dest / "tokenizer")
