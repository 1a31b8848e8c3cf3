"""The SigLIP model family: embeddings, attention, MLP, encoder layer, MAP head, the two towers, the dual model.

Module names and parameter shapes are transformers' (so `state_dict` keys are identical); every fusable op goes
through `siglip_fast.ops`, where the `backend` switch picks the Triton kernel or the eager reference. The eager
backend computes exactly what transformers computes.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from . import ops
from .checkpoint import PretrainedMixin
from .configuration import SiglipConfig, SiglipTextConfig, SiglipVisionConfig
from .inference import InferenceRunner, StaticInput
from .outputs import BaseModelOutput, BaseModelOutputWithPooling, ImageClassifierOutput, SiglipOutput


class SiglipVisionEmbeddings(nn.Module):
    def __init__(self, config: SiglipVisionConfig):
        super().__init__()
        self.patch_size = config.patch_size
        self.patch_embedding = nn.Conv2d(config.num_channels, config.hidden_size, config.patch_size, config.patch_size)
        self.num_positions = config.num_patches
        self.position_embedding = nn.Embedding(self.num_positions, config.hidden_size)
        self.register_buffer("position_ids", torch.arange(self.num_positions)[None], persistent=False)

    def position_table(self, height: int, width: int, interpolate: bool) -> torch.Tensor:
        """The (N, D) position table for an image of (height, width) pixels, bicubic-resized when asked."""
        table = self.position_embedding.weight  # (N0, D)
        grid_h, grid_w = height // self.patch_size, width // self.patch_size
        if not interpolate or (grid_h * grid_w == self.num_positions and height == width):
            return table
        side, dim = math.isqrt(self.num_positions), table.shape[-1]
        grid = table.reshape(1, side, side, dim).permute(0, 3, 1, 2)  # (1, D, s, s)
        grid = F.interpolate(grid, size=(grid_h, grid_w), mode="bicubic", align_corners=False)
        return grid.permute(0, 2, 3, 1).reshape(grid_h * grid_w, dim)  # (N, D)

    def forward(self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool, backend: str) -> torch.Tensor:
        if not isinstance(pixel_values, torch.Tensor):
            raise TypeError(f"pixel_values must be a torch.Tensor, got {type(pixel_values).__name__}")
        if pixel_values.ndim != 4 or pixel_values.shape[1] != self.patch_embedding.in_channels:
            raise ValueError(
                f"pixel_values must have shape (B, {self.patch_embedding.in_channels}, H, W), "
                f"got {tuple(pixel_values.shape)}"
            )
        height, width = pixel_values.shape[-2:]
        table = self.position_table(height, width, interpolate_pos_encoding)
        w, b = self.patch_embedding.weight, self.patch_embedding.bias
        return ops.patch_embed(pixel_values, w, b, table, self.patch_size, backend=backend)  # (B, N, D)


class SiglipTextEmbeddings(nn.Module):
    def __init__(self, config: SiglipTextConfig):
        super().__init__()
        self.token_embedding = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position_embedding = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.register_buffer("position_ids", torch.arange(config.max_position_embeddings)[None], persistent=False)

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor | None) -> torch.Tensor:
        seq_len, max_len = input_ids.shape[-1], self.position_embedding.num_embeddings
        if seq_len > max_len:
            raise ValueError(
                f"Sequence length must be less than max_position_embeddings (got `sequence length`: {seq_len} and "
                f"max_position_embeddings: {max_len}); tokenize with truncation=True, max_length={max_len}"
            )
        if position_ids is None:
            position_ids = self.position_ids[:, :seq_len]
        return self.token_embedding(input_ids) + self.position_embedding(position_ids)  # (B, L, D)


class SiglipAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.scale = self.head_dim**-0.5
        self.dropout = config.attention_dropout
        d = config.hidden_size
        self.k_proj, self.v_proj, self.q_proj, self.out_proj = (nn.Linear(d, d) for _ in range(4))

    def forward(self, x, attention_mask, backend: str, need_probs: bool):
        """x = LN1(h) (B, N, D) → (out_proj(attention(x)) (B, N, D), probs or None); the caller adds the residual."""
        B, N, D = x.shape
        if ops.resolve(backend, x) == "triton":
            # One QKV GEMM; q, k and v are strided views of its output, read by the kernel without copies.
            w = torch.cat([self.q_proj.weight, self.k_proj.weight, self.v_proj.weight])  # (3D, D)
            b = torch.cat([self.q_proj.bias, self.k_proj.bias, self.v_proj.bias])
            qkv = ops.linear(x, w, b, backend=backend).view(B, N, 3, self.num_heads, self.head_dim)
            q, k, v = qkv.unbind(2)  # each (B, N, H, d)
        else:
            q, k, v = (p(x).view(B, N, self.num_heads, self.head_dim) for p in (self.q_proj, self.k_proj, self.v_proj))
        dropout = self.dropout if self.training else 0.0
        out, probs = ops.attention(q, k, v, attention_mask, scale=self.scale, backend=backend, dropout_p=dropout,
                                   need_probs=need_probs)  # (B, N, H, d)
        return ops.linear(out.reshape(B, N, D), self.out_proj.weight, self.out_proj.bias, backend=backend), probs


class SiglipMLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, x, residual, backend: str):
        """fc2(gelu_tanh(fc1(x))) (+ residual): bias/GELU (and the residual) in the GEMM epilogues on Triton."""
        x = ops.linear(x, self.fc1.weight, self.fc1.bias, backend=backend, activation="gelu_tanh")
        return ops.linear(x, self.fc2.weight, self.fc2.bias, backend=backend, residual=residual)


class SiglipEncoderLayer(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.eps = config.layer_norm_eps
        self.layer_norm1 = nn.LayerNorm(config.hidden_size, eps=self.eps)
        self.self_attn = SiglipAttention(config)
        self.layer_norm2 = nn.LayerNorm(config.hidden_size, eps=self.eps)
        self.mlp = SiglipMLP(config)

    def forward(self, h, x, attention_mask, next_norm: nn.LayerNorm, backend: str, need_probs: bool):
        """Pre-LN block, h = h + attn(LN1(h)); h = h + mlp(LN2(h)), with each residual add fused into the LayerNorm
        that follows it: x = LN1(h) comes in (the caller fused it with the add that made h), and the layer returns
        (h, next_norm(h), probs), next_norm being the next layer's layer_norm1 or the tower's final norm."""
        a, probs = self.self_attn(x, attention_mask, backend, need_probs)
        x, h = ops.layer_norm(a, self.layer_norm2.weight, self.layer_norm2.bias, self.eps, backend=backend,
                              residual=h)  # h = h + a; x = LN2(h)
        m = self.mlp(x, None, backend)
        x, h = ops.layer_norm(m, next_norm.weight, next_norm.bias, next_norm.eps, backend=backend,
                              residual=h)  # h = h + m; x = next_norm(h)
        return h, x, probs


class SiglipEncoder(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.layers = nn.ModuleList(SiglipEncoderLayer(config) for _ in range(config.num_hidden_layers))
        self.gradient_checkpointing = False

    def forward(self, h, attention_mask, final_norm: nn.LayerNorm, backend: str, output_hidden_states: bool,
                output_attentions: bool) -> BaseModelOutput:
        """The layers, then `final_norm` (the tower's post LayerNorm, fused with the last residual add).

        Returns last_hidden_state = final_norm(encoder output), and, as transformers, hidden_states = the embeddings
        and each layer's output before any final norm."""
        hidden_states, attentions = ([h] if output_hidden_states else None), ([] if output_attentions else None)
        norms = [layer.layer_norm1 for layer in self.layers] + [final_norm]
        x = ops.layer_norm(h, norms[0].weight, norms[0].bias, norms[0].eps, backend=backend)  # (B, N, D)
        for layer, next_norm in zip(self.layers, norms[1:], strict=True):
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                h, x, probs = torch.utils.checkpoint.checkpoint(
                    layer, h, x, attention_mask, next_norm, backend, output_attentions, use_reentrant=False)
            else:
                h, x, probs = layer(h, x, attention_mask, next_norm, backend, output_attentions)
            if output_hidden_states:
                hidden_states.append(h)
            if output_attentions:
                attentions.append(probs)
        return BaseModelOutput(
            last_hidden_state=x,
            hidden_states=tuple(hidden_states) if output_hidden_states else None,
            attentions=tuple(attentions) if output_attentions else None,
        )


class _AttentionPoolParams(nn.Module):
    """The parameters of nn.MultiheadAttention under its key names (in_proj rows are [q; k; v])."""

    def __init__(self, dim: int):
        super().__init__()
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * dim))
        self.out_proj = nn.Linear(dim, dim)


class SiglipMultiheadAttentionPoolingHead(nn.Module):
    """MAP head: a learned probe attends over all tokens, then a + MLP(LN(a)) (no residual around attention)."""

    def __init__(self, config: SiglipVisionConfig):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.eps = config.layer_norm_eps
        self.probe = nn.Parameter(torch.randn(1, 1, config.hidden_size))
        self.attention = _AttentionPoolParams(config.hidden_size)
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=self.eps)
        self.mlp = SiglipMLP(config)

    def forward(self, h: torch.Tensor, backend: str) -> torch.Tensor:
        B, N, D = h.shape
        H, d = self.num_heads, D // self.num_heads
        w, b = self.attention.in_proj_weight, self.attention.in_proj_bias
        q = F.linear(self.probe, w[:D], b[:D]).view(1, 1, H, d).expand(B, 1, H, d)  # one query for the batch
        kv = ops.linear(h, w[D:], b[D:], backend=backend).view(B, N, 2, H, d)
        k, v = kv.unbind(2)  # (B, N, H, d)
        a, _ = ops.attention(q, k, v, scale=d**-0.5, backend=backend)  # (B, 1, H, d)
        a = ops.linear(a.reshape(B, 1, D), self.attention.out_proj.weight, self.attention.out_proj.bias,
                       backend=backend)
        x = ops.layer_norm(a, self.layernorm.weight, self.layernorm.bias, self.eps, backend=backend)
        return self.mlp(x, a, backend)[:, 0]  # (B, D)


class SiglipPreTrainedModel(PretrainedMixin, nn.Module):
    """Backend switch, gradient checkpointing and weight initialisation shared by every model class."""

    config_class = SiglipConfig

    def __init__(self, config, backend: str = "auto"):
        super().__init__()
        if not isinstance(config, self.config_class):
            raise TypeError(f"{type(self).__name__} needs a {self.config_class.__name__}, got {type(config).__name__}")
        self.config = config
        self.backend = ops.check_backend(backend)

    def set_backend(self, backend: str):
        """Switch every fusable op between 'auto', 'triton', 'eager' and 'sdpa' (see siglip_fast.ops)."""
        ops.check_backend(backend)
        for module in self.modules():
            if isinstance(module, SiglipPreTrainedModel):
                module.backend = backend
        return self

    def gradient_checkpointing_enable(self):
        for module in self.modules():
            if isinstance(module, SiglipEncoder):
                module.gradient_checkpointing = True
        return self

    def gradient_checkpointing_disable(self):
        for module in self.modules():
            if isinstance(module, SiglipEncoder):
                module.gradient_checkpointing = False
        return self

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @torch.no_grad()
    def init_weights(self):
        """Random initialisation as transformers' `_init_weights` (used when building from a config)."""
        factor = getattr(self.config, "initializer_factor", 1.0)
        for module in self.modules():
            if isinstance(module, SiglipVisionEmbeddings):
                nn.init.normal_(module.position_embedding.weight, std=module.position_embedding.weight.shape[1] ** -0.5)
                nn.init.trunc_normal_(module.patch_embedding.weight, std=_fan_in(module.patch_embedding.weight) ** -0.5)
                nn.init.zeros_(module.patch_embedding.bias)
            elif isinstance(module, SiglipTextEmbeddings):
                for emb in (module.token_embedding, module.position_embedding):
                    nn.init.normal_(emb.weight, std=emb.weight.shape[1] ** -0.5)
            elif isinstance(module, SiglipAttention):
                for p in (module.q_proj, module.k_proj, module.v_proj, module.out_proj):
                    nn.init.xavier_uniform_(p.weight)
                    nn.init.zeros_(p.bias)
            elif isinstance(module, SiglipMLP):
                for p in (module.fc1, module.fc2):
                    nn.init.xavier_uniform_(p.weight)
                    nn.init.normal_(p.bias, std=1e-6)
            elif isinstance(module, SiglipMultiheadAttentionPoolingHead):
                nn.init.xavier_uniform_(module.probe)
                nn.init.xavier_uniform_(module.attention.in_proj_weight)
                nn.init.zeros_(module.attention.in_proj_bias)
                nn.init.xavier_uniform_(module.attention.out_proj.weight)
                nn.init.zeros_(module.attention.out_proj.bias)
            elif isinstance(module, SiglipTextModel):
                nn.init.trunc_normal_(module.head.weight, std=_fan_in(module.head.weight) ** -0.5)
                nn.init.zeros_(module.head.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        if isinstance(self, SiglipModel):
            nn.init.zeros_(self.logit_scale)
            nn.init.zeros_(self.logit_bias)
        if isinstance(self, SiglipForImageClassification) and isinstance(self.classifier, nn.Linear):
            nn.init.normal_(self.classifier.weight, std=self.config.vision_config.hidden_size**-0.5 * factor)
            nn.init.zeros_(self.classifier.bias)
        return self


def _fan_in(weight: torch.Tensor) -> int:
    return weight[0].numel()


def _return(output, return_dict):
    return output if return_dict is None or return_dict else output.to_tuple()


class SiglipTextModel(SiglipPreTrainedModel):
    """Text tower: tokens + positions → pre-LN encoder → final LN → last token → head. Inputs are not masked
    unless an attention_mask is given (the official checkpoints were trained without one)."""

    config_class = SiglipTextConfig
    base_model_prefix = "text_model"

    def __init__(self, config: SiglipTextConfig, backend: str = "auto"):
        super().__init__(config, backend)
        self.embeddings = SiglipTextEmbeddings(config)
        self.encoder = SiglipEncoder(config)
        self.final_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.head = nn.Linear(config.hidden_size, config.projection_size)
        if not _is_meta_init():
            self.init_weights()

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, output_attentions=None,
                output_hidden_states=None, return_dict=None) -> BaseModelOutputWithPooling:
        if input_ids is None:
            raise ValueError("You have to specify input_ids")
        if not isinstance(input_ids, torch.Tensor) or input_ids.dtype.is_floating_point or input_ids.ndim < 1:
            raise TypeError(f"input_ids must be an integer tensor of shape (B, L), got {_describe(input_ids)}")
        input_ids = input_ids.view(-1, input_ids.shape[-1])  # (B, L)
        B, L = input_ids.shape
        if attention_mask is not None:
            if tuple(attention_mask.shape) != (B, L):
                raise ValueError(f"attention_mask must have shape {(B, L)} like input_ids, got "
                                 f"{tuple(attention_mask.shape)}")
            if bool(attention_mask.all()):
                attention_mask = None  # nothing masked: the unmasked kernel path, same result
        out = self._encode(input_ids, attention_mask, position_ids, bool(output_attentions), bool(output_hidden_states))
        return _return(out, return_dict)

    def _encode(self, input_ids, attention_mask, position_ids, output_attentions: bool, output_hidden_states: bool):
        """The forward without input checks or data-dependent branches (so a CUDA graph can capture it)."""
        h = self.embeddings(input_ids, position_ids)  # (B, L, D)
        enc = self.encoder(h, attention_mask, self.final_layer_norm, self.backend, output_hidden_states,
                           output_attentions)
        last = enc.last_hidden_state  # (B, L, D), after final_layer_norm
        pooled = self.head(last[:, -1, :])  # (B, P): the last position, which may be a pad token, as trained
        return BaseModelOutputWithPooling(last_hidden_state=last, pooler_output=pooled,
                                          hidden_states=enc.hidden_states, attentions=enc.attentions)

    def compile_for_inference(self, batch_size: int, *, seq_len: int | None = None, with_attention_mask: bool = False,
                              keep_last_hidden_state: bool = False, cuda_graph: bool | None = None,
                              warmup: int = 2) -> InferenceRunner:
        """The text forward at a fixed (batch_size, seq_len), captured in a CUDA graph (see siglip_fast.inference).

        `runner(input_ids=ids)` (any number of rows; seq_len columns, default max_position_embeddings) returns
        `pooler_output` (and `last_hidden_state` if kept). Build `with_attention_mask=True` to pass masks; rows
        without one attend to every token. `cuda_graph=None` captures on CUDA and runs directly elsewhere.
        """
        _check_no_dropout(self)
        max_len = self.config.max_position_embeddings
        seq_len = max_len if seq_len is None else seq_len
        if isinstance(seq_len, bool) or not isinstance(seq_len, int) or not 1 <= seq_len <= max_len:
            raise ValueError(f"seq_len must be an int in [1, max_position_embeddings={max_len}], got {seq_len!r}")
        inputs = [StaticInput("input_ids", (seq_len,), torch.long, "integer", 0)]
        if with_attention_mask:
            inputs.append(StaticInput("attention_mask", (seq_len,), torch.long, "mask", 1))

        def run(buffers):
            out = self._encode(buffers["input_ids"], buffers.get("attention_mask"), None, False, False)
            return out.last_hidden_state, out.pooler_output

        return InferenceRunner(run, inputs, batch_size, self.device, keep_last_hidden_state=keep_last_hidden_state,
                               cuda_graph=cuda_graph, warmup=warmup, optional=("attention_mask",))


class SiglipVisionModel(SiglipPreTrainedModel):
    """Vision tower: patch embedding + positions → pre-LN encoder → post LN → MAP head (when vision_use_head).
    `pixel_values` may be float (normalised, as the image processor returns) or uint8 (raw 0..255 pixels; the
    (x - 127.5) / 127.5 normalisation is applied inside the patch embedding)."""

    config_class = SiglipVisionConfig
    base_model_prefix = "vision_model"
    main_input_name = "pixel_values"

    def __init__(self, config: SiglipVisionConfig, backend: str = "auto"):
        super().__init__(config, backend)
        self.embeddings = SiglipVisionEmbeddings(config)
        self.encoder = SiglipEncoder(config)
        self.post_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.use_head = config.vision_use_head
        if self.use_head:
            self.head = SiglipMultiheadAttentionPoolingHead(config)
        if not _is_meta_init():
            self.init_weights()

    def forward(self, pixel_values=None, interpolate_pos_encoding=False, output_attentions=None,
                output_hidden_states=None, return_dict=None) -> BaseModelOutputWithPooling:
        if pixel_values is None:
            raise ValueError("You have to specify pixel_values")
        h = self.embeddings(pixel_values, bool(interpolate_pos_encoding), self.backend)  # (B, N, D)
        enc = self.encoder(h, None, self.post_layernorm, self.backend, bool(output_hidden_states),
                           bool(output_attentions))
        last = enc.last_hidden_state  # (B, N, D), after post_layernorm
        pooled = self.head(last, self.backend) if self.use_head else None  # (B, D)
        out = BaseModelOutputWithPooling(last_hidden_state=last, pooler_output=pooled,
                                         hidden_states=enc.hidden_states, attentions=enc.attentions)
        return _return(out, return_dict)

    def compile_for_inference(self, batch_size: int, *, image_size: int | tuple[int, int] | None = None,
                              pixel_dtype: torch.dtype | None = None, interpolate_pos_encoding: bool = False,
                              keep_last_hidden_state: bool = False, cuda_graph: bool | None = None,
                              warmup: int = 2) -> InferenceRunner:
        """The vision forward at a fixed (batch_size, C, H, W), captured in a CUDA graph (see siglip_fast.inference).

        `runner(pixel_values=x)` (any number of images) returns `pooler_output` (and `last_hidden_state` if kept, or
        when the tower has no head). `pixel_dtype=torch.uint8` takes raw 0..255 pixels (normalised in the patch
        embedding); the default, the model's dtype, takes normalised float pixels of any float dtype.
        `cuda_graph=None` captures on CUDA and runs directly elsewhere.
        """
        _check_no_dropout(self)
        size = self.config.image_size if image_size is None else image_size
        hw = (size, size) if isinstance(size, int) and not isinstance(size, bool) else size
        if not (isinstance(hw, tuple) and len(hw) == 2 and all(isinstance(v, int) and not isinstance(v, bool)
                                                               and v >= self.config.patch_size for v in hw)):
            raise ValueError(f"image_size must be an int or an (H, W) tuple of ints >= patch_size "
                             f"{self.config.patch_size}, got {image_size!r}")
        pixel_dtype = self.dtype if pixel_dtype is None else pixel_dtype
        if not isinstance(pixel_dtype, torch.dtype) or not (pixel_dtype.is_floating_point
                                                            or pixel_dtype == torch.uint8):
            raise TypeError(f"pixel_dtype must be torch.uint8 or a float dtype, got {pixel_dtype!r}")
        kind = "uint8" if pixel_dtype == torch.uint8 else "float"
        inputs = [StaticInput("pixel_values", (self.config.num_channels, *hw), pixel_dtype, kind, 0)]

        def run(buffers):
            out = self(pixel_values=buffers["pixel_values"], interpolate_pos_encoding=interpolate_pos_encoding)
            return out.last_hidden_state, out.pooler_output

        return InferenceRunner(run, inputs, batch_size, self.device, keep_last_hidden_state=keep_last_hidden_state,
                               cuda_graph=cuda_graph, warmup=warmup)


class SiglipModel(SiglipPreTrainedModel):
    """The dual encoder: both towers, L2-normalised embeddings, logits = exp(t)·<text, image> + b."""

    config_class = SiglipConfig

    def __init__(self, config: SiglipConfig, backend: str = "auto"):
        super().__init__(config, backend)
        self.text_model = SiglipTextModel(config.text_config, backend)
        self.vision_model = SiglipVisionModel(config.vision_config, backend)
        self.logit_scale = nn.Parameter(torch.zeros(1))
        self.logit_bias = nn.Parameter(torch.zeros(1))

    def get_text_features(self, input_ids=None, attention_mask=None, position_ids=None, output_attentions=None,
                          output_hidden_states=None, return_dict=None) -> BaseModelOutputWithPooling:
        """The text tower's output; `.pooler_output` holds the (un-normalised) text embeddings (transformers v5)."""
        return self.text_model(input_ids, attention_mask, position_ids, output_attentions, output_hidden_states,
                               return_dict)

    def get_image_features(self, pixel_values=None, interpolate_pos_encoding=False, output_attentions=None,
                           output_hidden_states=None, return_dict=None) -> BaseModelOutputWithPooling:
        """The vision tower's output; `.pooler_output` holds the (un-normalised) image embeddings (transformers v5)."""
        return self.vision_model(pixel_values, interpolate_pos_encoding, output_attentions, output_hidden_states,
                                 return_dict)

    def forward(self, input_ids=None, pixel_values=None, attention_mask=None, position_ids=None, return_loss=None,
                interpolate_pos_encoding=False, output_attentions=None, output_hidden_states=None,
                return_dict=None) -> SiglipOutput:
        vision = self.vision_model(pixel_values, interpolate_pos_encoding, output_attentions, output_hidden_states)
        text = self.text_model(input_ids, attention_mask, position_ids, output_attentions, output_hidden_states)
        image_embeds = vision.pooler_output / vision.pooler_output.norm(p=2, dim=-1, keepdim=True)  # (Bi, P)
        text_embeds = text.pooler_output / text.pooler_output.norm(p=2, dim=-1, keepdim=True)  # (Bt, P)
        logits_per_text = text_embeds @ image_embeds.t() * self.logit_scale.exp() + self.logit_bias  # (Bt, Bi)
        loss = None
        if return_loss:
            if text_embeds.shape[0] != image_embeds.shape[0]:
                raise ValueError(f"return_loss=True needs as many texts as images (the pairs), got "
                                 f"{text_embeds.shape[0]} texts and {image_embeds.shape[0]} images")
            loss = ops.sigmoid_loss(image_embeds, text_embeds, self.logit_scale, self.logit_bias, backend=self.backend)
        out = SiglipOutput(loss=loss, logits_per_image=logits_per_text.t(), logits_per_text=logits_per_text,
                           text_embeds=text_embeds, image_embeds=image_embeds, text_model_output=text,
                           vision_model_output=vision)
        return _return(out, return_dict)


class SiglipForImageClassification(SiglipPreTrainedModel):
    """The vision tower, mean-pooled over tokens, and a linear classifier (`config.num_labels` outputs)."""

    config_class = SiglipConfig
    main_input_name = "pixel_values"

    def __init__(self, config: SiglipConfig, backend: str = "auto"):
        super().__init__(config, backend)
        self.num_labels = config.num_labels
        self.vision_model = SiglipVisionModel(config.vision_config, backend)
        hidden = config.vision_config.hidden_size
        self.classifier = nn.Linear(hidden, config.num_labels) if config.num_labels > 0 else nn.Identity()
        if not _is_meta_init():
            self.init_weights()

    def forward(self, pixel_values=None, labels=None, interpolate_pos_encoding=False, output_attentions=None,
                output_hidden_states=None, return_dict=None) -> ImageClassifierOutput:
        out = self.vision_model(pixel_values, interpolate_pos_encoding, output_attentions, output_hidden_states)
        logits = self.classifier(out.last_hidden_state.mean(dim=1))  # (B, num_labels)
        loss = None if labels is None else self._loss(labels, logits)
        result = ImageClassifierOutput(loss=loss, logits=logits, hidden_states=out.hidden_states,
                                       attentions=out.attentions)
        return _return(result, return_dict)

    def _loss(self, labels: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """transformers' ForSequenceClassificationLoss, problem type inferred the same way."""
        labels = labels.to(logits.device)
        problem = self.config.problem_type
        if problem is None:
            if self.num_labels == 1:
                problem = "regression"
            elif self.num_labels > 1 and labels.dtype in (torch.long, torch.int):
                problem = "single_label_classification"
            else:
                problem = "multi_label_classification"
            self.config.problem_type = problem
        if problem == "regression":
            return F.mse_loss(logits.squeeze(), labels.squeeze().to(logits.dtype)) if self.num_labels == 1 \
                else F.mse_loss(logits, labels.to(logits.dtype))
        if problem == "single_label_classification":
            return F.cross_entropy(logits.view(-1, self.num_labels).float(), labels.view(-1))
        return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))


def _check_no_dropout(tower) -> None:
    if tower.training and tower.config.attention_dropout > 0:
        raise ValueError(f"compile_for_inference captures an inference forward, but this tower is in training mode "
                         f"with attention_dropout={tower.config.attention_dropout}: call .eval() first")


def _is_meta_init() -> bool:
    """True while from_pretrained builds the module skeleton on the meta device (weights come from the file)."""
    return torch.empty(0).device.type == "meta"


def _describe(x) -> str:
    if isinstance(x, torch.Tensor):
        return f"a {x.dtype} tensor of shape {tuple(x.shape)}"
    return type(x).__name__
