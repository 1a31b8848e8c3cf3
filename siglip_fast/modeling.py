"""The SigLIP model family: embeddings, attention, MLP, encoder layer, MAP head, the two towers, the dual model.

Module names and parameter shapes are transformers' (so `state_dict` keys are identical); every fusable op goes
through `siglip_fast.ops`, where the `backend` switch picks the Triton kernel or the eager reference. The eager
backend computes exactly what transformers computes.
"""

from __future__ import annotations

import copy
import functools
import math

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from . import cpu, ops
from .checkpoint import ATTN_IMPLEMENTATIONS, PretrainedMixin, backend_of_attn_implementation, parse_dtype
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
        impl, dropout = ops.resolve(backend, x), (self.dropout if self.training else 0.0)
        out_bias = self.out_proj.bias
        if impl == "triton":
            # One QKV GEMM; q, k and v are strided views of its output, read by the kernel without copies.
            w = torch.cat([self.q_proj.weight, self.k_proj.weight, self.v_proj.weight])  # (3D, D)
            b = torch.cat([self.q_proj.bias, self.k_proj.bias, self.v_proj.bias])
            qkv = ops.linear(x, w, b, backend=backend).view(B, N, 3, self.num_heads, self.head_dim)
            q, k, v = qkv.unbind(2)  # each (B, N, H, d)
        elif impl == "sdpa" and not (torch.is_grad_enabled() or need_probs or dropout):
            # Inference on the PyTorch path: k's bias adds q·b_k to every score of a query row (softmax ignores it),
            # and the probabilities of a row sum to 1, so v's bias adds b_v to every output row: folded into
            # out_proj's bias (b_o + W_o b_v). Two (tokens, D) bias passes less; equal up to fp32 rounding.
            q = self.q_proj(x).view(B, N, self.num_heads, self.head_dim)
            k, v = (F.linear(x, p.weight).view(B, N, self.num_heads, self.head_dim) for p in (self.k_proj, self.v_proj))
            out_bias = torch.addmv(out_bias, self.out_proj.weight, self.v_proj.bias)
        else:
            q, k, v = (p(x).view(B, N, self.num_heads, self.head_dim) for p in (self.q_proj, self.k_proj, self.v_proj))
        out, probs = ops.attention(q, k, v, attention_mask, scale=self.scale, backend=backend, dropout_p=dropout,
                                   need_probs=need_probs)  # (B, N, H, d)
        return ops.linear(out.reshape(B, N, D), self.out_proj.weight, out_bias, backend=backend), probs


# hidden_act → the activation after fc1 (transformers' ACT2FN names); None = the tanh GELU fused into fc1's GEMM
# (gelu_new is transformers' hand-written formula of the same function, equal to ~1e-7).
def _quick_gelu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(1.702 * x)


_ACTIVATIONS = {"gelu_pytorch_tanh": None, "gelu_tanh": None, "gelu_new": None, "gelu": F.gelu, "relu": F.relu,
                "quick_gelu": _quick_gelu, "silu": F.silu, "swish": F.silu}


class SiglipMLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.act = _ACTIVATIONS[config.hidden_act]
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, x, residual, backend: str):
        """fc2(act(fc1(x))) (+ residual): bias/GELU (and the residual) in the GEMM epilogues on Triton."""
        if self.act is None:
            x = ops.linear(x, self.fc1.weight, self.fc1.bias, backend=backend, activation="gelu_tanh")
        else:
            x = self.act(ops.linear(x, self.fc1.weight, self.fc1.bias, backend=backend))
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
                              residual=h, x_is_scratch=True)  # h = h + a; x = LN2(h)
        m = self.mlp(x, None, backend)
        x, h = ops.layer_norm(m, next_norm.weight, next_norm.bias, next_norm.eps, backend=backend,
                              residual=h, x_is_scratch=True)  # h = h + m; x = next_norm(h)
        return h, x, probs


class SiglipEncoder(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.layers = nn.ModuleList(SiglipEncoderLayer(config) for _ in range(config.num_hidden_layers))
        self.gradient_checkpointing = False
        self._gradient_checkpointing_func = functools.partial(torch.utils.checkpoint.checkpoint, use_reentrant=False)

    def forward(self, h, attention_mask, final_norm: nn.LayerNorm, backend: str, output_hidden_states: bool,
                output_attentions: bool) -> BaseModelOutput:
        """The layers, then `final_norm` (the tower's post LayerNorm, fused with the last residual add).

        Returns last_hidden_state = final_norm(encoder output), and, as transformers, hidden_states = the embeddings
        and each layer's output before any final norm."""
        if cpu.usable(self, h, backend, output_attentions):  # CPU inference: oneDNN, prepacked (siglip_fast.cpu)
            if attention_mask is not None and attention_mask.dtype != torch.bool:
                attention_mask = ops.check_attention_mask(attention_mask, h.shape[0], h.shape[1], h.device)
            last, hidden_states = cpu.encoder_forward(self, h, attention_mask, final_norm, output_hidden_states)
            return BaseModelOutput(last_hidden_state=last, hidden_states=hidden_states)
        hidden_states, attentions = ([h] if output_hidden_states else None), ([] if output_attentions else None)
        norms = [layer.layer_norm1 for layer in self.layers] + [final_norm]
        x = ops.layer_norm(h, norms[0].weight, norms[0].bias, norms[0].eps, backend=backend)  # (B, N, D)
        for layer, next_norm in zip(self.layers, norms[1:], strict=True):
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                h, x, probs = self._gradient_checkpointing_func(
                    layer, h, x, attention_mask, next_norm, backend, output_attentions)
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
    """Backend switch, weight initialisation and the transformers PreTrainedModel API the call sites use
    (input embeddings, resizing, gradient checkpointing, parameter counts), shared by every model class."""

    config_class = SiglipConfig
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _uses_text_tower = True
    # transformers' PreTrainedModel capability attributes, read by the libraries around it (accelerate's device maps,
    # quantizers, code choosing an attention): statements about these classes, changing nothing here
    _no_split_modules = ["SiglipTextEmbeddings", "SiglipVisionEmbeddings", "Siglip2VisionEmbeddings",
                         "SiglipEncoderLayer", "SiglipMultiheadAttentionPoolingHead",
                         "Siglip2MultiheadAttentionPoolingHead"]
    _supports_sdpa = True  # attn_implementation="sdpa" (and "eager"; "siglip_fast_triton" for the kernels)
    _supports_flash_attn = False
    _supports_flex_attn = False
    _keep_in_fp32_modules = None
    _keep_in_fp32_modules_strict = None

    @classmethod
    def _can_set_attn_implementation(cls) -> bool:
        """set_attn_implementation() works on every class (it switches the backend)."""
        return True

    @classmethod
    def _can_set_experts_implementation(cls) -> bool:
        return False  # no mixture-of-experts layers

    @classmethod
    def _validate_config(cls, config) -> None:
        """transformers accepts any value in a config and fails when it builds the model: so do we, with the
        reason (a ValueError naming the field)."""
        if isinstance(config, SiglipConfig):
            config.validate_for_model(with_text=cls._uses_text_tower)
        else:
            config.validate_for_model()

    def __init__(self, config, backend: str = "auto"):
        super().__init__()
        if not isinstance(config, self.config_class):
            raise TypeError(f"{type(self).__name__} needs a {self.config_class.__name__}, got {type(config).__name__}")
        self._validate_config(config)
        self.config = config
        requested = config._attn_implementation
        if backend == "auto" and config._attn_implementation_requested and requested in ATTN_IMPLEMENTATIONS:
            backend = ATTN_IMPLEMENTATIONS[requested]  # `config._attn_implementation = "eager"`, as transformers
        self.backend = ops.check_backend(backend)
        # as transformers' instances hold them (sets, empty: no module is kept in fp32)
        self._keep_in_fp32_modules, self._keep_in_fp32_modules_strict = set(), set()
        self._sync_attn_implementation()
        self.register_load_state_dict_post_hook(_after_load)  # from_pretrained assigns weights on their device

    def set_backend(self, backend: str):
        """Switch every fusable op between 'auto', 'triton', 'eager' and 'sdpa' (see siglip_fast.ops)."""
        ops.check_backend(backend)
        for module in self.modules():
            if isinstance(module, SiglipPreTrainedModel):
                module.backend = backend
                module._sync_attn_implementation()
        return self

    def _sync_attn_implementation(self) -> None:
        """config._attn_implementation names the attention that runs: "eager", "sdpa" or "siglip_fast_triton".

        Each model writes its own config's value only ({"": name}); a tower inside a dual model writes its
        sub-config, so towers on different backends (`set_attn_implementation({"text_config": ...})`) keep theirs.
        A sub-config no tower runs (the classifier's text_config) keeps what it was given, as in transformers."""
        name = ops.attention_implementation(self.backend, next(self.parameters(), None))
        self.config._set_attn_implementation({"": name}, requested=False)

    def set_attn_implementation(self, attn_implementation: str | dict):
        """transformers' `set_attn_implementation`: "eager" or "sdpa" (or "siglip_fast_triton", the fused kernels)
        selects the backend of the whole model, as `set_backend`; a dict sets the parts by config key, "" being the
        model itself (the dual model's loss) and "text_config" / "vision_config" its towers, e.g.
        `{"text_config": "eager", "vision_config": "sdpa"}`; a part left out keeps its backend."""
        if isinstance(attn_implementation, dict):
            parts = {"": self, **dict.fromkeys(self.config.sub_configs)}  # None: a sub-config without a tower
            for key in self.config.sub_configs:
                for module in self.children():
                    if isinstance(module, SiglipPreTrainedModel) and module.config is getattr(self.config, key, None):
                        parts[key] = module
            unknown = set(attn_implementation) - set(parts)
            if unknown:
                raise ValueError(f"set_attn_implementation: unknown key(s) {sorted(unknown)} for "
                                 f"{type(self).__name__}; its keys are {sorted(parts)}")
            backends = {key: backend_of_attn_implementation(value, f"attn_implementation[{key!r}]")
                        for key, value in attn_implementation.items()}
            for key, backend in backends.items():
                part = parts[key]
                if part is self:
                    self.backend = backend
                    self._sync_attn_implementation()
                elif part is None:  # nothing runs it (the classifier's text_config): the config says what was asked
                    getattr(self.config, key)._set_attn_implementation(
                        {"": attn_implementation[key]}, requested=False)
                else:
                    part.set_backend(backend)
            return self
        backend = backend_of_attn_implementation(attn_implementation)
        self.config._set_attn_implementation(attn_implementation, requested=False)  # every nested config, as there
        return self.set_backend(backend)  # then each model writes what runs

    _FROM_CONFIG_ARGS = ("attn_implementation", "dtype", "torch_dtype", "backend")

    @classmethod
    def _from_config(cls, config, **kwargs):
        """transformers' `PreTrainedModel._from_config(config, attn_implementation=..., dtype=...)`: a randomly
        initialised model of a copy of `config` (the caller's config is not changed), on `backend` (or the
        backend of `attn_implementation`, as `set_attn_implementation`), in `dtype` (default: torch's default)."""
        unknown = set(kwargs) - set(cls._FROM_CONFIG_ARGS)
        if unknown:
            raise TypeError(f"{cls.__name__}._from_config got unexpected keyword argument(s) "
                            f"{', '.join(sorted(unknown))}; it accepts {', '.join(cls._FROM_CONFIG_ARGS)}")
        backend, attn = kwargs.get("backend"), kwargs.get("attn_implementation")
        if backend is not None and attn is not None:
            raise ValueError("pass backend or attn_implementation, not both")
        if attn is not None:
            backend = backend_of_attn_implementation(attn)
        if kwargs.get("dtype") is not None and kwargs.get("torch_dtype") is not None:
            raise ValueError("pass dtype or torch_dtype, not both")
        dtype = parse_dtype(kwargs.get("dtype", kwargs.get("torch_dtype")))
        model = cls(copy.deepcopy(config), backend=backend or "auto")
        return model.to(dtype) if dtype is not None else model

    def _apply(self, fn, *args, **kwargs):
        module = super()._apply(fn, *args, **kwargs)
        self._sync_attn_implementation()  # .to(device) changes what "auto" runs
        return module

    @classmethod
    def can_generate(cls) -> bool:
        return False

    def _embeddings(self) -> nn.Module:
        if "embeddings" in self._modules:  # a tower (SigLIP or SigLIP 2)
            return self.embeddings
        return self.text_model.embeddings if isinstance(self, SiglipModel) else self.vision_model.embeddings

    @property
    def vocab_size(self) -> int:
        """The number of token embeddings (what `resize_token_embeddings` changes), for the models with a text
        tower; transformers sets this attribute when it resizes."""
        emb = self._embeddings()
        if not isinstance(emb, SiglipTextEmbeddings):
            raise AttributeError("vocab_size")  # a vision model has none (nn.Module reports the missing attribute)
        return emb.token_embedding.num_embeddings

    def get_input_embeddings(self) -> nn.Module:
        """The token embedding (SiglipModel, SiglipTextModel) or the patch embedding Conv2d (vision models)."""
        emb = self._embeddings()
        return emb.token_embedding if isinstance(emb, SiglipTextEmbeddings) else emb.patch_embedding

    def set_input_embeddings(self, value: nn.Module) -> None:
        emb = self._embeddings()
        setattr(emb, "token_embedding" if isinstance(emb, SiglipTextEmbeddings) else "patch_embedding", value)

    def get_output_embeddings(self) -> None:
        return None  # no language-model head

    @torch.no_grad()
    def resize_token_embeddings(self, new_num_tokens: int | None = None, pad_to_multiple_of: int | None = None,
                                mean_resizing: bool = True) -> nn.Embedding:
        """Resize the text token embedding to `new_num_tokens` rows (rounded up to a multiple of
        `pad_to_multiple_of`), keeping the first rows, and set the text config's vocab_size, as transformers does.
        New rows are drawn as transformers v5 draws them: mean_resizing=True → N(mean, 1e-9·cov) of the old rows
        (computed in fp32; the mean itself when that covariance is not positive definite), False → N(0, 1/D)."""
        old = self.get_input_embeddings()
        if not isinstance(old, nn.Embedding):
            raise TypeError(f"{type(self).__name__} has no token embedding to resize (its input embedding is a "
                            f"{type(old).__name__})")
        for name, value in (("new_num_tokens", new_num_tokens), ("pad_to_multiple_of", pad_to_multiple_of)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive int or None, got {value!r}")
        if pad_to_multiple_of is not None:
            n = old.num_embeddings if new_num_tokens is None else new_num_tokens
            new_num_tokens = -(-n // pad_to_multiple_of) * pad_to_multiple_of
        if new_num_tokens is None:
            return old
        w = old.weight
        new = torch.empty(new_num_tokens, w.shape[1], dtype=w.dtype, device=w.device)
        n = min(w.shape[0], new_num_tokens)
        new[:n] = w[:n]
        if new_num_tokens > w.shape[0]:
            new[w.shape[0]:] = _new_embedding_rows(w, new_num_tokens - w.shape[0], mean_resizing)
        old.weight.data = new  # the same Parameter object, as transformers
        old.num_embeddings = new_num_tokens
        if old.padding_idx is not None and old.padding_idx >= new_num_tokens:
            old.padding_idx = None
        (self.config.text_config if isinstance(self.config, SiglipConfig) else self.config).vocab_size = new_num_tokens
        return old

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None):
        """Recompute each encoder layer in the backward: torch.utils.checkpoint.checkpoint with these kwargs
        (default use_reentrant=False, as transformers v5)."""
        kwargs = {"use_reentrant": False} if gradient_checkpointing_kwargs is None else gradient_checkpointing_kwargs
        func = functools.partial(torch.utils.checkpoint.checkpoint, **kwargs)
        for module in self.modules():
            if isinstance(module, SiglipEncoder):
                module.gradient_checkpointing, module._gradient_checkpointing_func = True, func
        return self

    def gradient_checkpointing_disable(self):
        for module in self.modules():
            if isinstance(module, SiglipEncoder):
                module.gradient_checkpointing = False
        return self

    def activation_checkpointing_enable(self, activation_checkpointing_kwargs: dict | None = None):
        """transformers v5.24's name for gradient_checkpointing_enable."""
        return self.gradient_checkpointing_enable(activation_checkpointing_kwargs)

    activation_checkpointing_disable = gradient_checkpointing_disable

    @property
    def is_gradient_checkpointing(self) -> bool:
        return any(m.gradient_checkpointing for m in self.modules() if isinstance(m, SiglipEncoder))

    def enable_input_require_grads(self):
        """transformers' `enable_input_require_grads` (what PEFT calls when the weights are frozen): the output of
        every tower's embeddings requires grad, so the encoder layers, checkpointed with use_reentrant=True, still
        pass gradients to adapters inside them. `disable_input_require_grads()` removes it."""
        self.disable_input_require_grads()

        def require_grad(module, args, output):
            if torch.is_grad_enabled():  # never under no_grad / inference_mode
                output.requires_grad_(True)

        towers = [m for m in self.modules() if isinstance(m, SiglipPreTrainedModel) and "embeddings" in m._modules]
        self._require_grads_hooks = [t.embeddings.register_forward_hook(require_grad) for t in towers]
        return self

    def disable_input_require_grads(self):
        for hook in self.__dict__.pop("_require_grads_hooks", []):
            hook.remove()
        return self

    @property
    def is_activation_checkpointing(self) -> bool:
        """transformers v5.24's name for is_gradient_checkpointing."""
        return self.is_gradient_checkpointing

    def num_parameters(self, only_trainable: bool = False, exclude_embeddings: bool = False) -> int:
        """Parameter count, as transformers: optionally only those requiring grad, or without nn.Embedding tables."""
        skip = {id(m.weight) for m in self.modules() if isinstance(m, nn.Embedding)} if exclude_embeddings else set()
        return sum(p.numel() for p in self.parameters()
                   if id(p) not in skip and (p.requires_grad or not only_trainable))

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
            if isinstance(module, (SiglipVisionEmbeddings, SiglipTextEmbeddings)):  # rebuilt after to_empty()
                module.position_ids.copy_(torch.arange(module.position_ids.shape[-1])[None])
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


def _after_load(module: SiglipPreTrainedModel, incompatible_keys) -> None:
    module._sync_attn_implementation()


def _fan_in(weight: torch.Tensor) -> int:
    return weight[0].numel()


def _new_embedding_rows(old: torch.Tensor, n: int, mean_resizing: bool) -> torch.Tensor:
    """n new token embeddings (transformers v5's _init_added_embeddings_weights_with_mean, or its N(0, 1/D))."""
    if not mean_resizing:
        return torch.randn(n, old.shape[1], device=old.device).mul_(old.shape[1] ** -0.5).to(old.dtype)
    w = old.float()
    mean = w.mean(0)
    cov = 1e-9 * (w - mean).T @ (w - mean) / w.shape[0]
    if torch.distributions.constraints.positive_definite.check(cov).all():
        return torch.distributions.MultivariateNormal(mean, covariance_matrix=cov).sample((n,)).to(old.dtype)
    return mean.expand(n, -1).to(old.dtype)


def _flag(value, config, name: str, default=False):
    """A per-call flag, else the config's (transformers' output_attentions / output_hidden_states / return_dict)."""
    return value if value is not None else getattr(config, name, default)


def _return(output, return_dict):
    return output if return_dict else output.to_tuple()


def _check_device(name: str, tensor: torch.Tensor, device: torch.device) -> None:
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.device != device:
        raise ValueError(f"{name} must be on the model's device {device}, got a tensor on {tensor.device} "
                         f"(move it with .to({str(device)!r}))")


def _check_range(name: str, ids: torch.Tensor, high: int, what: str) -> None:
    """0 <= ids < high. On CPU a ValueError with the first bad value. On CUDA (no host sync in the hot path) and while
    torch.compile traces, a device-side assert with the same message: asynchronous, it surfaces at the next sync,
    like CUDA's own indexing assert, and it can be captured in a CUDA graph."""
    msg = f"{name} must be in [0, {high}) ({what})"
    if ids.device.type == "meta":
        return
    if ids.device.type != "cpu" or torch.compiler.is_compiling():
        torch._assert_async(((ids >= 0) & (ids < high)).all(), msg)
        return
    if ids.numel():
        low, top = torch.aminmax(ids)
        if low < 0 or top >= high:
            bad = ids[(ids < 0) | (ids >= high)][0].item()
            raise ValueError(f"{msg}, got {bad}")


class SiglipTextModel(SiglipPreTrainedModel):
    """Text tower: tokens + positions → pre-LN encoder → final LN → last token → head. Inputs are not masked
    unless an attention_mask is given (the official checkpoints were trained without one)."""

    config_class = SiglipTextConfig
    base_model_prefix = "text_model"
    _keys_of_other_parts = ("vision_model.", "logit_scale", "logit_bias")

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
        """Encode token ids (as transformers' SiglipTextModel.forward).

        Args:
            input_ids: (B, L) integer ids in [0, vocab_size), L <= max_position_embeddings. SigLIP was trained on
                ids padded to max_length (tokenizer(..., padding="max_length", truncation=True)).
            attention_mask: optional (B, L), bool or 0/1 integer/float, 1 = attend (transformers' padding
                convention); additive masks (0 / -inf) are refused. Default: attend to every token, as trained.
            position_ids: optional (L,), (1, L) or (B, L) integer positions in [0, max_position_embeddings);
                default 0..L-1.
            output_attentions, output_hidden_states: also return each layer's attention probabilities / the
                embeddings and each layer's output; None takes the config's value (default False).
            return_dict: False returns a tuple; None takes config.return_dict (default True).

        Every tensor must be on the model's device. Returns BaseModelOutputWithPooling: last_hidden_state (B, L, D)
        after final_layer_norm, pooler_output (B, P) = head(last position), hidden_states, attentions.
        """
        if input_ids is None:
            raise ValueError("You have to specify input_ids")
        if not isinstance(input_ids, torch.Tensor) or not _is_int(input_ids) or input_ids.ndim < 1:
            raise TypeError(f"input_ids must be an integer tensor of shape (B, L), got {_describe(input_ids)}")
        device, config = self.embeddings.token_embedding.weight.device, self.config
        _check_device("input_ids", input_ids, device)
        if input_ids.dtype not in _INDEX_DTYPES:  # what nn.Embedding indexes with
            raise TypeError(f"input_ids must be an integer tensor of shape (B, L), int64 or int32 (what "
                            f"nn.Embedding indexes with), got {_describe(input_ids)}")
        if input_ids.shape[-1] == 0:
            raise ValueError(f"input_ids must hold at least one token per text (shape (B, L) with L >= 1), got "
                             f"{_describe(input_ids)}")
        input_ids = input_ids.view(-1, input_ids.shape[-1])  # (B, L)
        B, L = input_ids.shape
        _check_range("input_ids", input_ids, self.embeddings.token_embedding.num_embeddings, "the vocabulary")
        if position_ids is not None:
            _check_device("position_ids", position_ids, device)
            if position_ids.dtype not in _INDEX_DTYPES or position_ids.ndim > 2 or position_ids.shape[-1] != L or (
                    position_ids.ndim == 2 and position_ids.shape[0] not in (1, B)):
                raise ValueError(f"position_ids must be an integer tensor of shape (L,), (1, L) or (B, L) with "
                                 f"{(B, L)} = input_ids' shape, int64 or int32 (what nn.Embedding indexes with), got "
                                 f"{_describe(position_ids)}")
            _check_range("position_ids", position_ids, config.max_position_embeddings, "max_position_embeddings")
        if attention_mask is not None:  # None when nothing is masked: the unmasked kernel path, same result
            attention_mask = ops.check_attention_mask(attention_mask, B, L, device)
        out = self._encode(input_ids, attention_mask, position_ids, bool(_flag(output_attentions, config,
                           "output_attentions")), bool(_flag(output_hidden_states, config, "output_hidden_states")))
        return _return(out, _flag(return_dict, config, "return_dict", True))

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

        def run(buffers):  # captured in a CUDA graph: the value checks are device-side asserts there (no sync)
            ids, mask = buffers["input_ids"], buffers.get("attention_mask")
            _check_range("input_ids", ids, self.embeddings.token_embedding.num_embeddings, "the vocabulary")
            if mask is not None:
                if mask.dtype != torch.bool:
                    torch._assert_async(((mask == 0) | (mask == 1)).all(), "attention_mask must hold only 0 and 1")
                mask = mask != 0
            out = self._encode(ids, mask, None, False, False)
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
    _keys_of_other_parts = ("text_model.", "logit_scale", "logit_bias", "classifier.")

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
        """Encode images (as transformers' SiglipVisionModel.forward).

        Args:
            pixel_values: (B, C, H, W) on the model's device: float (normalised, as the image processor returns) or
                uint8 (raw 0..255 pixels, normalised inside the patch embedding). H, W = image_size unless
                interpolate_pos_encoding.
            interpolate_pos_encoding: bicubic-resize the position table to another image size.
            output_attentions, output_hidden_states, return_dict: as SiglipTextModel.forward (None = the config's).

        Returns BaseModelOutputWithPooling: last_hidden_state (B, N, D) after post_layernorm, pooler_output (B, D)
        from the MAP head (None without vision_use_head), hidden_states, attentions.
        """
        if pixel_values is None:
            raise ValueError("You have to specify pixel_values")
        config = self.config
        _check_device("pixel_values", pixel_values, self.embeddings.patch_embedding.weight.device)
        h = self.embeddings(pixel_values, bool(interpolate_pos_encoding), self.backend)  # (B, N, D)
        enc = self.encoder(h, None, self.post_layernorm, self.backend,
                           bool(_flag(output_hidden_states, config, "output_hidden_states")),
                           bool(_flag(output_attentions, config, "output_attentions")))
        last = enc.last_hidden_state  # (B, N, D), after post_layernorm
        pooled = self.head(last, self.backend) if self.use_head else None  # (B, D)
        out = BaseModelOutputWithPooling(last_hidden_state=last, pooler_output=pooled,
                                         hidden_states=enc.hidden_states, attentions=enc.attentions)
        return _return(out, _flag(return_dict, config, "return_dict", True))

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

    def _flags(self, output_attentions, output_hidden_states):
        """Per-call flags, else this config's when set to True (transformers v4), else each tower's own config
        (transformers v5): the top config's default False leaves the towers' configs in charge."""
        def pick(value, name):
            return value if value is not None else (True if getattr(self.config, name, False) else None)

        return pick(output_attentions, "output_attentions"), pick(output_hidden_states, "output_hidden_states")

    def get_text_features(self, input_ids=None, attention_mask=None, position_ids=None, output_attentions=None,
                          output_hidden_states=None, return_dict=None) -> BaseModelOutputWithPooling:
        """The text tower's output; `.pooler_output` holds the (un-normalised) text embeddings (transformers v5).
        Arguments as SiglipTextModel.forward."""
        out = self.text_model(input_ids, attention_mask, position_ids,
                              *self._flags(output_attentions, output_hidden_states), return_dict=True)
        return _return(out, _flag(return_dict, self.config, "return_dict", True))

    def get_image_features(self, pixel_values=None, interpolate_pos_encoding=False, output_attentions=None,
                           output_hidden_states=None, return_dict=None) -> BaseModelOutputWithPooling:
        """The vision tower's output; `.pooler_output` holds the (un-normalised) image embeddings (transformers v5).
        Arguments as SiglipVisionModel.forward."""
        out = self.vision_model(pixel_values, interpolate_pos_encoding,
                                *self._flags(output_attentions, output_hidden_states), return_dict=True)
        return _return(out, _flag(return_dict, self.config, "return_dict", True))

    def forward(self, input_ids=None, pixel_values=None, attention_mask=None, position_ids=None, return_loss=None,
                interpolate_pos_encoding=False, output_attentions=None, output_hidden_states=None,
                return_dict=None) -> SiglipOutput:
        """Score every text against every image (as transformers' SiglipModel.forward).

        Args:
            input_ids, attention_mask, position_ids: the texts, as SiglipTextModel.forward.
            pixel_values, interpolate_pos_encoding: the images, as SiglipVisionModel.forward.
            return_loss: also return the sigmoid loss (needs as many texts as images: the pairs).
            output_attentions, output_hidden_states: per call; None takes this config's value if set, else each
                tower config's (default False). return_dict: None takes config.return_dict (default True).

        Returns SiglipOutput: loss, logits_per_image (Bi, Bt), logits_per_text (Bt, Bi) = exp(logit_scale)·cos +
        logit_bias (probabilities are their sigmoid), text_embeds / image_embeds (L2-normalised), and each tower's
        output (text_model_output, vision_model_output).
        """
        output_attentions, output_hidden_states = self._flags(output_attentions, output_hidden_states)
        vision = self.vision_model(pixel_values, interpolate_pos_encoding, output_attentions, output_hidden_states,
                                   return_dict=True)
        text = self.text_model(input_ids, attention_mask, position_ids, output_attentions, output_hidden_states,
                               return_dict=True)
        return _return(self._scores(text, vision, return_loss), _flag(return_dict, self.config, "return_dict", True))

    def _scores(self, text: BaseModelOutputWithPooling, vision: BaseModelOutputWithPooling,
                return_loss) -> SiglipOutput:
        """The towers' outputs -> logits, normalised embeddings and (return_loss) the sigmoid loss."""
        image_embeds = vision.pooler_output / vision.pooler_output.norm(p=2, dim=-1, keepdim=True)  # (Bi, P)
        text_embeds = text.pooler_output / text.pooler_output.norm(p=2, dim=-1, keepdim=True)  # (Bt, P)
        logits_per_text = text_embeds @ image_embeds.t() * self.logit_scale.exp() + self.logit_bias  # (Bt, Bi)
        loss = None
        if return_loss:
            if text_embeds.shape[0] != image_embeds.shape[0]:
                raise ValueError(f"return_loss=True needs as many texts as images (the pairs), got "
                                 f"{text_embeds.shape[0]} texts and {image_embeds.shape[0]} images")
            loss = ops.sigmoid_loss(image_embeds, text_embeds, self.logit_scale, self.logit_bias, backend=self.backend)
        return SiglipOutput(loss=loss, logits_per_image=logits_per_text.t(), logits_per_text=logits_per_text,
                            text_embeds=text_embeds, image_embeds=image_embeds, text_model_output=text,
                            vision_model_output=vision)


class SiglipForImageClassification(SiglipPreTrainedModel):
    """The vision tower, mean-pooled over tokens, and a linear classifier (`config.num_labels` outputs)."""

    config_class = SiglipConfig
    main_input_name = "pixel_values"
    _uses_text_tower = False
    _keys_of_other_parts = ("text_model.", "logit_scale", "logit_bias")
    _new_head_prefixes = ("classifier.",)

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
        """Classify images (as transformers' SiglipForImageClassification.forward).

        Args:
            pixel_values, interpolate_pos_encoding: as SiglipVisionModel.forward.
            labels: optional (B,) class ids (cross-entropy), (B, num_labels) floats (BCE), or regression targets
                (MSE, num_labels == 1); the problem type is inferred as transformers does unless config.problem_type.
            output_attentions, output_hidden_states, return_dict: as SiglipModel.forward.

        Returns ImageClassifierOutput: loss, logits (B, num_labels), hidden_states, attentions.
        """
        out = self.vision_model(pixel_values, interpolate_pos_encoding,
                                *SiglipModel._flags(self, output_attentions, output_hidden_states), return_dict=True)
        logits = self.classifier(out.last_hidden_state.mean(dim=1))  # (B, num_labels)
        loss = None if labels is None else self._loss(labels, logits)
        result = ImageClassifierOutput(loss=loss, logits=logits, hidden_states=out.hidden_states,
                                       attentions=out.attentions)
        return _return(result, _flag(return_dict, self.config, "return_dict", True))

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


_INDEX_DTYPES = (torch.int64, torch.int32)  # the index dtypes nn.Embedding takes


def _is_int(t: torch.Tensor) -> bool:
    return not (t.is_floating_point() or t.is_complex() or t.dtype == torch.bool)


def _describe(x) -> str:
    if isinstance(x, torch.Tensor):
        return f"a {x.dtype} tensor of shape {tuple(x.shape)}"
    return type(x).__name__
