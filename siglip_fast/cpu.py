"""The CPU inference path of ``backend="auto"``: the encoder on torch's oneDNN kernels with prepacked weights.

On CPU torch's ``F.linear`` runs on MKL's sgemm, which on the AVX-512 CPU measured for this project (AMD Zen 4)
reaches 175-185 GFLOP/s on the MLP's product on an idle machine against 200-215 for torch's own oneDNN GEMM with
prepacked weights (1.3-1.8x its CPU time on a loaded one), and every ``addmm`` first copies the bias into its
output. This module runs the encoder layers (SigLIP's and SigLIP 2's: both towers) through
``torch.ops.mkldnn._linear_pointwise`` instead, with

- the weights reordered once into oneDNN's blocked layout (``_reorder_linear_weight``), q/k/v concatenated into one
  (3D, D) GEMM, kept per encoder module in `_PLANS` and rebuilt when a parameter changes (see `_signature`);
- the bias, the tanh/erf GELU after fc1 and the residual adds after out_proj and fc2 fused into the GEMMs' epilogues
  (oneDNN post-ops): no separate elementwise passes, no bias copies;
- attention, in fp32, by PyTorch SDPA's CPU flash kernel, reading q, k and v as strided views of the QKV GEMM's
  output and writing (B, N, H, d), which out_proj reads as (B·N, D) without a copy; in bf16 by two batched GEMMs
  around a softmax (`_attention`), into buffers reused by every layer of the call (`_Workspace`): on CPUs without
  AMX the flash kernel runs bf16 at about half their speed (6.7 against 11.4 ms per layer at base-224, batch 8).

It computes what the eager reference computes, up to fp32 rounding (the GEMMs sum in another order); in bf16 (a model
in bf16, or an fp32 model under CPU autocast to bf16: bf16 weights packed beside the fp32 ones, the residual stream
and the LayerNorms in fp32, as autocast runs them) the GEMMs take bf16 and accumulate in fp32, as torch's bf16 path
does, and the attention scores are rounded to bf16 before the softmax, as in transformers' eager attention in bf16
(tests/test_cpu.py holds its error within 1.25x eager bf16's). It is inference only: `usable`
says no when autograd is recording for a tensor that needs gradients, when attention probabilities are asked for, or
for dropout in training mode, and the model then takes its ordinary PyTorch path (which autograd differentiates).

Prepacked weights follow the parameters: the plan records each parameter's storage, dtype and version counter, so an
in-place update (``load_state_dict``, an optimizer step, ``nn.init``) or a replacement (``.to()``, assigning
``.data``) rebuilds it on the next call. A write through ``param.data`` in place (``p.data.copy_(...)``) bypasses
the version counter that PyTorch keeps for this purpose: after one, call `release` (or assign the parameter anew).
"""

from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F

_PLANS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # encoder module -> _Plan, dropped with the module
_DTYPES = (torch.float32, torch.bfloat16)
# SiglipMLP.act -> the oneDNN post-op (attr, algorithm) fused into fc1; other activations run after the GEMM
# (act is None for the tanh GELUs)
_FUSED_ACT = {None: ("gelu", "tanh"), F.gelu: ("gelu", "none"), F.relu: ("relu", "")}


def available() -> bool:
    """Whether this torch build has the oneDNN CPU kernels this path uses."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def cpu_has_native_bf16() -> bool:
    """True when the CPU computes bf16 natively (AVX512-BF16 or AMX), where a bf16 model runs about twice as fast as
    fp32 here: the dtype `embed` / `classify` should pick on such a CPU (see `default_cpu_dtype`)."""
    cpu = torch.cpu
    native = getattr(cpu, "_is_avx512_bf16_supported", lambda: False)() or \
        getattr(cpu, "_is_amx_tile_supported", lambda: False)()
    return bool(native) and available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def default_cpu_dtype() -> torch.dtype:
    """The dtype for a CPU inference job that did not ask for one: bf16 on CPUs with native bf16, else fp32."""
    return torch.bfloat16 if cpu_has_native_bf16() else torch.float32


def usable(encoder, h: torch.Tensor, backend: str, output_attentions: bool) -> bool:
    """Whether `encoder`'s forward on `h` may take this path (backend "auto", CPU, fp32/bf16, no CPU autocast other
    than bf16's (see `compute_dtype`), no autograd needed, no attention probabilities, no dropout; not while
    torch.compile, torch.jit or the ONNX exporter trace: they get the plain PyTorch ops)."""
    if backend != "auto" or h.device.type != "cpu" or h.dtype not in _DTYPES or output_attentions:
        return False
    if torch.compiler.is_compiling() or torch.jit.is_tracing() or torch.jit.is_scripting():
        return False
    compute = compute_dtype(h)
    if compute is None or not available():
        return False
    if compute == torch.bfloat16 and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return False
    if encoder.training and any(layer.self_attn.dropout > 0 for layer in encoder.layers):
        return False
    if torch.is_grad_enabled() and (h.requires_grad or any(p.requires_grad for p in encoder.parameters())):
        return False
    return all(p.dtype == h.dtype and p.device.type == "cpu" for p in encoder.parameters())


def compute_dtype(h: torch.Tensor) -> torch.dtype | None:
    """The dtype of this path's GEMMs for the residual stream `h`: h's own (a model in fp32 or bf16), or bf16 for an
    fp32 model under CPU autocast to bf16 (autocast's rules: GEMMs and attention in bf16, the residual stream and
    the LayerNorms in fp32); None where the path does not apply (fp16 autocast: the PyTorch path casts)."""
    if not torch.is_autocast_enabled("cpu"):
        return h.dtype if h.dtype in _DTYPES else None
    amp = torch.get_autocast_dtype("cpu")
    return torch.bfloat16 if amp == torch.bfloat16 and h.dtype == torch.float32 else None


def release(encoder=None) -> None:
    """Drop the prepacked weights of one encoder (a model: all of its encoders), or of every model when None."""
    if encoder is None:
        _PLANS.clear()
        return
    for module in encoder.modules():
        _PLANS.pop(module, None)


def _signature(params) -> tuple:
    return tuple((p.data_ptr(), p._version, p.dtype) for p in params)


def _pack(weight: torch.Tensor) -> torch.Tensor:
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach().contiguous())


class _Layer:
    """One encoder layer's weights, prepacked: LayerNorms as they are, GEMM weights and biases in `dtype` (the
    compute dtype: the parameters' own, or bf16 under autocast) and oneDNN's layout."""

    def __init__(self, layer, dtype: torch.dtype):
        attn, mlp = layer.self_attn, layer.mlp
        self.eps = layer.eps
        self.heads, self.head_dim, self.scale = attn.num_heads, attn.head_dim, attn.scale
        self.ln1 = (layer.layer_norm1.weight.detach(), layer.layer_norm1.bias.detach())
        self.ln2 = (layer.layer_norm2.weight.detach(), layer.layer_norm2.bias.detach())
        projections = (attn.q_proj, attn.k_proj, attn.v_proj)
        weight = torch.cat([p.weight.detach() for p in projections])  # (3D, D)
        bias = torch.cat([p.bias.detach() for p in projections])
        self.scores_in_gemm = dtype == torch.bfloat16  # bf16: attention by two GEMMs, see _attention
        if self.scores_in_gemm:  # fold the scale into q's rows (exact for power-of-two scales: head_dim 64, 256)
            D = attn.out_proj.in_features
            weight, bias = weight.float(), bias.float()
            weight[:D] *= self.scale
            bias[:D] *= self.scale
        self.qkv, self.qkv_bias = _pack(weight.to(dtype)), bias.to(dtype)
        self.out, self.out_bias = _pack(attn.out_proj.weight.to(dtype)), attn.out_proj.bias.detach().to(dtype)
        self.fc1, self.fc1_bias = _pack(mlp.fc1.weight.to(dtype)), mlp.fc1.bias.detach().to(dtype)
        self.fc2, self.fc2_bias = _pack(mlp.fc2.weight.to(dtype)), mlp.fc2.bias.detach().to(dtype)
        self.fused_act, self.act = _FUSED_ACT.get(mlp.act), mlp.act


class _Plan:
    def __init__(self, encoder, signature, dtype: torch.dtype):
        self.signature = signature
        self.layers = [_Layer(layer, dtype) for layer in encoder.layers]


def _plan(encoder, dtype: torch.dtype) -> _Plan:
    """The encoder's packed weights for GEMMs in `dtype`: one plan per compute dtype used (an fp32 model run with and
    without autocast keeps both), all rebuilt when a parameter changes."""
    signature = _signature(list(encoder.parameters()))
    plans = _PLANS.get(encoder)
    if plans is None or any(plan.signature != signature for plan in plans.values()):
        _PLANS.pop(encoder, None)  # free the stale packed weights before packing new ones
        plans = _PLANS[encoder] = {}
    if dtype not in plans:
        with torch.no_grad():
            plans[dtype] = _Plan(encoder, signature, dtype)
    return plans[dtype]


def _linear(x, w, b, attr: str = "none", algorithm: str = ""):
    return torch.ops.mkldnn._linear_pointwise(x, w, b, attr, [], algorithm)


def _add_linear(h, x, w, b):
    """h + linear(x): the add fused into the GEMM where h is in the GEMM's dtype; under autocast (h fp32, the GEMM
    bf16) the bf16 result is added to h in fp32, as eager's `+` promotes."""
    if h.dtype == x.dtype:
        return torch.ops.mkldnn._linear_pointwise.binary(x, h, w, b, "add")
    return h + _linear(x, w, b)


SCORES_BYTES = 32 << 20  # the bf16 attention's score buffer: at most this much (and as much for the probabilities)


class _Workspace:
    """The bf16 attention's buffers, allocated once per encoder call and reused by every layer (fewer allocations,
    fewer page faults): q/k/v by head, the output by head and in the layout out_proj reads, and the scores and
    probabilities of `images` images at a time, at most `budget` bytes each (one image's when that is more), so the
    memory of a call does not grow with N² times the batch, unlike (B, H, N, N) would."""

    def __init__(self, B: int, N: int, H: int, d: int, dtype: torch.dtype, budget: int = SCORES_BYTES):
        self.parts = torch.empty(3, B, H, N, d, dtype=dtype)
        self.by_head = torch.empty(B * H, N, d, dtype=dtype)
        self.out = torch.empty(B, N, H, d, dtype=dtype)
        self.images = max(1, min(B, budget // (H * N * N * dtype.itemsize)))
        self.scores = torch.empty(self.images * H, N, N, dtype=dtype)
        self.probs = torch.empty(self.images * H, N, N, dtype=dtype)


def _attention(qkv: torch.Tensor, B: int, N: int, p: _Layer, mask, work: _Workspace | None) -> torch.Tensor:
    """softmax(q k^T · scale + mask) v for every head: qkv (B·N, 3D) → (B·N, D), the layout out_proj reads.

    fp32: SDPA's CPU flash kernel on strided views of qkv (it writes (B, H, N, d) over (B, N, H, d): no copy).
    bf16: q comes scaled (see _Layer); scores = q k^T as batched bf16 GEMMs (fp32 accumulation, bf16 scores, as
    transformers' eager attention in bf16), softmax computed in fp32 and rounded to bf16, then probs · v, for
    `work.images` images at a time: on CPUs without AMX torch's flash kernel runs bf16 through small GEMM blocks at
    about half this speed."""
    H, d = p.heads, p.head_dim
    parts = qkv.view(B, N, 3, H, d).permute(2, 0, 3, 1, 4)  # (3, B, H, N, d), strided
    if work is None:
        q, k, v = parts.unbind(0)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=p.scale)  # (B, H, N, d) over (B, N, H, d)
        return a.transpose(1, 2).reshape(B * N, H * d)
    q, k, v = work.parts.copy_(parts).view(3, B * H, N, d).unbind(0)  # each (B·H, N, d)
    for start in range(0, B, work.images):
        stop = min(start + work.images, B)
        rows = slice(start * H, stop * H)  # these images' heads
        scores = torch.bmm(q[rows], k[rows].transpose(1, 2), out=work.scores[:(stop - start) * H])  # (b·H, N, N)
        if mask is not None:
            scores.view(stop - start, H, N, N).add_(mask[start:stop])
        probs = torch.softmax(scores, -1, out=work.probs[:(stop - start) * H])
        torch.bmm(probs, v[rows], out=work.by_head[rows])  # (b·H, N, d)
    return work.out.copy_(work.by_head.view(B, H, N, d).transpose(1, 2)).view(B * N, H * d)


def encoder_forward(encoder, h: torch.Tensor, attention_mask, final_norm, output_hidden_states: bool):
    """SiglipEncoder.forward on this path: h (B, N, D) → (final_norm(encoder(h)), hidden states or None).

    attention_mask: None or a bool (B, N) key mask (True = attend), as `ops.check_attention_mask` returns it."""
    dtype = compute_dtype(h)  # the GEMMs'; h, the residual stream, keeps its own (fp32 under autocast)
    plan = _plan(encoder, dtype)
    B, N, D = h.shape
    mask = None
    if attention_mask is not None:  # additive finfo.min, as the sdpa path: a fully masked row averages all keys
        keep = attention_mask[:, None, None, :]  # (B, 1, 1, N)
        mask = torch.zeros(keep.shape, dtype=dtype).masked_fill_(~keep, torch.finfo(dtype).min)
    first = plan.layers[0] if plan.layers else None
    work = _Workspace(B, N, first.heads, first.head_dim, dtype) if first and first.scores_in_gemm else None
    hidden_states = [h] if output_hidden_states else None
    h = h.reshape(B * N, D)  # the residual stream, (B·N, D)
    for p in plan.layers:
        x = F.layer_norm(h, (D,), *p.ln1, p.eps).to(dtype)
        a = _attention(_linear(x, p.qkv, p.qkv_bias), B, N, p, mask, work)  # (B·N, D)
        h = _add_linear(h, a, p.out, p.out_bias)  # h + out_proj(a)
        x = F.layer_norm(h, (D,), *p.ln2, p.eps).to(dtype)
        if p.fused_act is not None:
            x = _linear(x, p.fc1, p.fc1_bias, *p.fused_act)
        else:
            x = p.act(_linear(x, p.fc1, p.fc1_bias))
        h = _add_linear(h, x, p.fc2, p.fc2_bias)  # h + fc2(act(fc1(x)))
        if output_hidden_states:
            hidden_states.append(h.view(B, N, D))
    x = F.layer_norm(h, (D,), final_norm.weight, final_norm.bias, final_norm.eps).view(B, N, D)
    return x, (tuple(hidden_states) if output_hidden_states else None)
