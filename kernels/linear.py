"""Fused linear: act(x @ W^T + b) + residual in one Triton GEMM whose epilogue does the elementwise work.

SigLIP's MLP is `fc2(gelu_tanh(fc1(x)))` and every block adds a residual after `fc2` / `out_proj`. Eager PyTorch runs
the bias add, the GELU and the residual add as extra passes over (tokens x 4304) / (tokens x 1152) tensors; here the
GEMM applies them to its fp32 accumulator before the single store.

Forward: a tiled matmul (BLOCK_M x BLOCK_N x BLOCK_K, fp32 accumulation, grouped program order so that GROUP_M row
tiles reuse the same weight columns from L2) that handles every edge (row / column loads wrap onto valid memory, one
masked K-tail step, masked stores), so M, N and K can be any size (K = 1152, N = 4304 = 16 * 269, ...). x is read
through its strides (up to two non-mergeable leading dims, no copy); the output is contiguous, in x's dtype.

Backward: dZ = dOut * gelu'(pre) (one fused elementwise Triton kernel), then dX = dZ @ W, dW = dZ^T @ X,
db = sum_rows dZ with torch matmuls (cuBLAS) and d(residual) = dOut.

Trade-off, pre-activation for the GELU backward: it is either saved by the forward (one extra M x N write, only when
autograd will need it) or recomputed in the backward by a second forward GEMM (2*M*N*K more FLOPs, +50% on the layer's
backward). We save it: the extra write costs far less than a GEMM at SigLIP's shapes, it is the same tensor eager
PyTorch keeps (the fc1 output), so training memory equals eager's, and inference (no grad) skips the write entirely,
keeping the full saving of the fused epilogue.

Which GEMM (`gemm="auto"`, the default on CUDA): the fused epilogue saves one or two passes over the output, but
only pays if the Triton GEMM's main loop is within a few percent of cuBLAS on the card at hand, which no fixed rule
predicts across GPUs, dtypes and shapes. So, as torch.compile's max-autotune does, the first call of each
(device, dtype, M rounded up to a power of two, N, K, epilogue) times both candidates on the live inputs, the fused
Triton GEMM and torch's GEMM (cuBLAS, bias in its epilogue) followed by in-place elementwise passes, and keeps the
faster for that key: the layer is never slower than the unfused path. The choice, like Triton's autotuning, is made
outside CUDA-graph capture (run a shape once before capturing it); `gemm_choices()` lists what was picked.
"""

from __future__ import annotations

import math
import os
from typing import Optional

import torch
import torch.nn.functional as F

from ._triton import tl, triton

_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
_CPU_OK = _INTERPRET  # CPU tensors accepted: under the interpreter (benchmarks.codegen also sets it to compile on CPU)
ACTIVATIONS = (None, "gelu_tanh")
_ACT_CODE = {None: 0, "gelu_tanh": 1}
_SQRT_2_OVER_PI = 0.7978845608028654
_GELU_C = 0.044715

# ----------------------------------------------------------------------------------------------------------------
# Triton kernels
# ----------------------------------------------------------------------------------------------------------------


def _fwd_configs():
    if _INTERPRET:
        # One small config under the interpreter: several tiles per dim so CI exercises the tails and the grouping.
        return [triton.Config({"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 32, "GROUP_M": 2}, num_warps=4, num_stages=1)]
    cfgs = []
    for bm, bn, bk, warps, stages in [
        (128, 256, 64, 8, 3),
        (256, 128, 64, 8, 3),
        (128, 128, 64, 4, 4),
        (128, 128, 64, 8, 3),
        (128, 64, 64, 4, 4),
        (64, 128, 64, 4, 4),
        (128, 256, 32, 8, 4),
        (64, 64, 64, 4, 4),
    ]:
        cfgs.append(triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8},
                                  num_warps=warps, num_stages=stages))
    return cfgs


@triton.jit
def _gelu_tanh(z):
    # 0.5 z (1 + tanh(u)) == z * sigmoid(2u), u = sqrt(2/pi) (z + 0.044715 z^3): no cancellation, no tanh intrinsic.
    u = 0.7978845608028654 * (z + 0.044715 * z * z * z)
    return z / (1.0 + tl.exp(-2.0 * u))


# Every config overwrites out/pre (no accumulation into them, no in-place input), so autotuning on the live buffers
# needs neither reset_to_zero nor restore_value.
# Keyed on M rounded up to a power of two, not M itself: every batch size would otherwise re-tune.
@triton.autotune(configs=_fwd_configs(), key=["M_BUCKET", "N", "K"])
@triton.heuristics({"EVEN_K": lambda args: args["K"] % args["BLOCK_K"] == 0,
                    "K_REM": lambda args: args["K"] % args["BLOCK_K"]})
@triton.jit
def _linear_fwd_kernel(
    x_ptr,  # input, shape (R0, R1, K) read via strides; row m = (m // R1, m % R1)
    w_ptr,  # weight, shape (N, K) via strides
    b_ptr,  # bias, shape (N,) (unused unless HAS_BIAS)
    r_ptr,  # residual, shape (Q0, Q1, N) via strides (unused unless HAS_RESIDUAL)
    out_ptr,  # output, shape (M, N), contiguous
    pre_ptr,  # pre-activation x @ W^T + b, shape (M, N), contiguous (unused unless STORE_PRE)
    M, N, K,
    M_BUCKET,  # next power of two of M: the autotuning key only
    X_R1, stride_x0, stride_x1, stride_xk,
    stride_wn, stride_wk,
    stride_b,
    R_R1, stride_r0, stride_r1, stride_rn,
    HAS_BIAS: tl.constexpr,
    ACTIVATION: tl.constexpr,  # 0: none, 1: gelu_tanh
    HAS_RESIDUAL: tl.constexpr,
    STORE_PRE: tl.constexpr,
    DOT_PRECISION: tl.constexpr,  # "ieee" or "tf32" (only matters for fp32 inputs)
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    EVEN_K: tl.constexpr,
    K_REM: tl.constexpr,  # K % BLOCK_K: a compile-time tail mask (its alignment known, so its loads vectorise)
):
    # Grouped ordering: GROUP_M row tiles sweep the column tiles together, so a weight tile is reused from L2.
    pid = tl.program_id(0)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    num_pid_in_group = GROUP_M * num_pid_n
    group_id = pid // num_pid_in_group
    first_pid_m = group_id * GROUP_M
    group_size_m = min(num_pid_m - first_pid_m, GROUP_M)
    pid_m = first_pid_m + ((pid % num_pid_in_group) % group_size_m)
    pid_n = (pid % num_pid_in_group) // group_size_m

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # (BLOCK_M,)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # (BLOCK_N,)
    offs_k = tl.arange(0, BLOCK_K)  # (BLOCK_K,)
    mask_m = offs_m < M
    mask_n = offs_n < N

    # Out-of-range rows / columns wrap onto valid ones, so the main loop's loads need no mask; the store masks them.
    rows_ld = (offs_m % M).to(tl.int64)
    cols_ld = (offs_n % N).to(tl.int64)
    x_row = (rows_ld // X_R1) * stride_x0 + (rows_ld % X_R1) * stride_x1  # (BLOCK_M,)
    x_ptrs = x_ptr + x_row[:, None] + offs_k[None, :] * stride_xk  # (BLOCK_M, BLOCK_K)
    w_ptrs = w_ptr + cols_ld[None, :] * stride_wn + offs_k[:, None] * stride_wk  # (BLOCK_K, BLOCK_N)

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for _ in range(0, K // BLOCK_K):
        a = tl.load(x_ptrs)
        b = tl.load(w_ptrs)
        acc = tl.dot(a, b, acc, input_precision=DOT_PRECISION)
        x_ptrs += BLOCK_K * stride_xk
        w_ptrs += BLOCK_K * stride_wk
    if not EVEN_K:  # the K tail (e.g. K = 4304 = 67 * 64 + 16): one masked step
        mask_k = offs_k < K_REM
        a = tl.load(x_ptrs, mask=mask_k[None, :], other=0.0)
        b = tl.load(w_ptrs, mask=mask_k[:, None], other=0.0)
        acc = tl.dot(a, b, acc, input_precision=DOT_PRECISION)

    # Epilogue, in fp32: bias -> (store pre) -> activation -> residual -> single store in the output dtype.
    if HAS_BIAS:
        bias = tl.load(b_ptr + offs_n * stride_b, mask=mask_n, other=0.0).to(tl.float32)  # (BLOCK_N,)
        acc += bias[None, :]
    rows = offs_m.to(tl.int64)
    mask = mask_m[:, None] & mask_n[None, :]
    out_offs = rows[:, None] * N + offs_n[None, :]  # (BLOCK_M, BLOCK_N) into the contiguous (M, N)
    if STORE_PRE:
        tl.store(pre_ptr + out_offs, acc.to(pre_ptr.dtype.element_ty), mask=mask)
    if ACTIVATION == 1:
        acc = _gelu_tanh(acc)
    if HAS_RESIDUAL:
        r_row = (rows // R_R1) * stride_r0 + (rows % R_R1) * stride_r1
        res = tl.load(r_ptr + r_row[:, None] + offs_n[None, :] * stride_rn, mask=mask, other=0.0)
        acc += res.to(tl.float32)
    tl.store(out_ptr + out_offs, acc.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _linear_bwd_kernel(
    grad_ptr,  # dOut, shape (numel,), contiguous
    pre_ptr,  # saved pre-activation, shape (numel,), contiguous
    dz_ptr,  # dZ = dOut * gelu'(pre), shape (numel,), contiguous
    numel,
    BLOCK: tl.constexpr,
):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    g = tl.load(grad_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    z = tl.load(pre_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    # gelu(z) = z * s, s = sigmoid(2u): gelu'(z) = s + z * s * (1 - s) * 2 u'(z), u' = sqrt(2/pi) (1 + 3 c z^2).
    u = 0.7978845608028654 * (z + 0.044715 * z * z * z)
    s = 1.0 / (1.0 + tl.exp(-2.0 * u))
    du = 0.7978845608028654 * (1.0 + 3.0 * 0.044715 * z * z)
    dgelu = s + 2.0 * z * s * (1.0 - s) * du
    tl.store(dz_ptr + offs, (g * dgelu).to(dz_ptr.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------------------------------------------

_KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _empty(shape, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Every buffer a launcher hands to a kernel comes from here (the tests poison it with NaN)."""
    return torch.empty(shape, device=device, dtype=dtype)


def _row_layout(t: torch.Tensor) -> tuple[torch.Tensor, int, int, int]:
    """Describe the rows of t (..., C) as (R0, R1) with strides (s0, s1): row m sits at (m // R1) * s0 +
    (m % R1) * s1. Leading dims are merged where their strides allow; a tensor that still needs more than two
    row dims (rare: several non-mergeable leading dims) is copied to contiguous memory."""
    dims = [(size, stride) for size, stride in zip(t.shape[:-1], t.stride()[:-1], strict=True) if size != 1]
    merged: list[list[int]] = []
    for size, stride in reversed(dims):  # innermost first
        if merged and merged[-1][1] * merged[-1][0] == stride:
            merged[-1][0] *= size
        else:
            merged.append([size, stride])
    if len(merged) > 2:
        t = t.contiguous()
        rows = t.numel() // t.shape[-1] if t.shape[-1] else 0
        return t, max(rows, 1), 0, t.stride(-2) if t.dim() > 1 else 0
    inner = merged[0] if merged else [1, 0]
    outer = merged[1] if len(merged) > 1 else [1, 0]
    return t, inner[0], outer[1], inner[1]


def _check_inputs(x, weight, bias, activation, residual) -> None:
    for name, t in (("x", x), ("weight", weight)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"linear: {name} must be a torch.Tensor, got {type(t).__name__}")
    for name, t in (("bias", bias), ("residual", residual)):
        if t is not None and not isinstance(t, torch.Tensor):
            raise TypeError(f"linear: {name} must be a torch.Tensor or None, got {type(t).__name__}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"linear: activation must be one of {ACTIVATIONS}, got {activation!r}")
    if x.dim() < 1:
        raise ValueError(f"linear: x must have shape (..., K), got a 0-d tensor of shape {tuple(x.shape)}")
    if weight.dim() != 2:
        raise ValueError(f"linear: weight must have shape (N, K), got {tuple(weight.shape)}")
    n, k = weight.shape
    if x.shape[-1] != k:
        raise ValueError(f"linear: x must have shape (..., K) with K = weight.shape[1] = {k}, got {tuple(x.shape)}")
    if bias is not None and tuple(bias.shape) != (n,):
        raise ValueError(f"linear: bias must have shape (N,) = ({n},), got {tuple(bias.shape)}")
    out_shape = (*x.shape[:-1], n)
    if residual is not None and tuple(residual.shape) != out_shape:
        raise ValueError(f"linear: residual must have the output's shape (..., N) = {out_shape}, "
                         f"got {tuple(residual.shape)}")
    if not x.dtype.is_floating_point:
        raise TypeError(f"linear: x must be a floating-point tensor, got dtype {x.dtype}")
    for name, t in (("weight", weight), ("bias", bias), ("residual", residual)):
        if t is None:
            continue
        if name == "residual" and t.dtype == torch.float32:  # under torch.autocast: a bf16/fp16 GEMM, an fp32 stream
            pass
        elif t.dtype != x.dtype:
            what = "x's dtype" + (" or float32" if name == "residual" else "")
            raise TypeError(f"linear: {name} must have {what} {x.dtype}, got {t.dtype}")
        if t.device != x.device:
            raise ValueError(f"linear: {name} must be on x's device {x.device}, got {t.device}")


def _check_kernel_device(x: torch.Tensor) -> None:
    if x.dtype not in _KERNEL_DTYPES:
        raise TypeError(f"linear: the Triton kernel supports dtypes {_KERNEL_DTYPES}, got x of dtype {x.dtype}")
    if x.device.type == "cuda":
        return
    if x.device.type == "cpu" and _CPU_OK:
        return
    raise ValueError(f"linear: the Triton kernel needs CUDA tensors (or CPU tensors with TRITON_INTERPRET=1 set "
                     f"before triton is imported), got x on {x.device}")


def _out_dtype(x: torch.Tensor, residual: Optional[torch.Tensor]) -> torch.dtype:
    """The output's dtype: that of `residual + act(x @ W^T + b)` in eager PyTorch, i.e. x's, or float32 for an fp32
    residual added to a low-precision GEMM (torch.autocast); the epilogue adds it in fp32 and rounds once."""
    return x.dtype if residual is None else torch.promote_types(x.dtype, residual.dtype)


def _dot_precision(dtype: torch.dtype) -> str:
    # fp32 follows torch's own rule for F.linear: TF32 only when torch.backends.cuda.matmul.allow_tf32 is set.
    if dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32:
        return "ieee"
    return "tf32"


def linear_fwd(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], activation: Optional[str],
               residual: Optional[torch.Tensor], save_pre: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the fused forward. Returns (out (..., N), pre (..., N) or an empty tensor when not saved)."""
    _check_inputs(x, weight, bias, activation, residual)
    _check_kernel_device(x)
    if _INTERPRET and x.dtype == torch.bfloat16:  # the interpreter's bf16 tl.dot is wrong: run in fp32, round back
        up = lambda t: None if t is None else t.float()  # noqa: E731
        out, pre = linear_fwd(x.float(), weight.float(), up(bias), activation, up(residual), save_pre)
        return out.to(_out_dtype(x, residual)), pre.to(x.dtype)
    n, k = weight.shape
    out_shape = (*x.shape[:-1], n)
    m = math.prod(x.shape[:-1])
    out = _empty(out_shape, x.device, _out_dtype(x, residual))  # (..., N), contiguous
    store_pre = bool(save_pre) and activation is not None
    pre = _empty(out_shape if store_pre else (0,), x.device, x.dtype)
    if out.numel() == 0:
        return out, pre
    x, x_r1, sx0, sx1 = _row_layout(x)
    if residual is not None:
        residual, r_r1, sr0, sr1 = _row_layout(residual)
        srn = residual.stride(-1)
    else:
        r_r1, sr0, sr1, srn = 1, 0, 0, 0
    grid = lambda meta: (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"]),)
    _linear_fwd_kernel[grid](
        x, weight, bias if bias is not None else out, residual if residual is not None else out, out,
        pre if store_pre else out,
        m, n, k, triton.next_power_of_2(m),
        x_r1, sx0, sx1, x.stride(-1),
        weight.stride(0), weight.stride(1),
        bias.stride(0) if bias is not None else 0,
        r_r1, sr0, sr1, srn,
        HAS_BIAS=bias is not None, ACTIVATION=_ACT_CODE[activation], HAS_RESIDUAL=residual is not None,
        STORE_PRE=store_pre, DOT_PRECISION=_dot_precision(x.dtype),
    )
    return out, pre


def linear_torch_fwd(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], activation: Optional[str],
                     residual: Optional[torch.Tensor], save_pre: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The unfused candidate, same contract as linear_fwd: torch's GEMM (cuBLAS on CUDA, bias fused by it), then the
    GELU and the residual add as in-place passes over the GEMM's own output (a copy only when pre must be kept)."""
    _check_inputs(x, weight, bias, activation, residual)
    store_pre = bool(save_pre) and activation is not None
    y = F.linear(x, weight, bias).contiguous()  # (..., N)
    pre = y if store_pre else y.new_empty((0,))
    if activation == "gelu_tanh":
        y = F.gelu(y, approximate="tanh") if store_pre else torch.ops.aten.gelu_(y, approximate="tanh")
    if residual is not None:
        y = y.to(_out_dtype(x, residual)).add_(residual)
    return y, pre


GEMMS = ("auto", "triton", "torch")
_CHOICES: dict[tuple, str] = {}


def gemm_choices() -> dict[tuple, str]:
    """What gemm="auto" picked so far: {(device, dtype, M bucket, N, K, activation, bias, residual, save_pre):
    "triton" | "torch"}."""
    return dict(_CHOICES)


def _gemm_key(x, weight, bias, activation, residual, store_pre) -> tuple:
    n, k = weight.shape
    m = math.prod(x.shape[:-1])
    return (str(x.device), x.dtype, triton.next_power_of_2(max(m, 1)), n, k, activation, bias is not None,
            residual is not None, store_pre)


def _time_candidates(x, weight, bias, activation, residual, save_pre) -> dict[str, float]:
    """Median ms of each candidate on the live inputs (both allocate their own outputs; nothing is overwritten)."""
    from triton.testing import do_bench

    args = (x, weight, bias, activation, residual, save_pre)
    linear_fwd(*args)  # the Triton GEMM's own autotuning, out of the timing
    return {name: float(do_bench(lambda fn=fn: fn(*args), warmup=5, rep=20, return_mode="median"))
            for name, fn in (("triton", linear_fwd), ("torch", linear_torch_fwd))}


def _choose(key: tuple, timer) -> str:
    """The cached pick for key, timing the candidates with timer() the first time."""
    if key not in _CHOICES:
        if torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
            raise RuntimeError(f"linear: no GEMM choice yet for {key} and a CUDA graph is being captured; run this "
                               "shape once before capturing (timing and autotuning cannot be captured)")
        ms = timer()
        _CHOICES[key] = min(ms, key=ms.get)
    return _CHOICES[key]


def _check_gemm(gemm: str) -> None:
    if gemm not in GEMMS:
        raise ValueError(f"linear: gemm must be one of {GEMMS}, got {gemm!r}")


def _dispatch(x, weight, bias, activation, residual, save_pre, gemm: str):
    _check_gemm(gemm)
    if gemm == "auto":
        if x.device.type != "cuda":  # the interpreter runs (and tests) the Triton kernel; timings there mean nothing
            gemm = "triton"
        else:
            store_pre = bool(save_pre) and activation is not None
            key = _gemm_key(x, weight, bias, activation, residual, store_pre)
            gemm = _choose(key, lambda: _time_candidates(x, weight, bias, activation, residual, save_pre))
    fn = linear_fwd if gemm == "triton" else linear_torch_fwd
    return fn(x, weight, bias, activation, residual, save_pre)


def linear_gelu_bwd(grad_out: torch.Tensor, pre: torch.Tensor) -> torch.Tensor:
    """dZ = grad_out * gelu_tanh'(pre), in grad_out's dtype, shape of pre (contiguous)."""
    if grad_out.shape != pre.shape:
        raise ValueError(f"linear backward: grad_out must have pre's shape {tuple(pre.shape)}, "
                         f"got {tuple(grad_out.shape)}")
    _check_kernel_device(pre)
    grad_out = grad_out.contiguous()
    pre = pre.contiguous()
    dz = _empty(pre.shape, pre.device, grad_out.dtype)
    numel = pre.numel()
    if numel == 0:
        return dz
    block = 1024 if _INTERPRET else 2048
    _linear_bwd_kernel[(triton.cdiv(numel, block),)](grad_out, pre, dz, numel, BLOCK=block,
                                                     num_warps=4 if _INTERPRET else 8)
    return dz


# ----------------------------------------------------------------------------------------------------------------
# Custom ops and autograd
# ----------------------------------------------------------------------------------------------------------------


@torch.library.custom_op("siglip_fast::linear", mutates_args=())
def _linear_op(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], activation: Optional[str],
               residual: Optional[torch.Tensor], save_pre: bool, gemm: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, pre): pre is the saved pre-activation when save_pre and an activation is set, else an empty tensor."""
    return _dispatch(x, weight, bias, activation, residual, save_pre, gemm)


@_linear_op.register_fake
def _(x, weight, bias, activation, residual, save_pre, gemm):
    _check_gemm(gemm)
    _check_inputs(x, weight, bias, activation, residual)
    out_shape = (*x.shape[:-1], weight.shape[0])
    out = x.new_empty(out_shape, dtype=_out_dtype(x, residual))
    pre = x.new_empty(out_shape if (save_pre and activation is not None) else (0,))
    return out, pre


@torch.library.custom_op("siglip_fast::linear_gelu_bwd", mutates_args=())
def _linear_gelu_bwd_op(grad_out: torch.Tensor, pre: torch.Tensor) -> torch.Tensor:
    return linear_gelu_bwd(grad_out, pre)


@_linear_gelu_bwd_op.register_fake
def _(grad_out, pre):
    return grad_out.new_empty(pre.shape)


def _setup_context(ctx, inputs, output):
    x, weight, bias, activation, residual, save_pre, gemm = inputs
    _, pre = output
    ctx.activation = activation
    ctx.has_bias = bias is not None
    ctx.has_residual = residual is not None
    ctx.residual_dtype = None if residual is None else residual.dtype
    ctx.save_for_backward(x, weight, pre, bias)


def _backward(ctx, grad_out, _grad_pre):
    x, weight, pre, bias = ctx.saved_tensors
    need_x, need_w, need_b, _, need_r, _, _ = ctx.needs_input_grad
    n, k = weight.shape
    m = math.prod(x.shape[:-1])
    if ctx.activation is None:
        dz = grad_out
    else:
        if pre.numel() == 0 and grad_out.numel() != 0:
            # The forward ran without save_pre (called directly through the op): recompute the pre-activation.
            pre = F.linear(x, weight, bias)
        dz = torch.ops.siglip_fast.linear_gelu_bwd(grad_out, pre)
    dz2 = dz.reshape(m, n).to(x.dtype)  # (M, N); an fp32 residual made grad_out fp32: the GEMM's part is x's dtype
    grad_x = grad_w = grad_b = grad_r = None
    if need_x:
        grad_x = (dz2 @ weight).reshape(x.shape)  # (M, K) -> (..., K)
    if need_w:
        grad_w = dz2.t() @ x.reshape(m, k)  # (N, K)
    if need_b and ctx.has_bias:
        grad_b = dz2.sum(0)  # (N,)
    if need_r and ctx.has_residual:
        grad_r = grad_out.to(ctx.residual_dtype)
    return grad_x, grad_w, grad_b, None, grad_r, None, None


_linear_op.register_autograd(_backward, setup_context=_setup_context)


# ----------------------------------------------------------------------------------------------------------------
# Public functional and eager reference
# ----------------------------------------------------------------------------------------------------------------


def linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None, *,
           activation: Optional[str] = None, residual: Optional[torch.Tensor] = None,
           gemm: str = "auto") -> torch.Tensor:
    """act(x @ weight^T + bias) + residual, fused in one Triton GEMM (or torch's GEMM + in-place passes where that
    measured faster: `gemm="auto"`, see the module docstring; "triton" / "torch" force one).

    x: (..., K) with any strides; weight: (N, K) (torch Linear convention); bias: (N,) or None;
    activation: None or "gelu_tanh" (= F.gelu(approximate="tanh")); residual: (..., N) or None.
    All tensors share x's dtype (fp16, bf16 or fp32) and device, except that the residual may be float32
    (torch.autocast: a bf16/fp16 GEMM added to an fp32 stream). Returns (..., N), contiguous, in x's dtype (float32
    with such a residual: eager's type promotion of residual + GEMM).
    fp32 inputs are multiplied in full fp32 unless torch.backends.cuda.matmul.allow_tf32 is set, as F.linear does.
    """
    _check_inputs(x, weight, bias, activation, residual)
    _check_gemm(gemm)  # before the op: a bad argument is a usage error, whatever the device
    # The pre-activation is needed only by the gradients through the GEMM (x, weight, bias), not by residual's.
    save_pre = activation is not None and torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, weight, bias))
    out, _ = torch.ops.siglip_fast.linear(x, weight, bias, activation, residual, save_pre, gemm)
    return out


def linear_reference(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None, *,
                     activation: Optional[str] = None, residual: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The eager definition, exactly as transformers computes it: F.linear, then F.gelu(approximate="tanh"),
    then + residual (each a separate pass, rounded to the input dtype in between)."""
    _check_inputs(x, weight, bias, activation, residual)
    y = F.linear(x, weight, bias)
    if activation == "gelu_tanh":
        y = F.gelu(y, approximate="tanh")
    if residual is not None:
        y = residual + y
    return y
