"""Wire models for every request and response of the native API (Ollama's shapes).

Shared by the SDK, the server and the tests; imports nothing from limner. Requests ignore
unknown fields, as Ollama does. Responses are dumped without None fields, so optional
metrics appear only where they were measured; required fields (`response`,
`message.role`, `models`, `model_info`) always have a value.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, Strict

KeepAlive = float | str | None
Format = str | dict[str, Any] | None  # "" | "json" | a JSON schema; checked by the server
# Drawing numbers as Go's decoder takes them: 64, never "64"; a whole number is never 5.5.
Whole = Annotated[int, Strict()]
Number = Annotated[float, Strict()]  # 7 or 7.5


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class _Response(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)

    def wire(self) -> dict[str, Any]:
        """The JSON object as sent: by alias, None fields left out."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


# --- chat and generate ---------------------------------------------------------------


class ToolFunction(_Request):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None  # a JSON schema of the arguments


class ToolSpec(_Request):
    """A function the model may call (`tools[]`, the same shape in OpenAI's API)."""

    type: str = "function"  # the only kind there is
    function: ToolFunction


class ToolCallFunction(_Response):
    index: int | None = None
    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)  # an object, never a string


class ToolCall(_Response):
    """A call the model made, as Ollama sends it and takes it back in later turns."""

    id: str | None = None
    function: ToolCallFunction


class Message(_Request):
    role: str  # any string; lower-cased by the server
    content: str | None = ""  # may be missing: the ollama client drops empty keys
    images: list[str] | None = None  # raw standard base64 (no data: prefix)
    thinking: str | None = None
    tool_calls: list[ToolCall] | None = None  # what an earlier answer called
    tool_name: str | None = None  # a tool's answer: which tool
    tool_call_id: str | None = None


class GenerateRequest(_Request):
    model: str = ""
    prompt: str | None = ""  # empty: only load (or unload with keep_alive 0)
    system: str | None = None  # replaces the model's system message
    template: str | None = None  # a Jinja chat template replacing the model's
    images: list[str] | None = None
    format: Format = None  # "json" constrains the answer to JSON
    options: dict[str, Any] | None = None  # Ollama's options; unknown keys ignored
    keep_alive: KeepAlive = None  # seconds or a Go duration; absent: LIMNER_KEEP_ALIVE
    stream: bool | None = True  # NDJSON by default
    raw: bool | None = False  # true: the prompt is sent to the model as is
    think: bool | str | None = None  # true or "low"/"medium"/"high": a 400 unless it thinks
    context: list[int] | None = None  # deprecated; ignored by limner
    # Drawing models (capability "image"): Ollama's experimental fields...
    width: Whole | None = None  # 0/absent: the model's default size, or the init picture's
    height: Whole | None = None
    steps: Whole | None = None  # 1-150; absent: the model's default (20; 1 for Turbo)
    # ...and limner's: images[0] is the init picture for image-to-image and inpainting.
    seed: Whole | None = None  # also read from options.seed; absent or -1: random
    negative_prompt: str | None = None
    guidance_scale: Number | None = None  # absent: the model's default (7.5)
    scheduler: str | None = None  # "euler", "euler a", "dpm++ 2m karras", "ddim", "lcm", ...
    strength: Number | None = None  # image-to-image: 0 < strength <= 1, default 0.75
    mask: str | None = None  # base64 PNG the size of images[0]; white = repaint
    style_images: list[str] | None = None  # reference pictures for style transfer
    style_strength: Number | None = None  # 0-1, default 0.6
    loras: dict[str, Number] | None = None  # model with a LoRA -> weight, for this picture only
    preview_every: Whole | None = None  # progress lines carry a `preview` PNG every N steps
    vae: str | None = None  # "full" (default) or "tiny": the model's tiny autoencoder decodes


class ChatRequest(_Request):
    model: str = ""
    messages: list[Message] | None = None  # empty: only load (or unload)
    format: Format = None
    options: dict[str, Any] | None = None
    keep_alive: KeepAlive = None
    stream: bool | None = True
    tools: list[ToolSpec] | None = None  # a 400 unless the model can call tools
    think: bool | str | None = None  # true or "low"/"medium"/"high": a 400 unless it thinks


class Metrics(_Response):
    total_duration: int | None = None  # nanoseconds
    load_duration: int | None = None
    prompt_eval_count: int | None = None  # includes every picture's tokens
    prompt_eval_duration: int | None = None
    eval_count: int | None = None
    eval_duration: int | None = None
    image_tokens: int | None = None  # limner: how many prompt tokens the pictures took
    truncated: dict[str, int] | None = None  # limner: {"messages", "images"} dropped to fit
    prompt_cached_count: int | None = None  # limner: prompt tokens reused, not evaluated again


class GenerateResponse(Metrics):
    model: str
    created_at: str
    response: str = ""
    done: bool = False
    done_reason: str | None = None  # stop | length | load | unload
    context: list[int] | None = None
    completed: int | None = None  # drawing: denoising steps done...
    total: int | None = None  # ...of this many
    image: str | None = None  # drawing, last line: base64 PNG
    parameters: dict[str, Any] | None = None  # drawing, last line: what drew it (seed used...)
    picture_id: str | None = None  # drawing, last line: its id in the gallery (/api/gallery)


class ChatMessage(_Response):
    role: str = "assistant"
    content: str = ""
    images: list[str] | None = None
    thinking: str | None = None
    tool_calls: list[ToolCall] | None = None


class ChatResponse(Metrics):
    model: str
    created_at: str
    message: ChatMessage = Field(default_factory=ChatMessage)
    done: bool = False
    done_reason: str | None = None


# --- models ----------------------------------------------------------------------------


class ModelDetails(_Response):
    parent_model: str = ""
    format: str = ""
    family: str = ""
    families: list[str] | None = None
    parameter_size: str = ""
    quantization_level: str = ""


class ListedModel(_Response):
    name: str
    model: str
    modified_at: datetime
    size: int
    digest: str
    details: ModelDetails = Field(default_factory=ModelDetails)


class ListResponse(_Response):
    models: list[ListedModel] = Field(default_factory=list)


class RunningModel(_Response):
    name: str
    model: str
    size: int
    digest: str
    details: ModelDetails = Field(default_factory=ModelDetails)
    expires_at: datetime
    size_vram: int = 0
    context_length: int = 0


class ProcessResponse(_Response):
    models: list[RunningModel] = Field(default_factory=list)


# --- embeddings ------------------------------------------------------------------------


class EmbedRequest(_Request):
    model: str = ""
    input: Any = None  # a string or a list of strings; empty or absent: only load
    truncate: bool | None = True  # false: an input longer than the window is a 400
    dimensions: int | None = None  # keep the first N values (then normalised again)
    options: dict[str, Any] | None = None
    keep_alive: KeepAlive = None


class EmbedResponse(_Response):
    model: str
    embeddings: list[list[float]]  # one unit vector per input
    total_duration: int | None = None
    load_duration: int | None = None
    prompt_eval_count: int | None = None


class EmbeddingsRequest(_Request):
    """The legacy endpoint: one prompt, a vector as the model gives it (not normalised)."""

    model: str = ""
    prompt: str | None = ""
    options: dict[str, Any] | None = None
    keep_alive: KeepAlive = None


class EmbeddingsResponse(_Response):
    embedding: list[float]


class ShowRequest(_Request):
    model: str = ""
    name: str | None = None  # legacy alias of model
    verbose: bool | None = False


class ShowResponse(_Response):
    license: str | None = None
    modelfile: str = ""
    parameters: str | None = None
    template: str | None = None
    system: str | None = None
    details: ModelDetails = Field(default_factory=ModelDetails)
    messages: list[dict[str, Any]] | None = None
    model_info: dict[str, Any] = Field(default_factory=dict)  # always present
    projector_info: dict[str, Any] | None = None  # GGUF models with a vision projector
    capabilities: list[str] = Field(default_factory=list)
    modified_at: datetime | None = None
    training: dict[str, Any] | None = None  # how a trained model was trained, and its metrics


class CopyRequest(_Request):
    source: str = ""
    destination: str = ""


class DeleteRequest(_Request):
    model: str = ""
    name: str | None = None


class TrainSection(_Request):
    """`/api/create`'s `train`: a LoRA trained on uploaded pictures. None: the trainer's default."""

    files: dict[str, str] = Field(default_factory=dict)  # relative name -> blob; or one .zip
    caption_with: str | None = None  # a vision chat model captions pictures without captions
    caption_prompt: str | None = None  # what it is asked
    steps: int | None = None
    rank: int | None = None
    alpha: float | None = None
    learning_rate: float | None = None
    lr_scheduler: str | None = None
    warmup_steps: int | None = None
    resolution: int | None = None
    batch_size: int | None = None
    gradient_accumulation: int | None = None
    center_crop: bool | None = None
    random_flip: bool | None = None
    seed: int | None = None
    precision: str | None = None
    instance_prompt: str | None = None
    validation_prompt: str | None = None
    validation_every: int | None = None
    checkpoint_every: int | None = None
    max_grad_norm: float | None = None


class CreateRequest(_Request):
    model: str = ""
    name: str | None = None  # deprecated alias of model
    from_: str | None = Field(default=None, alias="from")
    files: dict[str, str] | None = None  # relative file name -> "sha256:<hex>" blob
    adapters: dict[str, str] | None = None
    # A tiny autoencoder (TAESD) for a drawing model: its files (name -> blob: config.json and
    # the .safetensors weights), or the name of a stored model holding one.
    tiny_vae: dict[str, str] | str | None = None
    template: str | None = None
    system: str | None = None
    license: str | list[str] | None = None
    parameters: dict[str, Any] | None = None
    messages: list[Message] | None = None
    quantize: str | None = None
    train: TrainSection | None = None
    stream: bool | None = True


class PullRequest(_Request):
    model: str = ""
    name: str | None = None  # deprecated alias of model
    insecure: bool | None = False  # allow http:// and use plain http for the registry
    stream: bool | None = True
    # `username` and `password` are ignored, as Ollama does.


class ProgressResponse(_Response):
    status: str
    digest: str | None = None
    total: int | None = None
    completed: int | None = None
    # Training (`status` "training", "checkpoint", "validation", "captioning"):
    step: int | None = None
    loss: float | None = None
    learning_rate: float | None = None
    eta: float | None = None  # seconds
    image: str | None = None  # base64 PNG of a validation picture
    file: str | None = None  # the picture being captioned
    caption: str | None = None


class VersionResponse(_Response):
    version: str


class GalleryPicture(_Response):
    id: str  # 20261204-103000123456-1a2b: when it was drawn (UTC, µs), and a random part
    created_at: datetime
    parameters: dict[str, Any]  # model, prompt, seed, steps, sampler, size... as drawn
    bytes: int
    url: str  # the PNG: /api/gallery/<id>
    thumbnail: str = ""  # a JPEG at most 256 px on its long side: /api/gallery/<id>/thumbnail


class GalleryResponse(_Response):
    pictures: list[GalleryPicture]
    next: str | None = None  # pass as `before` for the next (older) page; None: no more


# --- OpenAI's chat API (translated into the native chat by the server) --------------------


class OpenAIContentPart(_Request):
    type: str  # "text" | "image_url"; others are refused by the server
    text: str | None = None
    image_url: dict[str, Any] | str | None = None  # {"url": "data:image/png;base64,..."}


class OpenAIFunctionCall(_Request):
    name: str
    arguments: str = "{}"  # JSON text, as OpenAI sends it


class OpenAIToolCall(_Request):
    id: str | None = None
    type: str = "function"
    function: OpenAIFunctionCall


class OpenAIMessage(_Request):
    role: str  # system, developer, user, assistant or tool
    content: str | list[OpenAIContentPart] | None = None
    name: str | None = None
    tool_call_id: str | None = None
    tool_calls: list[OpenAIToolCall] | None = None


class OpenAIChatRequest(_Request):
    model: str = ""
    messages: list[OpenAIMessage] = Field(default_factory=list)
    stream: bool = False
    stream_options: dict[str, Any] | None = None  # {"include_usage": true}
    max_tokens: int | None = None
    max_completion_tokens: int | None = None  # the newer name of max_tokens
    temperature: float | None = None  # OpenAI's default, 1.0, when absent
    top_p: float | None = None  # 1.0 when absent
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int | None = None  # only 1
    response_format: dict[str, Any] | None = None  # {"type": "text"|"json_object"|"json_schema"}
    frequency_penalty: float | None = None  # accepted, not applied
    presence_penalty: float | None = None  # accepted, not applied
    logprobs: bool | None = None  # refused when true
    tools: list[ToolSpec] | None = None
    tool_choice: str | dict[str, Any] | None = None  # "none" drops the tools; others: auto
    user: str | None = None


class OpenAIEmbeddingRequest(_Request):
    model: str = ""
    input: Any = None  # a string or a list of strings
    dimensions: int | None = None
    encoding_format: str | None = "float"  # "float" | "base64"


# --- Automatic1111's /sdapi/v1 (fields as its API declares them; unknown ones are ignored) ---


class A1111Txt2ImgRequest(_Request):
    # Strict: A1111's FastAPI models are lax, but a 0.0 read as "false" hides a client's bug.
    model_config = ConfigDict(extra="ignore", populate_by_name=True, strict=True)

    prompt: str = ""
    negative_prompt: str = ""
    styles: list[str] | None = None  # A1111's saved styles: limner has none
    seed: int = -1
    subseed: int = -1
    subseed_strength: float = 0.0  # variation seeds: only 0
    seed_resize_from_h: int = -1
    seed_resize_from_w: int = -1
    sampler_name: str | None = None  # "Euler a", "DPM++ 2M", ... (GET /sdapi/v1/samplers)
    sampler_index: str | None = None  # the old name of sampler_name
    scheduler: str | None = None  # A1111 1.9+: "Automatic" or "Karras"
    batch_size: int = 1
    n_iter: int = 1
    steps: int = 50  # A1111's API default
    cfg_scale: float = 7.0
    width: int = 512
    height: int = 512
    restore_faces: bool | None = None  # only false
    tiling: bool | None = None  # only false
    denoising_strength: float | None = None  # the hires pass's (txt2img); img2img's strength
    enable_hr: bool = False  # the hires fix: only false
    override_settings: dict[str, Any] | None = None  # only sd_model_checkpoint is read
    override_settings_restore_afterwards: bool = True
    script_name: str | None = None  # A1111 scripts: none
    alwayson_scripts: dict[str, Any] | None = None  # extensions (ADetailer, ...): none
    send_images: bool = True
    save_images: bool = False  # limner keeps no pictures; ignored
    force_task_id: str | None = None  # the job's id for /sdapi/v1/progress?id_task=


class A1111Img2ImgRequest(A1111Txt2ImgRequest):
    init_images: list[str] = Field(default_factory=list)  # base64 or data: URIs; the first
    resize_mode: int = 0  # 0 resize, 1 crop and resize, 2 resize and fill, 3 = 0
    denoising_strength: float | None = 0.75
    image_cfg_scale: float | None = None  # instruct-pix2pix only: ignored
    mask: str | None = None  # white (or transparent) = repaint
    mask_blur: int | None = None  # sets mask_blur_x and mask_blur_y
    mask_blur_x: int = 4
    mask_blur_y: int = 4
    inpainting_fill: int = 0  # 0 fill, 1 original (2 latent noise, 3 latent nothing: refused)
    inpaint_full_res: bool = True  # "only masked": draw the masked area at full size
    inpaint_full_res_padding: int = 0
    inpainting_mask_invert: int = 0  # 1: black repaints
    initial_noise_multiplier: float | None = None  # only 1
    include_init_images: bool = False


class A1111PngInfoRequest(_Request):
    image: str = ""  # base64 PNG, a data: URI allowed
