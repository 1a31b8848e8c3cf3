"""SigLIP 2 NaFlex models: transformers' `models/siglip2` classes on siglip_fast's fused encoder.

What differs from SigLIP (siglip_fast.modeling), everything else being reused as is:
- patches come pre-flattened, `pixel_values` (B, N, C·p·p) with N = max_num_patches, embedded by a Linear; the
  learned 16 x 16 position table is resized to each image's patch grid `spatial_shapes` (B, 2) (bilinear,
  antialiased, exactly transformers' weights) and padded to N; on the Triton backend the position add is the fused
  linear's residual epilogue;
- `pixel_attention_mask` (B, N) (1 = a real patch) is the key mask of every encoder attention (the fused kernel
  skips padding keys) and of the MAP head;
- `Siglip2ForImageClassification` averages only the real patches.
The text tower is SigLIP's. Module names and parameter shapes are transformers' (identical `state_dict` keys).
"""

from __future__ import annotations

import torch
from torch import nn

from . import ops
from .configuration_siglip2 import Siglip2Config, Siglip2TextConfig, Siglip2VisionConfig
from .inference import InferenceRunner, StaticInput
from .modeling import (
    SiglipEncoder,
    SiglipForImageClassification,
    SiglipModel,
    SiglipMultiheadAttentionPoolingHead,
    SiglipPreTrainedModel,
    SiglipTextModel,
    _check_device,
    _check_no_dropout,
    _describe,
    _fan_in,
    _flag,
    _is_meta_init,
    _return,
)
from .outputs import BaseModelOutputWithPooling, ImageClassifierOutput, SiglipOutput


def resize_positional_embeddings(table: torch.Tensor, spatial_shapes: torch.Tensor, max_length: int) -> torch.Tensor:
    """The (side, side, D) position table resized to each image's (h, w) patch grid, padded to max_length positions.

    Computes what `F.interpolate(mode="bilinear", align_corners=False, antialias=True)` per image computes, with
    transformers' explicit per-axis weights (same float32 operations, same result), batched and without host syncs
    (so a CUDA graph can capture it). Padding positions take position (0, 0), as transformers'. → (B, max_length, D).
    """
    kind = spatial_shapes.device.type
    if kind in ("cpu", "cuda") and torch.is_autocast_enabled(kind):  # an interpolation, in fp32 as transformers'
        with torch.autocast(kind, enabled=False):
            return resize_positional_embeddings(table, spatial_shapes, max_length)
    side = table.shape[0]
    sizes = spatial_shapes.float()[:, None]  # (B, 1, 2)
    positions = torch.arange(max_length, device=spatial_shapes.device, dtype=torch.float32)[None, :, None]  # (1, L, 1)
    rows = torch.div(positions, sizes[..., 1:], rounding_mode="floor")
    index = torch.cat([rows, positions - rows * sizes[..., 1:]], dim=-1)  # (B, L, 2): (row, col) of each token
    index = index * (positions < sizes.prod(-1, keepdim=True))
    scale = side / sizes  # (B, 1, 2)
    support = scale.clamp(min=1)
    center = (index + 0.5) * scale - 0.5
    source = torch.arange(side, device=spatial_shapes.device, dtype=torch.float32)
    weights = (1 - (source - center[..., None]).abs_().div_(support[..., None])).clamp_(min=0)  # (B, L, 2, side)
    weights = weights / weights.sum(-1, keepdim=True)
    weights = (weights[..., 0, :, None] * weights[..., 1, None, :]).flatten(-2)  # (B, L, side*side)
    flat = table.reshape(-1, table.shape[-1])  # (side*side, D)
    return (weights.to(flat.device) @ flat.float()).to(table.dtype)


class Siglip2VisionEmbeddings(nn.Module):
    def __init__(self, config: Siglip2VisionConfig):
        super().__init__()
        self.patch_size = config.patch_size
        self.patch_embedding = nn.Linear(config.patch_dim, config.hidden_size)
        self.num_patches = config.num_patches
        self.position_embedding_size = config.position_embedding_size
        self.position_embedding = nn.Embedding(config.num_patches, config.hidden_size)

    def forward(self, pixel_values: torch.Tensor, spatial_shapes: torch.Tensor, backend: str) -> torch.Tensor:
        """pixel_values (B, N, C·p·p), spatial_shapes (B, 2) → patch_embedding(pixels) + resized positions (B, N, D)."""
        w = self.patch_embedding.weight
        s = self.position_embedding_size
        positions = resize_positional_embeddings(self.position_embedding.weight.reshape(s, s, -1), spatial_shapes,
                                                 pixel_values.shape[1])  # (B, N, D)
        return ops.linear(pixel_values.to(w.dtype), w, self.patch_embedding.bias, backend=backend, residual=positions)


class Siglip2MultiheadAttentionPoolingHead(SiglipMultiheadAttentionPoolingHead):
    """SigLIP's MAP head whose probe attends to the real patches only (`attention_mask` (B, N), 1 = attend)."""

    def forward(self, h: torch.Tensor, attention_mask: torch.Tensor | None, backend: str) -> torch.Tensor:
        B, N, D = h.shape
        H, d = self.num_heads, D // self.num_heads
        w, b = self.attention.in_proj_weight, self.attention.in_proj_bias
        q = torch.nn.functional.linear(self.probe, w[:D], b[:D]).view(1, 1, H, d).expand(B, 1, H, d)
        k, v = ops.linear(h, w[D:], b[D:], backend=backend).view(B, N, 2, H, d).unbind(2)  # (B, N, H, d)
        a, _ = ops.attention(q, k, v, attention_mask, scale=d**-0.5, backend=backend)  # (B, 1, H, d)
        a = ops.linear(a.reshape(B, 1, D), self.attention.out_proj.weight, self.attention.out_proj.bias,
                       backend=backend)
        x = ops.layer_norm(a, self.layernorm.weight, self.layernorm.bias, self.eps, backend=backend)
        return self.mlp(x, a, backend)[:, 0]  # (B, D)


class Siglip2PreTrainedModel(SiglipPreTrainedModel):
    """Backend switch, gradient checkpointing, loading and initialisation for the SigLIP 2 classes (loading is
    SigLIP's: `SiglipModel.from_pretrained`'s arguments, the class attributes saying which keys of a dual-model
    checkpoint a tower skips)."""

    config_class = Siglip2Config

    @torch.no_grad()
    def init_weights(self):
        """Random initialisation as transformers' `Siglip2PreTrainedModel._init_weights`."""
        super().init_weights()
        for module in self.modules():
            if isinstance(module, Siglip2VisionEmbeddings):
                emb = module.position_embedding.weight
                nn.init.normal_(emb, std=emb.shape[1] ** -0.5)
                nn.init.trunc_normal_(module.patch_embedding.weight, std=_fan_in(module.patch_embedding.weight) ** -0.5)
                nn.init.zeros_(module.patch_embedding.bias)
        return self


class Siglip2TextModel(Siglip2PreTrainedModel, SiglipTextModel):
    """The text tower: SigLIP's (tokens + positions → encoder → final LN → last token → head)."""

    config_class = Siglip2TextConfig


def _check_mask_matches_shapes(mask: torch.Tensor, spatial_shapes: torch.Tensor) -> None:
    """Each image's real patches (mask != 0) are its first rows · cols patches, as the image processor lays them out:
    a mask that says otherwise (more or fewer real patches than the grid, or real patches after padding) would give
    the patches positions of another grid. One host read, with the spatial_shapes checks before it."""
    real = spatial_shapes.to(mask.device).prod(-1)  # (B,)
    expected = torch.arange(mask.shape[1], device=mask.device)[None] < real[:, None]  # (B, N)
    keep = mask != 0
    if torch.equal(keep, expected):
        return
    i = int((keep != expected).any(-1).nonzero()[0, 0])
    h, w = spatial_shapes[i].tolist()
    count = int(keep[i].sum())
    got = (f"{count} real patches" if count != h * w else
           f"its {count} real patches not first (padding at index {int((~keep[i]).nonzero()[0, 0])})")
    raise ValueError(f"pixel_attention_mask disagrees with spatial_shapes for image {i}: spatial_shapes[{i}] = "
                     f"({h}, {w}) says {h * w} real patches, first, then padding; pixel_attention_mask[{i}] has "
                     f"{got} (pass the image processor's mask and shapes together)")


class Siglip2VisionModel(Siglip2PreTrainedModel):
    """NaFlex vision tower: patch Linear + resized positions → pre-LN encoder (padding patches masked as keys) →
    post LN → masked MAP head (when vision_use_head).

    Inputs as the image processor returns them: `pixel_values` (B, N, C·p·p) float, `pixel_attention_mask` (B, N)
    (1 = real patch; None = all real), `spatial_shapes` (B, 2) the (rows, cols) patch grid of each image."""

    config_class = Siglip2VisionConfig
    base_model_prefix = "vision_model"
    main_input_name = "pixel_values"
    _keys_of_other_parts = ("text_model.", "logit_scale", "logit_bias", "classifier.")

    def __init__(self, config: Siglip2VisionConfig, backend: str = "auto"):
        super().__init__(config, backend)
        self.embeddings = Siglip2VisionEmbeddings(config)
        self.encoder = SiglipEncoder(config)
        self.post_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.use_head = config.vision_use_head
        if self.use_head:
            self.head = Siglip2MultiheadAttentionPoolingHead(config)
        if not _is_meta_init():
            self.init_weights()

    def _check_inputs(self, pixel_values, pixel_attention_mask, spatial_shapes):
        if pixel_values is None:
            raise ValueError("You have to specify pixel_values")
        dim = self.config.patch_dim
        if not isinstance(pixel_values, torch.Tensor) or not pixel_values.is_floating_point() \
                or pixel_values.ndim != 3 or pixel_values.shape[-1] != dim:
            raise ValueError(f"pixel_values must be a float tensor of shape (B, max_num_patches, {dim}) (flattened "
                             f"patches, as Siglip2ImageProcessor returns), got {_describe(pixel_values)}")
        B, N, _ = pixel_values.shape
        device = self.embeddings.patch_embedding.weight.device
        _check_device("pixel_values", pixel_values, device)
        if not isinstance(spatial_shapes, torch.Tensor) or spatial_shapes.is_floating_point() \
                or spatial_shapes.is_complex() or tuple(spatial_shapes.shape) != (B, 2):
            raise ValueError(f"spatial_shapes must be an integer tensor of shape ({B}, 2) (each image's patch rows "
                             f"and columns), got {_describe(spatial_shapes)}")
        if spatial_shapes.device.type == "meta":
            raise ValueError("spatial_shapes must hold values (each image's patch grid sizes its position table and "
                             "is checked against pixel_attention_mask), got a tensor on the meta device")
        if bool((spatial_shapes <= 0).any()) or bool((spatial_shapes.prod(-1) > N).any()):
            raise ValueError(f"spatial_shapes must be positive with rows * cols <= max_num_patches ({N}), got "
                             f"{spatial_shapes.tolist()}")
        if pixel_attention_mask is not None:
            if not isinstance(pixel_attention_mask, torch.Tensor) or tuple(pixel_attention_mask.shape) != (B, N):
                raise ValueError(f"pixel_attention_mask must have shape ({B}, {N}) like pixel_values' patches, got "
                                 f"{_describe(pixel_attention_mask)}")
            _check_device("pixel_attention_mask", pixel_attention_mask, device)
            if pixel_attention_mask.dtype.is_complex:
                raise TypeError(f"pixel_attention_mask must be bool, integer or float (1 = a real patch), got "
                                f"{_describe(pixel_attention_mask)}")
            if device.type != "meta":
                _check_mask_matches_shapes(pixel_attention_mask, spatial_shapes)

    def forward(self, pixel_values=None, pixel_attention_mask=None, spatial_shapes=None, output_attentions=None,
                output_hidden_states=None, return_dict=None) -> BaseModelOutputWithPooling:
        self._check_inputs(pixel_values, pixel_attention_mask, spatial_shapes)
        config = self.config
        out = self._encode(pixel_values, pixel_attention_mask, spatial_shapes.to(pixel_values.device),
                           bool(_flag(output_attentions, config, "output_attentions")),
                           bool(_flag(output_hidden_states, config, "output_hidden_states")))
        return _return(out, _flag(return_dict, config, "return_dict", True))

    def _encode(self, pixel_values, pixel_attention_mask, spatial_shapes, output_attentions: bool,
                output_hidden_states: bool) -> BaseModelOutputWithPooling:
        """The forward without input checks or host syncs (so a CUDA graph can capture it)."""
        h = self.embeddings(pixel_values, spatial_shapes, self.backend)  # (B, N, D)
        enc = self.encoder(h, pixel_attention_mask, self.post_layernorm, self.backend, output_hidden_states,
                           output_attentions)
        last = enc.last_hidden_state  # (B, N, D), after post_layernorm
        pooled = self.head(last, pixel_attention_mask, self.backend) if self.use_head else None  # (B, D)
        return BaseModelOutputWithPooling(last_hidden_state=last, pooler_output=pooled,
                                          hidden_states=enc.hidden_states, attentions=enc.attentions)

    def compile_for_inference(self, batch_size: int, *, max_num_patches: int | None = None,
                              keep_last_hidden_state: bool = False, cuda_graph: bool | None = None,
                              warmup: int = 2) -> InferenceRunner:
        """The vision forward at a fixed (batch_size, max_num_patches), captured in a CUDA graph (see
        siglip_fast.inference; the generic runner, with three static inputs).

        `runner(pixel_values=..., pixel_attention_mask=..., spatial_shapes=...)` (as Siglip2ImageProcessor returns
        them at that max_num_patches, any number of images) returns `pooler_output` (and `last_hidden_state` if
        kept). Padding rows of a partial batch are one-patch images (all patches attended), which never change the
        real rows. `max_num_patches` defaults to the config's `num_patches`. Inputs are not re-validated per call
        beyond their shapes: pass what the image processor returns.
        """
        _check_no_dropout(self)
        n = self.config.num_patches if max_num_patches is None else max_num_patches
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"max_num_patches must be a positive int, got {max_num_patches!r}")
        inputs = [
            StaticInput("pixel_values", (n, self.config.patch_dim), self.dtype, "float", 0),
            StaticInput("pixel_attention_mask", (n,), torch.long, "mask", 1),
            StaticInput("spatial_shapes", (2,), torch.long, "integer", 1),
        ]

        def run(buffers):
            out = self._encode(buffers["pixel_values"], buffers["pixel_attention_mask"], buffers["spatial_shapes"],
                               False, False)
            return out.last_hidden_state, out.pooler_output

        return InferenceRunner(run, inputs, batch_size, self.device, keep_last_hidden_state=keep_last_hidden_state,
                               cuda_graph=cuda_graph, warmup=warmup)


class Siglip2Model(Siglip2PreTrainedModel, SiglipModel):
    """The NaFlex dual encoder: SigLIP's text tower, the NaFlex vision tower, logits = exp(t)·<text, image> + b."""

    config_class = Siglip2Config

    def __init__(self, config: Siglip2Config, backend: str = "auto"):
        SiglipPreTrainedModel.__init__(self, config, backend)
        self.text_model = Siglip2TextModel(config.text_config, backend)
        self.vision_model = Siglip2VisionModel(config.vision_config, backend)
        self.logit_scale = nn.Parameter(torch.zeros(1))
        self.logit_bias = nn.Parameter(torch.zeros(1))

    def get_image_features(self, pixel_values=None, pixel_attention_mask=None, spatial_shapes=None,
                           output_attentions=None, output_hidden_states=None,
                           return_dict=None) -> BaseModelOutputWithPooling:
        """The vision tower's output; `.pooler_output` holds the (un-normalised) image embeddings (transformers v5)."""
        out = self.vision_model(pixel_values, pixel_attention_mask, spatial_shapes,
                                *self._flags(output_attentions, output_hidden_states), return_dict=True)
        return _return(out, _flag(return_dict, self.config, "return_dict", True))

    def forward(self, input_ids=None, pixel_values=None, pixel_attention_mask=None, spatial_shapes=None,
                attention_mask=None, position_ids=None, return_loss=None, output_attentions=None,
                output_hidden_states=None, return_dict=None) -> SiglipOutput:
        output_attentions, output_hidden_states = self._flags(output_attentions, output_hidden_states)
        vision = self.vision_model(pixel_values, pixel_attention_mask, spatial_shapes, output_attentions,
                                   output_hidden_states, return_dict=True)
        text = self.text_model(input_ids, attention_mask, position_ids, output_attentions, output_hidden_states,
                               return_dict=True)
        return _return(self._scores(text, vision, return_loss), _flag(return_dict, self.config, "return_dict", True))


class Siglip2ForImageClassification(Siglip2PreTrainedModel, SiglipForImageClassification):
    """The NaFlex vision tower, averaged over the real patches, and a linear classifier (`config.num_labels`)."""

    config_class = Siglip2Config
    main_input_name = "pixel_values"

    def __init__(self, config: Siglip2Config, backend: str = "auto"):
        SiglipPreTrainedModel.__init__(self, config, backend)
        self.num_labels = config.num_labels
        self.vision_model = Siglip2VisionModel(config.vision_config, backend)
        hidden = config.vision_config.hidden_size
        self.classifier = nn.Linear(hidden, config.num_labels) if config.num_labels > 0 else nn.Identity()
        if not _is_meta_init():
            self.init_weights()

    def forward(self, pixel_values=None, pixel_attention_mask=None, spatial_shapes=None, labels=None,
                output_attentions=None, output_hidden_states=None, return_dict=None) -> ImageClassifierOutput:
        out = self.vision_model(pixel_values, pixel_attention_mask, spatial_shapes,
                                *SiglipModel._flags(self, output_attentions, output_hidden_states), return_dict=True)
        last = out.last_hidden_state  # (B, N, D)
        if pixel_attention_mask is not None:  # the real patches' mean: padding states never enter (not even as 0·NaN)
            keep = (pixel_attention_mask != 0)[..., None]  # (B, N, 1); each row has >= 1 (checked against the shapes)
            pooled = last.masked_fill(~keep, 0).sum(dim=1) / keep.sum(dim=1).to(last.dtype)
        else:
            pooled = torch.mean(last, dim=1)
        logits = self.classifier(pooled)  # (B, num_labels)
        loss = None if labels is None else self._loss(labels, logits)
        result = ImageClassifierOutput(loss=loss, logits=logits, hidden_states=out.hidden_states,
                                       attentions=out.attentions)
        return _return(result, _flag(return_dict, self.config, "return_dict", True))


_MODEL_TYPES = {
    "siglip": SiglipModel, "siglip_text_model": SiglipTextModel,
    "siglip2": Siglip2Model, "siglip2_text_model": Siglip2TextModel, "siglip2_vision_model": Siglip2VisionModel,
}


def load_model(path_or_id, **kwargs) -> SiglipPreTrainedModel:
    """The model of any SigLIP / SigLIP 2 checkpoint directory, by its config's model_type (and `architectures`):
    "siglip" → SiglipModel (SigLIP and fixed-resolution SigLIP 2), "siglip2" → Siglip2Model (NaFlex), the tower
    types → their tower, a classifier (`architectures` naming one) → the classification class. Keyword arguments as
    `SiglipModel.from_pretrained` (dtype, device, backend)."""
    import os

    from .files import read_json_file, resolve_pretrained_dir
    from .modeling import SiglipVisionModel

    directory = resolve_pretrained_dir(path_or_id, what="load_model")
    path = os.path.join(directory, "config.json")
    if not os.path.isfile(path):
        raise ValueError(f"load_model: no config.json in {os.fspath(path_or_id)!r}")
    config = read_json_file(path, "config file")  # not UTF-8, not JSON, not an object: a ValueError naming it
    model_type, architectures = config.get("model_type"), config.get("architectures") or []
    classes = {**_MODEL_TYPES, "siglip_vision_model": SiglipVisionModel}
    if not isinstance(model_type, str) or model_type not in classes:
        raise ValueError(f"config file {path}: model_type {model_type!r} is not a SigLIP / SigLIP 2 model; known: "
                         f"{sorted(classes)}")
    if not isinstance(architectures, list):
        raise ValueError(f"config file {path}: architectures must be a list of class names, got "
                         f"{architectures!r}")
    cls = classes[model_type]
    if model_type == "siglip" and "SiglipForImageClassification" in architectures:
        cls = SiglipForImageClassification
    elif model_type == "siglip2" and "Siglip2ForImageClassification" in architectures:
        cls = Siglip2ForImageClassification
    return cls.from_pretrained(directory, **kwargs)
