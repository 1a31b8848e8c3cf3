"""The backend switch: the one place where every fusable op of the model picks its implementation.

Backends:
- ``"auto"``: the Triton kernels for CUDA tensors (fp32, bf16, fp16); on CPU (and for other dtypes) the fastest
  PyTorch path, the ``"sdpa"`` one, except that CPU inference in fp32/bf16 runs the encoder through siglip_fast.cpu
  (oneDNN, prepacked weights; measured in benchmarks/test_bench_cpu_default.py and test_bench_cpu.py).
- ``"triton"``: the Triton kernels always; on CPU only under the Triton interpreter (``TRITON_INTERPRET=1`` set before
  triton is imported), otherwise a clear error.
- ``"eager"``: the pure PyTorch reference of each op (exactly what transformers computes).
- ``"sdpa"``: eager, with PyTorch's ``scaled_dot_product_attention`` for attention (transformers' default
  computation); in inference the GELU and the residual adds write over the fresh GEMM outputs they consume, and
  the model drops k's bias and folds v's into out_proj's (SiglipAttention).

Under ``torch.autocast`` every op below follows autocast's rules on every backend, as the PyTorch ops transformers
calls would (torch 2.6+'s op lists): GEMM-like ops (linear, attention, the patch convolution) take their inputs in
the autocast dtype; layer norm runs in fp32 on CUDA (autocast's fp32 list) and in its input's dtype on CPU (not on
CPU's lists; statistics in fp32 either way); residual adds promote (a bf16 GEMM output added to an fp32 stream is
fp32). The casts are differentiable, so gradients reach fp32 weights; inside the kernels accumulation stays fp32.

Whatever the backend, a config transformers runs runs here: where a kernel cannot take a shape (attention head
dims above 128) the call falls back to PyTorch SDPA and says why, once per reason (``warnings.warn``).

The model calls only the functions below; each kernel module owns both its kernel and its ``*_reference``.
"""

from __future__ import annotations

import os
import warnings

import torch
import torch.nn.functional as F

BACKENDS = ("auto", "triton", "eager", "sdpa")
MAX_TRITON_HEAD_DIM = 128  # the largest head dim the Triton attention kernel takes
_KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_WARNED: set[str] = set()


def _autocast_dtype(t: torch.Tensor) -> torch.dtype | None:
    """The dtype torch.autocast runs GEMM-like ops in on t's device, or None when autocast is off there."""
    kind = t.device.type
    if kind in ("cpu", "cuda") and torch.is_autocast_enabled(kind):
        return torch.get_autocast_dtype(kind)
    return None


def _cast(dtype: torch.dtype, *tensors):
    """autocast's cast: floating-point tensors other than float64 to dtype; None, integer and float64 ones as given."""
    return tuple(t if t is None or not t.is_floating_point() or t.dtype in (dtype, torch.float64) else t.to(dtype)
                 for t in tensors)


def _warn_once(reason: str) -> None:
    if reason not in _WARNED:
        _WARNED.add(reason)
        warnings.warn(reason, stacklevel=3)


def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return backend


def _triton_importable() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def resolve(backend: str, tensor: torch.Tensor) -> str:
    """The implementation a call takes: 'triton', 'eager' or 'sdpa'."""
    check_backend(backend)
    if backend == "auto":  # the kernels take fp32/bf16/fp16; anything else (e.g. a float64 model) runs on PyTorch
        kernel_ok = tensor.is_cuda and tensor.dtype in _KERNEL_DTYPES and _triton_importable()
        return "triton" if kernel_ok else "sdpa"
    if backend == "triton":
        if not _triton_importable():
            raise ValueError("backend='triton' needs the triton package (Linux); install it or use backend='eager'")
        if not tensor.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
            raise ValueError(
                f"backend='triton' got tensors on {tensor.device}: the Triton kernels run on CUDA tensors, or on CPU "
                "only under the Triton interpreter (set TRITON_INTERPRET=1 before importing triton); "
                "use backend='auto' or 'eager' for CPU inference"
            )
    return backend


def attention_implementation(backend: str, param: torch.Tensor | None) -> str:
    """The `config._attn_implementation` of a model whose parameters are like `param`: "eager", "sdpa"
    (transformers' own names, for the paths that compute what theirs compute) or "siglip_fast_triton" (the fused
    kernels; a name no transformers code path special-cases, as for any attention registered outside transformers)."""
    impl = check_backend(backend)
    if impl == "auto":
        impl = resolve("auto", param) if param is not None and param.device.type != "meta" else "sdpa"
    return "siglip_fast_triton" if impl == "triton" else impl


def check_attention_mask(attention_mask, batch: int, keys: int, device: torch.device, name: str = "attention_mask"):
    """The one mask rule of every backend → a bool (B, Nk) mask (True = attend), or None when nothing is masked.

    Accepted: bool, or integer/float holding only 0 and 1 (1 = attend: transformers' 2-D padding convention).
    Anything else, e.g. an additive float mask (0 / -inf), is a ValueError: read as 0/1 it would silently invert.
    The values of a non-bool mask and "is anything masked" are read with one host sync; while torch.compile traces
    the check is a device-side assert instead (no sync, no graph break) and the mask is always kept.
    """
    m = attention_mask
    if not isinstance(m, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or None, got {type(m).__name__}")
    if tuple(m.shape) != (batch, keys):
        raise ValueError(f"{name} must have shape (batch, sequence length) = {(batch, keys)}, got {tuple(m.shape)}")
    if m.dtype.is_complex:
        raise TypeError(f"{name} must be bool, integer or float (1 = attend, 0 = masked), got {m.dtype}")
    if m.device != torch.device(device):
        raise ValueError(f"{name} must be on the model's device {device}, got a tensor on {m.device}")
    keep = m if m.dtype == torch.bool else m != 0
    if m.device.type == "meta":
        return keep
    msg = (f"{name} must hold only 0 (masked) and 1 (attend), transformers' 2-D padding convention; an additive "
           f"mask (0 / -inf or finfo.min) is not accepted: pass (mask == 0) for one")
    if torch.compiler.is_compiling():
        if m.dtype != torch.bool:
            torch._assert_async(((m == 0) | (m == 1)).all(), msg)
        return keep
    if m.dtype == torch.bool:
        return None if bool(m.all()) else m
    binary, everything = torch.stack([((m == 0) | (m == 1)).all(), (m == 1).all()]).tolist()  # one sync
    if not binary:
        bad = m[(m != 0) & (m != 1)][0].item()
        raise ValueError(f"{msg} (got the value {bad} in a {m.dtype} mask)")
    return None if everything else keep


def _zero_masked_keys(keep: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
    """k, v (B, Nk, H, d) with each row's masked keys zeroed (keep (B, Nk) bool; a row that attends to no key keeps
    them all: it averages every key, as transformers'). A masked key already weighs exactly 0 (its score + finfo.min
    is finfo.min for any |score| < 1e31), so finite inputs give the same result bit for bit; but 0 · NaN is NaN, so
    without this a NaN / inf in one padding token (or an overflow, e.g. 1e30 pixels through a LayerNorm) made every
    token of its row NaN. The fused kernel does the same in its loads (it skips masked scores and values). This
    protects the forward; a backward through non-finite padding still gives NaN weight gradients (the padding tokens'
    own backward multiplies their zero gradient by their NaN activations), so training inputs need finite padding,
    as the image processor gives (zeros)."""
    drop = (~keep & keep.any(-1, keepdim=True))[:, :, None, None]  # (B, Nk, 1, 1)
    return k.masked_fill(drop, 0), v.masked_fill(drop, 0)


def attention(q, k, v, attention_mask=None, *, scale: float, backend: str, dropout_p: float = 0.0,
              need_probs: bool = False):
    """q (B, Nq, H, d), k/v (B, Nk, H, d), attention_mask (B, Nk) True = attend → ((B, Nq, H, d), probs or None).

    A non-bool mask goes through `check_attention_mask` (the model passes bool masks it already checked).
    Returning the probabilities (``output_attentions``) or applying attention dropout needs the N×N matrix, so those
    calls take the eager reference whatever the backend. Head dims above 128 take SDPA on the Triton backend.
    """
    from .kernels.attention import attention as attention_kernel
    from .kernels.attention import attention_reference

    impl = resolve(backend, q)
    amp = _autocast_dtype(q)
    if amp is not None:  # attention is a GEMM-like op for autocast (matmul, scaled_dot_product_attention)
        q, k, v = _cast(amp, q, k, v)
    if attention_mask is not None and attention_mask.dtype != torch.bool:
        attention_mask = check_attention_mask(attention_mask, k.shape[0], k.shape[1], k.device)
    if impl == "triton" and q.shape[-1] > MAX_TRITON_HEAD_DIM:
        _warn_once(f"siglip_fast: the Triton attention kernel takes head dims up to {MAX_TRITON_HEAD_DIM}; head dim "
                   f"{q.shape[-1]} runs through PyTorch SDPA instead (the other fused ops still run)")
        impl = "sdpa"
    if attention_mask is not None and (impl != "triton" or need_probs or dropout_p > 0.0):
        k, v = _zero_masked_keys(attention_mask.bool(), k, v)
    if need_probs or dropout_p > 0.0:
        return attention_reference(q, k, v, attention_mask=attention_mask, scale=scale, dropout_p=dropout_p,
                                   return_probs=True)
    if impl == "triton":
        return attention_kernel(q, k, v, attention_mask=attention_mask, scale=scale), None
    if impl == "sdpa":
        mask = None
        if attention_mask is not None:  # additive finfo.min, as the eager path: a fully masked row averages all keys
            keep = attention_mask.bool()[:, None, None, :]  # (B, 1, 1, Nk)
            mask = torch.zeros(keep.shape, dtype=q.dtype, device=q.device).masked_fill(~keep, torch.finfo(q.dtype).min)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                             attn_mask=mask, scale=scale)
        return out.transpose(1, 2), None
    return attention_reference(q, k, v, attention_mask=attention_mask, scale=scale), None


def patch_embed(pixel_values, weight, bias, position_embedding, patch_size: int, *, backend: str):
    """pixel_values (B, C, H, W) float or uint8 → tokens (B, N, D) with bias and position embedding added."""
    from .kernels.patch_embed import patch_embed as patch_embed_kernel
    from .kernels.patch_embed import patch_embed_reference

    fn = patch_embed_kernel if resolve(backend, weight) == "triton" else patch_embed_reference
    amp = _autocast_dtype(weight)
    if amp is not None:  # the convolution in the autocast dtype; the table keeps its dtype (the add promotes)
        pixel_values, weight, bias = _cast(amp, pixel_values, weight, bias)
    return fn(pixel_values, weight, bias, position_embedding, patch_size)


def layer_norm(x, weight, bias, eps: float, *, backend: str, residual=None, x_is_scratch: bool = False):
    """LayerNorm over the last dim; with ``residual`` returns (LN(x + residual), x + residual).

    ``x_is_scratch``: the caller no longer needs x (a fresh GEMM output in the model), so in inference on the sdpa
    path the sum is written over it: the same values, one (tokens, D) tensor less to allocate and write.
    """
    from .kernels.layer_norm import layer_norm as layer_norm_kernel
    from .kernels.layer_norm import layer_norm_reference

    impl = resolve(backend, x)
    amp = _autocast_dtype(x)
    if amp is not None:
        if residual is not None:  # h = x + residual promotes, as eager's add: (bf16 GEMM output) + (fp32 stream)
            x, residual = _cast(torch.promote_types(x.dtype, residual.dtype), x, residual)
        if x.device.type == "cuda" and x.dtype != torch.float32:  # layer_norm is on CUDA autocast's fp32 list
            if residual is None:
                return layer_norm(x.float(), weight.float(), bias.float(), eps, backend=backend)
            h = x + residual
            return layer_norm(h.float(), weight.float(), bias.float(), eps, backend=backend), h
        if x.device.type == "cuda":
            weight, bias = _cast(torch.float32, weight, bias)
    if impl == "triton":
        return layer_norm_kernel(x, weight, bias, eps, residual=residual)
    if impl == "sdpa" and residual is not None and x_is_scratch and not torch.is_grad_enabled():
        h = x.add_(residual)
        return F.layer_norm(h, (h.shape[-1],), weight, bias, eps), h
    return layer_norm_reference(x, weight, bias, eps, residual=residual)


def linear(x, weight, bias=None, *, backend: str, activation: str | None = None, residual=None):
    """act(x @ weight.T + bias) + residual, with the epilogue fused into the GEMM on the Triton backend.

    A plain projection (bias only: QKV, out_proj, fc2, the heads) has nothing to fuse that cuBLAS does not already
    fuse (its bias epilogue), so it stays on cuBLAS. In the encoder the residual adds after out_proj and fc2 are
    fused into the LayerNorm that follows each of them (`layer_norm(..., residual=)`): one pass over the (tokens, D)
    output more than a residual epilogue in the GEMM would cost (the GEMM's output is written and read once), which
    is ~5% of fc2's GEMM time at So400m's shapes at the H100's 730 TFLOP/s and 3.0 TB/s (shared anchors: 72 us for
    215 MB against 1.27 ms for 925 GFLOP at batch 128), less than the gap expected between a Triton and a cuBLAS
    main loop (benchmarks/test_bench_linear.py measures both). The GELU of fc1 (and the MAP head's residual, which no
    LayerNorm follows) go through the fused linear with gemm="auto": per shape, the fused Triton GEMM or cuBLAS +
    in-place elementwise passes, whichever timed faster on the first call (see siglip_fast.kernels.linear).
    """
    from .kernels.linear import linear as linear_kernel
    from .kernels.linear import linear_reference

    impl = resolve(backend, x)
    amp = _autocast_dtype(x)
    if amp is not None:  # linear is on autocast's lower-precision list; the residual add promotes (eager's + does)
        x, weight, bias = _cast(amp, x, weight, bias)
        if residual is not None and residual.dtype not in (x.dtype, torch.float32):
            residual = residual.to(torch.promote_types(x.dtype, residual.dtype))
    if impl == "triton" and (activation is not None or residual is not None):
        return linear_kernel(x, weight, bias, activation=activation, residual=residual)
    if impl == "sdpa" and activation == "gelu_tanh" and residual is None and not torch.is_grad_enabled():
        # inference on the PyTorch path: the GELU overwrites the GEMM output (the same values as the reference,
        # without allocating and writing a second (tokens, intermediate) tensor; autograd would need the input)
        return torch.ops.aten.gelu_(F.linear(x, weight, bias), approximate="tanh")
    return linear_reference(x, weight, bias, activation=activation, residual=residual)


def sigmoid_loss(image_embeds, text_embeds, logit_scale, logit_bias, *, backend: str):
    """The SigLIP loss of one (square) batch, never materialising the N×N logits on the fused path."""
    from .loss import sigmoid_loss as _sigmoid_loss

    impl = resolve(backend, image_embeds)
    return _sigmoid_loss(image_embeds, text_embeds, logit_scale, logit_bias,
                         backend="triton" if impl == "triton" else "eager")
