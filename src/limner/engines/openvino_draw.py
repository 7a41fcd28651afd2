"""Drawing on OpenVINO: a diffusers pipeline's UNet and VAE decoder run as OpenVINO graphs.

Everything else stays diffusers' and limner's (text encoders, schedulers, seeds, progress and
cancelling per step, masks pasted back, PNG parameters), so a request draws the same way on
either engine. The two graphs are converted once from the loaded modules (with their weights as
loaded, after the model's own LoRAs are fused) and kept in the model's cache folder of the store,
under the OpenVINO version and the weights' precision, so no later start converts again; each
picture size compiles once (OpenVINO's own compiled-model cache keeps those too). On CPUs with
bf16 the weights are loaded, and the graphs run, in bf16.

What a graph cannot do falls back to the torch modules for that call: a LoRA given for one
request, a tiled VAE for a picture too large for memory, a side the UNet's upsamplers do not
divide (SD 1.5: not a multiple of 64 pixels). SDXL's added conditions (pooled text, size ids)
and LCM's guidance embedding are inputs of the UNet's graph; models with an IP-Adapter stay on
torch for now (its image tokens are not in the graphs).
A model's tiny autoencoder (TAESD: `vae="tiny"` and previews) is no graph: it decodes on torch
beside them, at ~0.14 TFLOP per 512x512 picture against the VAE decoder's 2.51.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import openvino as ov
import torch
from diffusers.models.autoencoders.vae import DecoderOutput
from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput
from torch.jit._trace import TracerWarning

log = logging.getLogger("limner.openvino")


class _UNetGraph(torch.nn.Module):
    """The UNet with its conditions beyond the text (`conditions`, by name) as inputs after it."""

    def __init__(self, unet: Any, conditions: tuple[str, ...]) -> None:
        super().__init__()
        self.unet, self.conditions = unet, conditions

    def forward(self, sample: Any, timestep: Any, encoder_hidden_states: Any, *more: Any) -> Any:
        dtype = self.unet.dtype  # float32 inputs and output; inside, the weights' precision
        named = {name: value.to(dtype) for name, value in zip(self.conditions, more, strict=True)}
        cond = named.pop("timestep_cond", None)
        return self.unet(sample.to(dtype), timestep, encoder_hidden_states.to(dtype),
                         timestep_cond=cond, added_cond_kwargs=named or None,
                         return_dict=False)[0].float()  # fmt: skip


def unet_conditions(unet: Any) -> dict[str, int]:
    """What a UNet takes besides sample, timestep and text, by name, with each one's width:
    LCM's guidance embedding (`timestep_cond`), SDXL's pooled text and size ids (`text_time`)."""
    config, widths = unet.config, {}
    if config.time_cond_proj_dim is not None:
        widths["timestep_cond"] = config.time_cond_proj_dim
    if config.addition_embed_type == "text_time":
        # SDXL's 6 size ids (a refiner's 5), each embedded addition_time_embed_dim wide, beside
        # the pooled text; the example only has to be consistent, each call reshapes.
        ids = 6
        widths["text_embeds"] = config.projection_class_embeddings_input_dim - (
            ids * config.addition_time_embed_dim
        )
        widths["time_ids"] = ids
    return widths


class _DecoderGraph(torch.nn.Module):
    def __init__(self, vae: Any) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, latents: Any) -> Any:
        return self.vae.decode(latents.to(self.vae.dtype), return_dict=False)[0].float()


class OpenVinoDrawing:
    """The UNet and VAE decoder of one loaded pipeline, on OpenVINO."""

    def __init__(self, pipe: Any, cache: Path | None, bf16: bool) -> None:
        self.core = ov.Core()
        self.core.set_property("CPU", {"INFERENCE_PRECISION_HINT": "bf16" if bf16 else "f32"})
        self.unet, self.vae = pipe.unet, pipe.vae
        # Graphs hold the weights as loaded (bf16 where the CPU computes in it), so a model
        # converted at one precision is never read at the other.
        weights = str(self.unet.dtype).removeprefix("torch.")
        folder = (cache or Path(tempfile.mkdtemp(prefix="limner-openvino-"))) / (
            f"openvino-{ov.get_version().split('-')[0]}-{weights}"
        )
        self.core.set_property({"CACHE_DIR": str(folder / "compiled")})
        # Traced at the smallest side the UNet's upsamplers divide: every call reshapes to its
        # own size anyway, and a full-size trace of SDXL would hold gigabytes of activations.
        side = max(8, 2**self.unet.num_upsamplers)
        channels, context = self.unet.config.in_channels, self.unet.config.cross_attention_dim
        widths = unet_conditions(self.unet)
        self.conditions = tuple(widths)
        unet_example = (torch.randn(2, channels, side, side), torch.tensor(1.0),
                        torch.randn(2, 77, context),
                        *(torch.randn(2, n) for n in widths.values()))  # fmt: skip
        latents = torch.randn(1, self.vae.config.latent_channels, side, side)
        unet_graph = _UNetGraph(self.unet, self.conditions)
        self.graphs = {
            "unet": self._graph(folder / "unet.xml", unet_graph, unet_example),
            "decoder": self._graph(folder / "vae_decoder.xml", _DecoderGraph(self.vae), (latents,)),
        }
        self.compiled: dict[tuple[str, tuple[tuple[int, ...], ...]], Any] = {}
        self.torch_only = False  # set for a call the graphs cannot draw
        self._unet_forward, self._decode = self.unet.forward, self.vae.decode
        self.unet.forward = self._unet_call
        self.vae.decode = self._decode_call

    def weight_bytes(self) -> int:
        return sum(int(np.prod(op.get_output_shape(0))) * op.get_output_element_type(0).size
                   for graph in self.graphs.values() for op in graph.get_ops()
                   if op.get_type_name() == "Constant")  # fmt: skip

    def _graph(self, path: Path, module: torch.nn.Module, example: tuple[Any, ...]) -> Any:
        """The graph kept at `path`, converted from `module` the first time. The module is traced
        as loaded, not copied: a float32 copy of SDXL's UNet alone would take 10 GB."""
        if path.is_file():
            return self.core.read_model(path)
        log.info("converting %s to OpenVINO once (kept in %s)", path.stem, path.parent)
        # Tracing warns of every shape check it freezes; the sides it can draw are checked in
        # _unet_call, so the warnings would only fill the log.
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", TracerWarning)
            graph = ov.convert_model(module.eval(), example_input=example)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = Path(tempfile.mkdtemp(prefix=".converting-", dir=path.parent))
        try:  # written whole, then moved: a killed conversion leaves no half graph
            ov.save_model(graph, partial / path.name, compress_to_fp16=True)
            for written in partial.iterdir():
                written.rename(path.parent / written.name)
        finally:
            shutil.rmtree(partial, ignore_errors=True)
        return self.core.read_model(path)

    def _run(self, name: str, inputs: list[np.ndarray]) -> np.ndarray:
        """One call of graph `name`, compiled once per input shape."""
        key = (name, tuple(array.shape for array in inputs))
        if key not in self.compiled:
            graph = self.graphs[name].clone()
            graph.reshape({index: ov.PartialShape(list(array.shape))
                           for index, array in enumerate(inputs)})  # fmt: skip
            self.compiled[key] = self.core.compile_model(graph, "CPU")
        result: np.ndarray = self.compiled[key](inputs)[0]
        return result

    def _unet_call(self, sample: Any, timestep: Any, encoder_hidden_states: Any, *args: Any,
                   return_dict: bool = True, **kwargs: Any) -> Any:  # fmt: skip
        conditions = None if args else self._conditions(kwargs)
        # The graph was traced at sides its upsamplers divide; other sides need torch's sizes.
        odd = any(side % 2**self.unet.num_upsamplers for side in sample.shape[-2:])
        if self.torch_only or conditions is None or odd:
            return self._unet_forward(sample, timestep, encoder_hidden_states, *args,
                                      return_dict=return_dict, **kwargs)  # fmt: skip
        steps = torch.as_tensor(timestep, dtype=torch.float32).reshape(-1)[:1].reshape(())
        out = self._run("unet", [sample.float().numpy(), steps.numpy(),
                                 encoder_hidden_states.float().numpy(), *conditions])  # fmt: skip
        noise = torch.from_numpy(out).to(sample.dtype)
        return UNet2DConditionOutput(sample=noise) if return_dict else (noise,)

    def _conditions(self, kwargs: dict[str, Any]) -> list[np.ndarray] | None:
        """This call's inputs for the graph's conditions, or None where it carries anything
        else (a LoRA's scale, an IP-Adapter's image tokens): torch draws that call."""
        named = {k: v for k, v in kwargs.items() if v is not None and k != "added_cond_kwargs"}
        named.update(kwargs.get("added_cond_kwargs") or {})
        if set(named) != set(self.conditions):
            return None
        return [named[name].float().numpy() for name in self.conditions]

    def _decode_call(self, latents: Any, return_dict: bool = True, generator: Any = None) -> Any:
        if self.torch_only or self.vae.use_tiling:
            return self._decode(latents, return_dict=return_dict, generator=generator)
        pixels = torch.from_numpy(self._run("decoder", [latents.float().numpy()]))
        pixels = pixels.to(latents.dtype)
        return DecoderOutput(sample=pixels) if return_dict else (pixels,)


def accelerate(
    pipe: Any, cache: Path | None, bf16: bool, ip_adapter: bool
) -> OpenVinoDrawing | None:
    """OpenVINO for `pipe` where it applies; None (torch) where it does not, said in the log."""
    if ip_adapter:
        log.info("drawing on torch: OpenVINO graphs do not carry this model's IP-Adapter yet")
        return None
    if pipe.unet.config.addition_embed_type not in (None, "text_time"):
        log.info("drawing on torch: the UNet's %s conditions are not in OpenVINO graphs yet",
                 pipe.unet.config.addition_embed_type)  # fmt: skip
        return None
    return OpenVinoDrawing(pipe, cache, bf16)
