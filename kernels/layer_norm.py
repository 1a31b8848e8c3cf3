"""Fused LayerNorm with an optional residual add: `h = x + residual; y = LayerNorm(h)` in one pass.

SigLIP's encoder layer is pre-LN (`h = x + attn(LN1(x)); out = h + mlp(LN2(h))`), so every LayerNorm after the first
follows a residual add. The fused forward reads x and the residual once and writes both y and the residual stream h;
the backward folds the incoming gradient of h into d(residual) and reduces dweight/dbias deterministically (per-program
fp32 partials, then one torch sum; no atomics).

Layout: Triton kernels -> launchers (validate, allocate, pick the grid) -> torch custom ops with fake and autograd
registrations (the thin autograd layer; torch.compile traces through them) -> public `layer_norm` -> the eager
`layer_norm_reference`.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from ._triton import tl, triton

_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
_CPU_OK = _INTERPRET  # CPU tensors accepted: under the interpreter (benchmarks.codegen also sets it to compile on CPU)

# Widest row one program holds in registers; SigLIP's widths are 768 (B), 1024 (L), 1152 (So400m), 1536 (g).
MAX_D = 16384
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


# ----------------------------------------------------------------------------------------------------------------------
# Triton kernels
# ----------------------------------------------------------------------------------------------------------------------
@triton.jit
def _layer_norm_fwd_kernel(
    X,  # pointer to input, shape (n_rows, D), row stride stride_x
    R,  # pointer to residual, shape (n_rows, D), row stride stride_r (unused unless HAS_RESIDUAL)
    W,  # pointer to weight, shape (D,)
    B,  # pointer to bias, shape (D,)
    Y,  # pointer to output, shape (n_rows, D), row stride stride_y
    H,  # pointer to residual-stream output x + residual, shape (n_rows, D), row stride stride_h (if HAS_RESIDUAL)
    Mean,  # pointer to the row means, fp32, shape (n_rows,)
    Rstd,  # pointer to the row 1/std, fp32, shape (n_rows,)
    n_rows,
    D,
    stride_x,
    stride_r,
    stride_y,
    stride_h,
    eps,
    HAS_RESIDUAL: tl.constexpr,
    BLOCK_M: tl.constexpr,  # rows per program
    BLOCK_D: tl.constexpr,  # next power of two >= D
):
    pid = tl.program_id(0)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)  # (BLOCK_M,)
    cols = tl.arange(0, BLOCK_D)  # (BLOCK_D,)
    row_mask = rows < n_rows
    col_mask = cols < D
    mask = row_mask[:, None] & col_mask[None, :]  # (BLOCK_M, BLOCK_D)
    rows64 = rows.to(tl.int64)

    x = tl.load(X + rows64[:, None] * stride_x + cols[None, :], mask=mask, other=0.0)
    if HAS_RESIDUAL:
        r = tl.load(R + rows64[:, None] * stride_r + cols[None, :], mask=mask, other=0.0)
        # Round the sum to the storage dtype first, exactly as the eager `x + residual` does, and normalise that.
        h = (x.to(tl.float32) + r.to(tl.float32)).to(H.dtype.element_ty)
        tl.store(H + rows64[:, None] * stride_h + cols[None, :], h, mask=mask)
        x = h
    x = x.to(tl.float32)

    mean = tl.sum(x, axis=1) / D  # (BLOCK_M,)
    xc = tl.where(mask, x - mean[:, None], 0.0)
    var = tl.sum(xc * xc, axis=1) / D  # biased, as F.layer_norm
    rstd = 1.0 / tl.sqrt(var + eps)
    w = tl.load(W + cols, mask=col_mask, other=0.0).to(tl.float32)
    b = tl.load(B + cols, mask=col_mask, other=0.0).to(tl.float32)
    y = xc * rstd[:, None] * w[None, :] + b[None, :]

    tl.store(Y + rows64[:, None] * stride_y + cols[None, :], y.to(Y.dtype.element_ty), mask=mask)
    tl.store(Mean + rows, mean, mask=row_mask)
    tl.store(Rstd + rows, rstd, mask=row_mask)


@triton.jit
def _layer_norm_bwd_kernel(
    DY,  # pointer to the gradient of y, shape (n_rows, D), row stride stride_dy
    DH,  # pointer to the incoming gradient of h, shape (n_rows, D), row stride stride_dh (if HAS_DH)
    H,  # pointer to the normalised input (h, or x without residual), shape (n_rows, D), row stride stride_h
    W,  # pointer to weight, shape (D,)
    Mean,  # pointer to the saved row means, fp32, shape (n_rows,)
    Rstd,  # pointer to the saved row 1/std, fp32, shape (n_rows,)
    DX,  # pointer to the gradient of the input (= d residual), shape (n_rows, D), contiguous
    DW,  # pointer to per-program partial dweight, fp32, shape (n_programs, D), contiguous
    DB,  # pointer to per-program partial dbias, fp32, shape (n_programs, D), contiguous
    n_rows,
    D,
    stride_dy,
    stride_dh,
    stride_h,
    rows_per_program,  # a multiple of BLOCK_M
    HAS_DH: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_D)  # (BLOCK_D,)
    col_mask = cols < D
    w = tl.load(W + cols, mask=col_mask, other=0.0).to(tl.float32)
    dw_acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
    db_acc = tl.zeros((BLOCK_D,), dtype=tl.float32)

    row_start = pid * rows_per_program
    for off in range(0, rows_per_program, BLOCK_M):
        rows = row_start + off + tl.arange(0, BLOCK_M)  # (BLOCK_M,)
        row_mask = rows < n_rows
        mask = row_mask[:, None] & col_mask[None, :]  # (BLOCK_M, BLOCK_D)
        rows64 = rows.to(tl.int64)

        dy = tl.load(DY + rows64[:, None] * stride_dy + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        h = tl.load(H + rows64[:, None] * stride_h + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        mean = tl.load(Mean + rows, mask=row_mask, other=0.0)
        rstd = tl.load(Rstd + rows, mask=row_mask, other=0.0)

        xhat = tl.where(mask, (h - mean[:, None]) * rstd[:, None], 0.0)
        wdy = w[None, :] * dy
        c1 = tl.sum(xhat * wdy, axis=1) / D  # (BLOCK_M,)
        c2 = tl.sum(wdy, axis=1) / D
        dx = (wdy - (xhat * c1[:, None] + c2[:, None])) * rstd[:, None]
        if HAS_DH:
            dx += tl.load(DH + rows64[:, None] * stride_dh + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        tl.store(DX + rows64[:, None] * D + cols[None, :], dx.to(DX.dtype.element_ty), mask=mask)

        dw_acc += tl.sum(dy * xhat, axis=0)
        db_acc += tl.sum(dy, axis=0)

    tl.store(DW + pid * D + cols, dw_acc, mask=col_mask)
    tl.store(DB + pid * D + cols, db_acc, mask=col_mask)


def _settings(D: int, max_tile: int) -> tuple[int, int, int]:
    """(BLOCK_D, BLOCK_M, num_warps): a Liger `calculate_settings`-style heuristic instead of autotuning.

    Small rows are packed several to a program so a tile holds about `max_tile` elements."""
    block_d = max(16, triton.next_power_of_2(D))
    block_m = max(1, min(16, max_tile // block_d))
    tile = block_m * block_d
    num_warps = 16 if tile >= 8192 else 8 if tile >= 2048 else 4
    return block_d, block_m, num_warps


# ----------------------------------------------------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------------------------------------------------
def _check_launch_device(t: torch.Tensor) -> None:
    if t.device.type != "cuda" and not _CPU_OK:
        raise ValueError(
            "layer_norm: the Triton kernel needs CUDA tensors (or TRITON_INTERPRET=1 set before triton is imported, "
            f"to run on CPU under the interpreter); got tensors on {t.device}"
        )


def _check_out(name: str, t: torch.Tensor, shape: tuple, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    if tuple(t.shape) != tuple(shape) or t.dtype != dtype or t.device != device or not t.is_contiguous():
        raise ValueError(
            f"layer_norm: `{name}` buffer must be a contiguous {dtype} tensor of shape {tuple(shape)} on {device}; "
            f"got {t.dtype} {tuple(t.shape)} on {t.device} (contiguous={t.is_contiguous()})"
        )
    return t


def _rows(t: torch.Tensor) -> torch.Tensor:
    """(..., D) -> (n_rows, D) with unit column stride; a view when the layout allows it, otherwise a copy."""
    t2 = t.reshape(-1, t.shape[-1])
    return t2 if t2.stride(-1) == 1 or t2.shape[-1] == 1 else t2.contiguous()


def _layer_norm_fwd(
    x: torch.Tensor,  # (n_rows, D), unit column stride
    weight: torch.Tensor,  # (D,)
    bias: torch.Tensor,  # (D,)
    residual: torch.Tensor | None,  # (n_rows, D), unit column stride
    eps: float,
    *,
    y: torch.Tensor | None = None,
    h: torch.Tensor | None = None,
    mean: torch.Tensor | None = None,
    rstd: torch.Tensor | None = None,
):
    """Launch the forward. Returns (y, h or None, mean, rstd). Output buffers may be passed in (tests poison them)."""
    _check_launch_device(x)
    n_rows, D = x.shape
    dev = x.device
    y = torch.empty((n_rows, D), dtype=x.dtype, device=dev) if y is None else _check_out("y", y, x.shape, x.dtype, dev)
    if residual is not None:
        h = torch.empty_like(y) if h is None else _check_out("h", h, x.shape, x.dtype, dev)
    else:
        h = None
    mean = torch.empty(n_rows, dtype=torch.float32, device=dev) if mean is None else _check_out(
        "mean", mean, (n_rows,), torch.float32, dev)
    rstd = torch.empty(n_rows, dtype=torch.float32, device=dev) if rstd is None else _check_out(
        "rstd", rstd, (n_rows,), torch.float32, dev)
    if n_rows == 0:
        return y, h, mean, rstd

    block_d, block_m, num_warps = _settings(D, max_tile=4096)
    grid = (triton.cdiv(n_rows, block_m),)
    r = residual if residual is not None else x
    hh = h if h is not None else y
    _layer_norm_fwd_kernel[grid](
        x, r, weight, bias, y, hh, mean, rstd,
        n_rows, D, x.stride(0), r.stride(0), y.stride(0), hh.stride(0), eps,
        HAS_RESIDUAL=residual is not None, BLOCK_M=block_m, BLOCK_D=block_d, num_warps=num_warps,
    )
    return y, h, mean, rstd


def _default_programs(device: torch.device, n_blocks: int) -> int:
    if device.type == "cuda":
        return min(n_blocks, 4 * torch.cuda.get_device_properties(device).multi_processor_count)
    return min(n_blocks, 4)  # the interpreter runs programs one after another: a few, each looping over rows


def _layer_norm_bwd(
    dy: torch.Tensor,  # (n_rows, D), unit column stride
    dh: torch.Tensor | None,  # (n_rows, D), unit column stride: the incoming gradient of h, added to dx
    h: torch.Tensor,  # (n_rows, D), unit column stride: what was normalised
    weight: torch.Tensor,  # (D,)
    mean: torch.Tensor,  # (n_rows,) fp32
    rstd: torch.Tensor,  # (n_rows,) fp32
    *,
    num_programs: int | None = None,
    dx: torch.Tensor | None = None,
    dw_partial: torch.Tensor | None = None,
    db_partial: torch.Tensor | None = None,
):
    """Launch the backward. Returns (dx in h's dtype, dweight in fp32, dbias in fp32).

    Each program owns a contiguous block of rows and writes its fp32 partial dweight/dbias row; the partials are
    summed here in a fixed order, so the result is deterministic."""
    _check_launch_device(h)
    n_rows, D = h.shape
    dev = h.device
    block_d, block_m, num_warps = _settings(D, max_tile=4096)
    n_blocks = triton.cdiv(n_rows, block_m)
    if num_programs is None:
        num_programs = _default_programs(dev, n_blocks)
    num_programs = max(1, min(num_programs, n_blocks))
    rows_per_program = triton.cdiv(n_blocks, num_programs) * block_m
    num_programs = triton.cdiv(n_rows, rows_per_program) if n_rows else 1

    dx = torch.empty((n_rows, D), dtype=h.dtype, device=dev) if dx is None else _check_out(
        "dx", dx, (n_rows, D), h.dtype, dev)
    dw_partial = torch.empty((num_programs, D), dtype=torch.float32, device=dev) if dw_partial is None else _check_out(
        "dw_partial", dw_partial, (num_programs, D), torch.float32, dev)
    db_partial = torch.empty((num_programs, D), dtype=torch.float32, device=dev) if db_partial is None else _check_out(
        "db_partial", db_partial, (num_programs, D), torch.float32, dev)
    if n_rows == 0:
        return dx, torch.zeros(D, dtype=torch.float32, device=dev), torch.zeros(D, dtype=torch.float32, device=dev)

    dhh = dh if dh is not None else dy
    _layer_norm_bwd_kernel[(num_programs,)](
        dy, dhh, h, weight, mean, rstd, dx, dw_partial, db_partial,
        n_rows, D, dy.stride(0), dhh.stride(0), h.stride(0), rows_per_program,
        HAS_DH=dh is not None, BLOCK_M=block_m, BLOCK_D=block_d, num_warps=num_warps,
    )
    return dx, dw_partial.sum(0), db_partial.sum(0)


# ----------------------------------------------------------------------------------------------------------------------
# Custom ops (fake + autograd): torch.compile traces through these without graph breaks
# ----------------------------------------------------------------------------------------------------------------------
@torch.library.custom_op("siglip_fast::layer_norm", mutates_args=())
def _layer_norm_op(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """LayerNorm of x (..., D). Returns (y, mean, rstd); mean/rstd (...,) fp32 are saved for the backward."""
    x2 = _rows(x)
    y, _, mean, rstd = _layer_norm_fwd(x2, weight, bias, None, eps)
    lead = x.shape[:-1]
    return y.view(x.shape), mean.view(lead), rstd.view(lead)


@_layer_norm_op.register_fake
def _(x, weight, bias, eps):
    lead = x.shape[:-1]
    return (torch.empty_like(x, memory_format=torch.contiguous_format), x.new_empty(lead, dtype=torch.float32),
            x.new_empty(lead, dtype=torch.float32))


@torch.library.custom_op("siglip_fast::layer_norm_residual", mutates_args=())
def _layer_norm_residual_op(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """h = x + residual; y = LayerNorm(h). Returns (y, h, mean, rstd)."""
    y, h, mean, rstd = _layer_norm_fwd(_rows(x), weight, bias, _rows(residual), eps)
    lead = x.shape[:-1]
    return y.view(x.shape), h.view(x.shape), mean.view(lead), rstd.view(lead)


@_layer_norm_residual_op.register_fake
def _(x, residual, weight, bias, eps):
    lead = x.shape[:-1]
    return (torch.empty_like(x, memory_format=torch.contiguous_format),
            torch.empty_like(x, memory_format=torch.contiguous_format),
            x.new_empty(lead, dtype=torch.float32), x.new_empty(lead, dtype=torch.float32))


@torch.library.custom_op("siglip_fast::layer_norm_bwd", mutates_args=())
def _layer_norm_bwd_op(
    dy: torch.Tensor, dh: torch.Tensor | None, h: torch.Tensor, weight: torch.Tensor, mean: torch.Tensor,
    rstd: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns (dx, dweight, dbias): dx (= d residual) in h's dtype, dweight/dbias in weight's dtype."""
    D = h.shape[-1]
    dx, dw, db = _layer_norm_bwd(_rows(dy), None if dh is None else _rows(dh), _rows(h), weight,
                                 mean.reshape(-1), rstd.reshape(-1))
    return dx.view(h.shape), dw.to(weight.dtype).view(D), db.to(weight.dtype).view(D)


@_layer_norm_bwd_op.register_fake
def _(dy, dh, h, weight, mean, rstd):
    dx = torch.empty_like(h, memory_format=torch.contiguous_format)
    return dx, torch.empty_like(weight), torch.empty_like(weight)


def _setup_context(ctx, inputs, output):
    if len(output) == 3:  # layer_norm: (y, mean, rstd), inputs (x, weight, bias, eps)
        x, weight = inputs[0], inputs[1]
        _, mean, rstd = output
        h = x
    else:  # layer_norm_residual: (y, h, mean, rstd), inputs (x, residual, weight, bias, eps)
        weight = inputs[2]
        _, h, mean, rstd = output
    ctx.mark_non_differentiable(mean, rstd)
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(h, weight, mean, rstd)


def _layer_norm_backward(ctx, dy, dmean, drstd):
    h, weight, mean, rstd = ctx.saved_tensors
    if dy is None:
        return None, None, None, None
    dx, dw, db = _layer_norm_bwd_op(dy, None, h, weight, mean, rstd)
    return dx, dw, db, None


def _layer_norm_residual_backward(ctx, dy, dh, dmean, drstd):
    h, weight, mean, rstd = ctx.saved_tensors
    if dy is None:
        if dh is None:
            return None, None, None, None, None
        return dh, dh, None, None, None  # y unused: the gradient of h passes straight to both summands
    dx, dw, db = _layer_norm_bwd_op(dy, dh, h, weight, mean, rstd)
    return dx, dx, dw, db, None  # d x = d residual = dh_total, as the eager add's backward does


_layer_norm_op.register_autograd(_layer_norm_backward, setup_context=_setup_context)
_layer_norm_residual_op.register_autograd(_layer_norm_residual_backward, setup_context=_setup_context)


# ----------------------------------------------------------------------------------------------------------------------
# Public functional
# ----------------------------------------------------------------------------------------------------------------------
def _validate(x, weight, bias, eps, residual) -> None:
    for name, t in (("x", x), ("weight", weight), ("bias", bias)) + ((("residual", residual),) if residual is not None
                                                                    else ()):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"layer_norm: `{name}` must be a torch.Tensor, got {type(t).__name__}")
    if x.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"layer_norm: `x` must be float16, bfloat16 or float32, got {x.dtype}")
    if x.dim() < 1 or x.shape[-1] < 1:
        raise ValueError(f"layer_norm: `x` must have shape (..., D) with D >= 1, got {tuple(x.shape)}")
    D = x.shape[-1]
    if D > MAX_D:
        raise ValueError(f"layer_norm: the last dim of `x` must be <= {MAX_D} (one row per program), got D={D}")
    for name, t in (("weight", weight), ("bias", bias)):
        if tuple(t.shape) != (D,):
            raise ValueError(f"layer_norm: `{name}` must have shape ({D},) to match x {tuple(x.shape)}, "
                             f"got {tuple(t.shape)}")
        if t.dtype not in (x.dtype, torch.float32):
            raise TypeError(f"layer_norm: `{name}` must be {x.dtype} (as x) or float32, got {t.dtype}")
        if t.device != x.device:
            raise ValueError(f"layer_norm: `{name}` must be on x's device {x.device}, got {t.device}")
    if weight.dtype != bias.dtype:
        raise TypeError(f"layer_norm: `weight` and `bias` must share a dtype, got {weight.dtype} and {bias.dtype}")
    if residual is not None:
        if tuple(residual.shape) != tuple(x.shape):
            raise ValueError(f"layer_norm: `residual` must have x's shape {tuple(x.shape)}, "
                             f"got {tuple(residual.shape)} (no broadcasting)")
        if residual.dtype != x.dtype:
            raise TypeError(f"layer_norm: `residual` must have x's dtype {x.dtype}, got {residual.dtype}")
        if residual.device != x.device:
            raise ValueError(f"layer_norm: `residual` must be on x's device {x.device}, got {residual.device}")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)):
        raise TypeError(f"layer_norm: `eps` must be a float, got {type(eps).__name__}")
    if not eps > 0:
        raise ValueError(f"layer_norm: `eps` must be > 0, got {eps}")


def layer_norm(
    x: torch.Tensor,  # (..., D)
    weight: torch.Tensor,  # (D,)
    bias: torch.Tensor,  # (D,)
    eps: float = 1e-6,
    *,
    residual: torch.Tensor | None = None,  # (..., D), x's shape and dtype
):
    """LayerNorm over the last dim with fp32 statistics, output in x's dtype (= `F.layer_norm(x, (D,), weight, bias,
    eps)`). With `residual`, computes h = x + residual and y = LayerNorm(h) in one pass and returns (y, h); h is the
    residual stream for the next add. Weight/bias may be x's dtype or fp32. Inputs whose rows are not uniformly strided
    with a unit last stride are copied to a contiguous layout first."""
    _validate(x, weight, bias, eps, residual)
    if residual is None:
        return _layer_norm_op(x, weight, bias, float(eps))[0]
    y, h, _, _ = _layer_norm_residual_op(x, residual, weight, bias, float(eps))
    return y, h


# ----------------------------------------------------------------------------------------------------------------------
# Eager reference
# ----------------------------------------------------------------------------------------------------------------------
def layer_norm_reference(
    x: torch.Tensor,  # (..., D)
    weight: torch.Tensor,  # (D,)
    bias: torch.Tensor,  # (D,)
    eps: float = 1e-6,
    *,
    residual: torch.Tensor | None = None,  # (..., D)
):
    """The eager definition, exactly what transformers' SigLIP computes: `h = x + residual` (when given), then
    `F.layer_norm(h, (D,), weight, bias, eps)`. Returns y, or (y, h) with a residual."""
    if residual is None:
        return F.layer_norm(x, (x.shape[-1],), weight, bias, eps)
    h = x + residual
    return F.layer_norm(h, (h.shape[-1],), weight, bias, eps), h
