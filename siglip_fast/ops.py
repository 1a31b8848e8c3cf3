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
    if attention_mask is not None and attention_mask.dtype != torch.bool:
        attention_mask = check_attention_mask(attention_mask, k.shape[0], k.shape[1], k.device)
    if impl == "triton" and q.shape[-1] > MAX_TRITON_HEAD_DIM:
        _warn_once(f"siglip_fast: the Triton attention kernel takes head dims up to {MAX_TRITON_HEAD_DIM}; head dim "
                   f"{q.shape[-1]} runs through PyTorch SDPA instead (the other fused ops still run)")
        impl = "sdpa"
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
    return fn(pixel_values, weight, bias, position_embedding, patch_size)


def layer_norm(x, weight, bias, eps: float, *, backend: str, residual=None, x_is_scratch: bool = False):
    """LayerNorm over the last dim; with ``residual`` returns (LN(x + residual), x + residual).

    ``x_is_scratch``: the caller no longer needs x (a fresh GEMM output in the model), so in inference on the sdpa
    path the sum is written over it: the same values, one (tokens, D) tensor less to allocate and write.
    """
    from .kernels.layer_norm import layer_norm as layer_norm_kernel
    from .kernels.layer_norm import layer_norm_reference

    impl = resolve(backend, x)
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
