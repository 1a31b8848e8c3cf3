"""Fused patch embedding: SigLIP's stride-p "valid" Conv2d, its bias and the position embedding in one kernel.

    out[b, n, d] = sum_k X[b * N + n, k] * W[d, k] + bias[d] + pos[n, d]

An implicit GEMM: the patch matrix X (B * N, K) is never materialised, each tile is gathered straight from the
(B, C, H, W) image through its strides (any layout, channels_last included). Patches are in row-major order
(n = row * grid_w + col) and k = (c, ky, kx) is flattened as the Conv2d weight (D, C, p, p) is, so K = C * p * p
(588 for p = 14, 768 for p = 16): not a power of two, the K loop is masked. When H or W is not a multiple of p the
right/bottom remainder is never read, exactly as the conv ignores it (384 px with p = 14 sees 27 * 14 = 378).

Inputs and rounding:
- Float pixels are taken as already normalised (what the conv sees). A float dtype other than the weight's is cast
  to the weight's dtype on load, as transformers does with `pixel_values.to(weight.dtype)`, without a copy.
- uint8 pixels get SigLIP's normalisation (x - 127.5) / 127.5 on load, computed in fp32 and rounded to the weight
  dtype: the very values the eager path feeds its conv. We do not fold it into the weights (W / 127.5, b - sum W):
  that needs a rescaled weight copy per call (or a cache that goes stale while W trains) and rounds W / 127.5 to the
  weight dtype, so results would drift from the reference; two flops per gathered pixel cost nothing here.
- Products accumulate in fp32 (fp32 weights use IEEE fp32 dot products, not TF32); bias and position embedding
  are added in fp32 in the epilogue and the sum is rounded once to the weight dtype.

Backward: dpixels = dout @ W scattered back (the conv is non-overlapping, so every pixel gets exactly one
contribution and cropped pixels get zero); dW = dout^T @ X reduced over the B * N rows, split into fixed chunks
written to a fp32 (split, D, K) buffer and summed in a fixed order (deterministic, no atomics); dbias and dpos are
plain torch sums of dout, a single read of a tensor the dW kernel reads anyway.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from ._triton import tl, triton

_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
_CPU_OK = _INTERPRET  # CPU tensors accepted: under the interpreter (benchmarks.codegen also sets it to compile on CPU)
_KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)

# ---------------------------------------------------------------------------------------------------------------------
# Triton kernels
# ---------------------------------------------------------------------------------------------------------------------


def _fwd_configs() -> list[triton.Config]:
    if _INTERPRET:  # one config: the interpreter would run every candidate, and only correctness matters there
        return [triton.Config({"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 32}, num_warps=4)]
    shapes = [  # (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages)
        (128, 128, 64, 8, 3), (128, 256, 64, 8, 3), (128, 128, 32, 4, 4), (64, 128, 64, 4, 4),
        (128, 64, 64, 4, 4), (64, 256, 32, 8, 4), (256, 128, 32, 8, 3),
    ]
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": k}, num_warps=w, num_stages=s)
            for m, n, k, w, s in shapes]


# Output is written with plain stores, once per element: no reset_to_zero/restore_value needed while autotuning.
# Keyed on M = B·N rounded up to a power of two, not M itself: every batch size would otherwise re-tune.
@triton.autotune(configs=_fwd_configs(), key=["M_BUCKET", "D", "K_PAD"])
@triton.jit
def _patch_embed_fwd_kernel(
    x_ptr,  # pixels, shape (B, C, H, W), any strides, float or uint8
    w_ptr,  # conv weight with each patch row padded from P to P_PAD columns, shape (D, C * P * P_PAD), contiguous
    b_ptr,  # bias, shape (D,)
    pos_ptr,  # position embedding, shape (N, D)
    out_ptr,  # output, shape (B * N, D) = (M, D)
    M, N, D, K_PAD, GRID_W,
    M_BUCKET,  # next power of two of M: the autotuning key only
    stride_xb, stride_xc, stride_xh, stride_xw,
    stride_b, stride_pn, stride_pd, stride_om, stride_od,
    P: tl.constexpr, P_PAD: tl.constexpr, IS_UINT8: tl.constexpr, IEEE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    # N tiles vary fastest: neighbouring programs share a pixel tile (L2 hits), the weight is small and stays in L2.
    pid = tl.program_id(0)
    num_n = tl.cdiv(D, BLOCK_N)
    pid_m = pid // num_n
    pid_n = pid % num_n

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # patch rows b * N + n
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # output channels d
    mask_m = offs_m < M
    mask_n = offs_n < D
    img = offs_m // N
    tok = offs_m % N
    gy = tok // GRID_W
    gx = tok % GRID_W
    x_row = (img.to(tl.int64) * stride_xb + (gy * P).to(tl.int64) * stride_xh
             + (gx * P).to(tl.int64) * stride_xw)  # (BLOCK_M,) top-left pixel of each patch
    w_col = offs_n.to(tl.int64) * K_PAD  # (BLOCK_N,)

    # k runs over (patch row r = c * P + ky, column kx < P_PAD): kx = k % P_PAD with P_PAD a power of two, so the
    # compiler sees runs of P_PAD contiguous pixels (vector loads where the patch's pixel rows are 16-byte aligned,
    # e.g. p = 16) and contiguous, 16-byte aligned weight rows; columns kx >= P are masked (and zero in the weight).
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K_PAD, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask_k = offs_k < K_PAD
        r = offs_k // P_PAD
        kx = offs_k % P_PAD
        c = r // P
        ky = r % P
        x_k = c.to(tl.int64) * stride_xc + ky.to(tl.int64) * stride_xh + kx.to(tl.int64) * stride_xw  # (BLOCK_K,)
        x = tl.load(x_ptr + x_row[:, None] + x_k[None, :], mask=mask_m[:, None] & (mask_k & (kx < P))[None, :],
                    other=0)
        if IS_UINT8:
            x = (x.to(tl.float32) - 127.5) / 127.5
        x = x.to(w_ptr.dtype.element_ty)  # (BLOCK_M, BLOCK_K)
        w = tl.load(w_ptr + offs_k[:, None] + w_col[None, :], mask=mask_k[:, None] & mask_n[None, :], other=0)
        if IEEE:
            acc = tl.dot(x, w, acc, input_precision="ieee")
        else:
            acc = tl.dot(x, w, acc)

    bias = tl.load(b_ptr + offs_n * stride_b, mask=mask_n, other=0).to(tl.float32)
    mask = mask_m[:, None] & mask_n[None, :]
    pos = tl.load(pos_ptr + tok[:, None].to(tl.int64) * stride_pn + offs_n[None, :] * stride_pd, mask=mask, other=0)
    acc = (acc + bias[None, :]) + pos.to(tl.float32)
    out_offs = offs_m[:, None].to(tl.int64) * stride_om + offs_n[None, :] * stride_od
    tl.store(out_ptr + out_offs, acc.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _patch_embed_bwd_input_kernel(
    g_ptr,  # grad of the output, shape (B, N, D), any strides
    w_ptr,  # conv weight, shape (D, C, P, P), any strides
    dx_ptr,  # grad of the pixels, shape (B, C, H, W), any strides; cropped pixels are zeroed by the launcher
    M, N, D, K, GRID_W,
    stride_gb, stride_gn, stride_gd,
    stride_wd, stride_wc, stride_wh, stride_ww,
    stride_xb, stride_xc, stride_xh, stride_xw,
    P: tl.constexpr, IEEE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
):
    # dX (M, K) = dout (M, D) @ W (D, K), scattered back to pixels: patches do not overlap, one store per pixel.
    pid = tl.program_id(0)
    num_k = tl.cdiv(K, BLOCK_K)
    pid_m = pid // num_k
    pid_k = pid % num_k

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    mask_m = offs_m < M
    mask_k = offs_k < K
    img = offs_m // N
    tok = offs_m % N
    gy = tok // GRID_W
    gx = tok % GRID_W
    c = offs_k // (P * P)
    ky = (offs_k % (P * P)) // P
    kx = offs_k % P
    g_row = img.to(tl.int64) * stride_gb + tok.to(tl.int64) * stride_gn  # (BLOCK_M,)
    w_k = c.to(tl.int64) * stride_wc + ky.to(tl.int64) * stride_wh + kx.to(tl.int64) * stride_ww  # (BLOCK_K,)

    acc = tl.zeros((BLOCK_M, BLOCK_K), dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D)
        mask_d = offs_d < D
        g = tl.load(g_ptr + g_row[:, None] + offs_d[None, :].to(tl.int64) * stride_gd,
                    mask=mask_m[:, None] & mask_d[None, :], other=0)  # (BLOCK_M, BLOCK_D)
        w = tl.load(w_ptr + offs_d[:, None].to(tl.int64) * stride_wd + w_k[None, :],
                    mask=mask_d[:, None] & mask_k[None, :], other=0)  # (BLOCK_D, BLOCK_K)
        if IEEE:
            acc = tl.dot(g, w, acc, input_precision="ieee")
        else:
            acc = tl.dot(g, w, acc)

    x_row = (img.to(tl.int64) * stride_xb + (gy * P).to(tl.int64) * stride_xh
             + (gx * P).to(tl.int64) * stride_xw)
    x_k = c.to(tl.int64) * stride_xc + ky.to(tl.int64) * stride_xh + kx.to(tl.int64) * stride_xw
    tl.store(dx_ptr + x_row[:, None] + x_k[None, :], acc.to(dx_ptr.dtype.element_ty),
             mask=mask_m[:, None] & mask_k[None, :])


@triton.jit
def _patch_embed_bwd_weight_kernel(
    g_ptr,  # grad of the output, shape (B, N, D), any strides
    x_ptr,  # pixels, shape (B, C, H, W), any strides, float or uint8
    part_ptr,  # fp32 partial sums, shape (SPLIT, D, K), contiguous; every element written once by one program
    M, N, D, K, GRID_W, ROWS_PER_SPLIT,
    stride_gb, stride_gn, stride_gd,
    stride_xb, stride_xc, stride_xh, stride_xw,
    P: tl.constexpr, IS_UINT8: tl.constexpr, IEEE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_K: tl.constexpr,
):
    # dW (D, K) = dout^T (D, M) @ X (M, K); program (tile, s) reduces the rows of chunk s, ROWS_PER_SPLIT of them.
    pid = tl.program_id(0)
    pid_s = tl.program_id(1)
    num_k = tl.cdiv(K, BLOCK_K)
    pid_d = pid // num_k
    pid_k = pid % num_k

    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    mask_d = offs_d < D
    mask_k = offs_k < K
    c = offs_k // (P * P)
    ky = (offs_k % (P * P)) // P
    kx = offs_k % P
    x_k = c.to(tl.int64) * stride_xc + ky.to(tl.int64) * stride_xh + kx.to(tl.int64) * stride_xw  # (BLOCK_K,)
    g_d = offs_d.to(tl.int64) * stride_gd  # (BLOCK_D,)

    m_start = pid_s * ROWS_PER_SPLIT
    m_end = tl.minimum(m_start + ROWS_PER_SPLIT, M)
    acc = tl.zeros((BLOCK_D, BLOCK_K), dtype=tl.float32)
    for m0 in range(m_start, m_end, BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M)
        mask_m = offs_m < m_end
        img = offs_m // N
        tok = offs_m % N
        gy = tok // GRID_W
        gx = tok % GRID_W
        g_row = img.to(tl.int64) * stride_gb + tok.to(tl.int64) * stride_gn
        g_t = tl.load(g_ptr + g_d[:, None] + g_row[None, :],
                      mask=mask_d[:, None] & mask_m[None, :], other=0)  # (BLOCK_D, BLOCK_M)
        x_row = (img.to(tl.int64) * stride_xb + (gy * P).to(tl.int64) * stride_xh
                 + (gx * P).to(tl.int64) * stride_xw)
        x = tl.load(x_ptr + x_row[:, None] + x_k[None, :], mask=mask_m[:, None] & mask_k[None, :], other=0)
        if IS_UINT8:
            x = (x.to(tl.float32) - 127.5) / 127.5
        x = x.to(g_ptr.dtype.element_ty)  # (BLOCK_M, BLOCK_K), the values the forward multiplied
        if IEEE:
            acc = tl.dot(g_t, x, acc, input_precision="ieee")
        else:
            acc = tl.dot(g_t, x, acc)

    part_offs = pid_s.to(tl.int64) * D * K + offs_d[:, None].to(tl.int64) * K + offs_k[None, :]
    tl.store(part_ptr + part_offs, acc, mask=mask_d[:, None] & mask_k[None, :])


# Backward tiles are fixed rather than autotuned: the dW split depends on BLOCK_M, and fixed tiles keep the
# reduction order, hence the bits, the same in every process.
_BWD_BLOCKS = dict(BLOCK_M=32, BLOCK_D=32, BLOCK_K=32) if _INTERPRET else dict(BLOCK_M=64, BLOCK_D=64, BLOCK_K=64)
_BWD_LAUNCH = {} if _INTERPRET else dict(num_warps=4, num_stages=3)

# ---------------------------------------------------------------------------------------------------------------------
# Validation and launchers
# ---------------------------------------------------------------------------------------------------------------------


def _describe(t: torch.Tensor) -> str:
    return f"shape {tuple(t.shape)}, dtype {t.dtype}, device {t.device}"


def _check_inputs(pixel_values, weight, bias, position_embedding, patch_size) -> tuple[int, int, int]:
    """Validate the arguments of patch_embed / patch_embed_reference; returns (grid_h, grid_w, N)."""
    if isinstance(patch_size, bool) or not isinstance(patch_size, int):
        raise TypeError(f"patch_size must be an int, got {type(patch_size).__name__}")
    if patch_size < 1:
        raise ValueError(f"patch_size must be >= 1, got {patch_size}")
    for name, t in (("pixel_values", pixel_values), ("weight", weight), ("bias", bias),
                    ("position_embedding", position_embedding)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if pixel_values.ndim != 4:
        raise ValueError(f"pixel_values must be (B, C, H, W), got {_describe(pixel_values)}")
    if not (pixel_values.is_floating_point() or pixel_values.dtype == torch.uint8):
        raise TypeError(f"pixel_values must be a float or uint8 tensor, got {_describe(pixel_values)}")
    if not weight.is_floating_point():
        raise TypeError(f"weight must be a float tensor, got {_describe(weight)}")
    p = patch_size
    B, C, H, W = pixel_values.shape
    if weight.ndim != 4 or weight.shape[2] != weight.shape[3]:
        raise ValueError(f"weight must be (D, C, p, p) as the Conv2d's, got {_describe(weight)}")
    if weight.shape[2] != p:
        raise ValueError(f"weight must be (D, C, {p}, {p}) for patch_size={p}, got {_describe(weight)}")
    if weight.shape[1] != C:
        raise ValueError(f"pixel_values has {C} channels but weight expects {weight.shape[1]} "
                         f"(pixel_values {_describe(pixel_values)}, weight {_describe(weight)})")
    if H < p or W < p:
        raise ValueError(f"pixel_values must be at least {p}x{p} pixels for patch_size={p}, got {H}x{W}")
    D = weight.shape[0]
    gh, gw = H // p, W // p
    N = gh * gw
    if bias.shape != (D,):
        raise ValueError(f"bias must have shape ({D},), got {_describe(bias)}")
    if position_embedding.ndim != 2:
        raise ValueError(f"position_embedding must be (N, D), got {_describe(position_embedding)}")
    if position_embedding.shape[0] != N:
        raise ValueError(f"position_embedding has {position_embedding.shape[0]} positions but a {H}x{W} image with "
                         f"patch_size={p} gives {gh}x{gw} = {N} patches (pass an interpolated table for other sizes)")
    if position_embedding.shape[1] != D:
        raise ValueError(f"position_embedding must be ({N}, {D}), got {_describe(position_embedding)}")
    if bias.dtype != weight.dtype:
        raise TypeError(f"bias must have weight's dtype {weight.dtype}, got {_describe(bias)}")
    if position_embedding.dtype not in (weight.dtype, torch.float32):
        raise TypeError(f"position_embedding must have weight's dtype {weight.dtype} or float32, got "
                        f"{_describe(position_embedding)}")
    for name, t in (("weight", weight), ("bias", bias), ("position_embedding", position_embedding)):
        if t.device != pixel_values.device:
            raise ValueError(f"{name} is on {t.device} but pixel_values is on {pixel_values.device}")
    return gh, gw, N


def _check_kernel_device(pixel_values: torch.Tensor, weight: torch.Tensor) -> None:
    if weight.dtype not in _KERNEL_DTYPES:
        raise TypeError(f"the patch_embed kernel supports weight dtypes {_KERNEL_DTYPES}, got {_describe(weight)} "
                        "(use patch_embed_reference for others)")
    dev = pixel_values.device
    if dev.type == "cuda":
        return
    if dev.type == "cpu" and _CPU_OK:
        return
    raise ValueError(f"the patch_embed kernel needs CUDA tensors (or CPU tensors with TRITON_INTERPRET=1 set before "
                     f"triton is imported), got pixel_values on {dev}")


def _upcast_for_interpreter(weight: torch.Tensor) -> bool:
    """The Triton interpreter computes bf16 `tl.dot` wrongly (numpy has no bf16): there the kernels run in fp32 and
    the results are rounded back, so interpreted bf16 calls are correct rather than garbage."""
    return _INTERPRET and weight.dtype == torch.bfloat16


def _out_dtype(weight: torch.Tensor, position_embedding: torch.Tensor) -> torch.dtype:
    """The output's dtype: that of `conv(x) + position_embedding` in eager PyTorch, i.e. weight's, or float32 for an
    fp32 table with low-precision weights (under torch.autocast the conv runs in bf16/fp16 and the table stays fp32);
    the kernel adds the table in fp32 either way and rounds the sum once."""
    return torch.promote_types(weight.dtype, position_embedding.dtype)


def _fp32(pixel_values: torch.Tensor) -> torch.Tensor:
    return pixel_values.float() if pixel_values.dtype == torch.bfloat16 else pixel_values


def patch_embed_fwd(pixel_values: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                    position_embedding: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Launch the forward kernel; returns (B, N, D) in `_out_dtype` (weight's, unless the table is fp32)."""
    gh, gw, N = _check_inputs(pixel_values, weight, bias, position_embedding, patch_size)
    _check_kernel_device(pixel_values, weight)
    if _upcast_for_interpreter(weight):
        return patch_embed_fwd(_fp32(pixel_values), weight.float(), bias.float(), position_embedding.float(),
                               patch_size).to(_out_dtype(weight, position_embedding))
    B, C = pixel_values.shape[:2]
    D, p = weight.shape[0], patch_size
    M = B * N
    out = torch.empty((B, N, D), device=weight.device, dtype=_out_dtype(weight, position_embedding))  # (B, N, D)
    if M == 0:
        return out
    p_pad = triton.next_power_of_2(p)
    # (D, C, p, p) -> (D, C * p, p_pad), contiguous: each patch row padded with zero columns to a power of two (a copy
    # of ~1.5 MB for So400m's p = 14; a free view when p is a power of two and the weight is contiguous)
    w_rows = weight.reshape(D, C * p, p)
    w_pad = F.pad(w_rows, (0, p_pad - p)) if p_pad != p else w_rows.contiguous()
    grid = lambda meta: (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(D, meta["BLOCK_N"]),)
    _patch_embed_fwd_kernel[grid](
        pixel_values, w_pad, bias, position_embedding, out,
        M, N, D, C * p * p_pad, gw, triton.next_power_of_2(M),
        *pixel_values.stride(),
        bias.stride(0), *position_embedding.stride(), out.stride(1), out.stride(2),
        P=p, P_PAD=p_pad, IS_UINT8=pixel_values.dtype == torch.uint8, IEEE=weight.dtype == torch.float32,
    )
    return out


def _check_grad(grad_out: torch.Tensor, pixel_values: torch.Tensor, weight: torch.Tensor, N: int) -> None:
    shape = (pixel_values.shape[0], N, weight.shape[0])
    if grad_out.shape != shape or grad_out.dtype != weight.dtype or grad_out.device != weight.device:
        raise ValueError(f"grad_out must have shape {shape}, dtype {weight.dtype}, device {weight.device}; "
                         f"got {_describe(grad_out)}")


def patch_embed_bwd_input(grad_out: torch.Tensor, pixel_values: torch.Tensor, weight: torch.Tensor,
                          patch_size: int) -> torch.Tensor:
    """Gradient w.r.t. float pixel_values: (B, C, H, W) in pixel_values' dtype and layout; cropped pixels are 0."""
    if not pixel_values.is_floating_point():
        raise TypeError(f"pixel_values must be float to have a gradient, got {_describe(pixel_values)}")
    B, C, H, W = pixel_values.shape
    D, p = weight.shape[0], patch_size
    gh, gw = H // p, W // p
    N, K = gh * gw, C * p * p
    _check_grad(grad_out, pixel_values, weight, N)
    _check_kernel_device(pixel_values, weight)
    if _upcast_for_interpreter(weight):
        return patch_embed_bwd_input(grad_out.float(), _fp32(pixel_values), weight.float(),
                                     patch_size).to(pixel_values.dtype)
    out = torch.empty_like(pixel_values)  # (B, C, H, W), pixel_values' layout
    if gh * p < H:  # the bottom rows the conv never sees
        out[:, :, gh * p:, :].zero_()
    if gw * p < W:  # the right columns the conv never sees
        out[:, :, :, gw * p:].zero_()
    M = B * N
    if M == 0:
        return out
    bm, bk = _BWD_BLOCKS["BLOCK_M"], _BWD_BLOCKS["BLOCK_K"]
    grid = (triton.cdiv(M, bm) * triton.cdiv(K, bk),)
    _patch_embed_bwd_input_kernel[grid](
        grad_out, weight, out,
        M, N, D, K, gw,
        *grad_out.stride(), *weight.stride(), *out.stride(),
        P=p, IEEE=weight.dtype == torch.float32, **_BWD_BLOCKS, **_BWD_LAUNCH,
    )
    return out


def _weight_grad_split(M: int, tiles: int, block_m: int, device: torch.device) -> int:
    """How many row chunks the dW reduction is split into: enough programs to fill the machine, chunks >= 4 tiles."""
    if device.type == "cuda":
        max_split = triton.cdiv(2 * torch.cuda.get_device_properties(device).multi_processor_count, tiles)
        min_rows = 4 * block_m
    else:  # the interpreter: chunks of one row tile, so that CI's small shapes exercise the split and its tail
        max_split, min_rows = 4, block_m
    return max(1, min(max_split, triton.cdiv(M, min_rows)))


def patch_embed_bwd_weight(grad_out: torch.Tensor, pixel_values: torch.Tensor, weight: torch.Tensor,
                           patch_size: int) -> torch.Tensor:
    """Gradient w.r.t. the conv weight: (D, C, p, p), contiguous, in weight's dtype (fp32 accumulation)."""
    B, C, H, W = pixel_values.shape
    D, p = weight.shape[0], patch_size
    gh, gw = H // p, W // p
    N, K = gh * gw, C * p * p
    M = B * N
    _check_grad(grad_out, pixel_values, weight, N)
    _check_kernel_device(pixel_values, weight)
    if _upcast_for_interpreter(weight):
        return patch_embed_bwd_weight(grad_out.float(), _fp32(pixel_values), weight.float(),
                                      patch_size).to(weight.dtype)
    if M == 0:
        return torch.zeros(weight.shape, device=weight.device, dtype=weight.dtype)
    bm, bd, bk = _BWD_BLOCKS["BLOCK_M"], _BWD_BLOCKS["BLOCK_D"], _BWD_BLOCKS["BLOCK_K"]
    tiles = triton.cdiv(D, bd) * triton.cdiv(K, bk)
    split = _weight_grad_split(M, tiles, bm, weight.device)
    rows_per_split = triton.cdiv(triton.cdiv(M, split), bm) * bm
    split = triton.cdiv(M, rows_per_split)
    partial = torch.empty((split, D, K), device=weight.device, dtype=torch.float32)  # (SPLIT, D, K)
    _patch_embed_bwd_weight_kernel[(tiles, split)](
        grad_out, pixel_values, partial,
        M, N, D, K, gw, rows_per_split,
        *grad_out.stride(), *pixel_values.stride(),
        P=p, IS_UINT8=pixel_values.dtype == torch.uint8, IEEE=weight.dtype == torch.float32,
        **_BWD_BLOCKS, **_BWD_LAUNCH,
    )
    return partial.sum(0).view(D, C, p, p).to(weight.dtype)  # fixed-order sum over the chunks: deterministic


# ---------------------------------------------------------------------------------------------------------------------
# Custom ops and autograd
# ---------------------------------------------------------------------------------------------------------------------


@torch.library.custom_op("siglip_fast::patch_embed", mutates_args=())
def _patch_embed_op(pixel_values: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                    position_embedding: torch.Tensor, patch_size: int) -> torch.Tensor:
    return patch_embed_fwd(pixel_values, weight, bias, position_embedding, patch_size)


@_patch_embed_op.register_fake
def _(pixel_values, weight, bias, position_embedding, patch_size):
    return weight.new_empty((pixel_values.shape[0], position_embedding.shape[0], weight.shape[0]),
                            dtype=_out_dtype(weight, position_embedding))


@torch.library.custom_op("siglip_fast::patch_embed_grad_input", mutates_args=())
def _patch_embed_grad_input_op(grad_out: torch.Tensor, pixel_values: torch.Tensor, weight: torch.Tensor,
                               patch_size: int) -> torch.Tensor:
    return patch_embed_bwd_input(grad_out, pixel_values, weight, patch_size)


@_patch_embed_grad_input_op.register_fake
def _(grad_out, pixel_values, weight, patch_size):
    return torch.empty_like(pixel_values)


@torch.library.custom_op("siglip_fast::patch_embed_grad_weight", mutates_args=())
def _patch_embed_grad_weight_op(grad_out: torch.Tensor, pixel_values: torch.Tensor, weight: torch.Tensor,
                                patch_size: int) -> torch.Tensor:
    return patch_embed_bwd_weight(grad_out, pixel_values, weight, patch_size)


@_patch_embed_grad_weight_op.register_fake
def _(grad_out, pixel_values, weight, patch_size):
    return weight.new_empty(weight.shape)


class _PatchEmbed(torch.autograd.Function):
    """The autograd formulas of siglip_fast::patch_embed, registered on the custom op with `register_autograd`
    (so torch.compile traces forward and backward as ops); `apply` works too, outside the op registry."""

    @staticmethod
    def forward(pixel_values, weight, bias, position_embedding, patch_size):
        return patch_embed_fwd(pixel_values, weight, bias, position_embedding, patch_size)

    @staticmethod
    def setup_context(ctx, inputs, output):
        pixel_values, weight, bias, position_embedding, patch_size = inputs
        ctx.save_for_backward(pixel_values, weight)
        ctx.patch_size = patch_size
        ctx.pos_dtype = position_embedding.dtype

    @staticmethod
    def backward(ctx, grad_out):
        pixel_values, weight = ctx.saved_tensors
        p = ctx.patch_size
        needs = ctx.needs_input_grad
        d_pixels = d_weight = d_bias = d_pos = None
        grad_conv = grad_out.to(weight.dtype)  # an fp32 table made the output fp32: the conv's part is weight's dtype
        if needs[0] and pixel_values.is_floating_point():
            d_pixels = torch.ops.siglip_fast.patch_embed_grad_input(grad_conv, pixel_values, weight, p)
        if needs[1]:
            d_weight = torch.ops.siglip_fast.patch_embed_grad_weight(grad_conv, pixel_values, weight, p)
        # dbias and dpos: one bandwidth-bound read of dout each (B*N*D elements; the GEMMs above read it too).
        if needs[2]:
            d_bias = grad_out.sum(dim=(0, 1), dtype=torch.float32).to(weight.dtype)
        if needs[3]:
            d_pos = grad_out.sum(dim=0, dtype=torch.float32).to(ctx.pos_dtype)
        return d_pixels, d_weight, d_bias, d_pos, None


torch.library.register_autograd("siglip_fast::patch_embed", _PatchEmbed.backward,
                                setup_context=_PatchEmbed.setup_context)

# ---------------------------------------------------------------------------------------------------------------------
# Public functional and eager reference
# ---------------------------------------------------------------------------------------------------------------------


def patch_embed(pixel_values: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                position_embedding: torch.Tensor, patch_size: int) -> torch.Tensor:
    """SigLIP's patch embedding plus position embedding, fused: (B, C, H, W) pixels -> (B, N, D) in weight's dtype
    (float32 when the table is float32 and the weight is not: eager's type promotion of conv(x) + table).

    pixel_values: (B, C, H, W), float (already normalised; cast to weight's dtype on load) or uint8 (normalised
    here with (x - 127.5) / 127.5), any strides. weight: (D, C, p, p), the Conv2d's; bias: (D,);
    position_embedding: (N, D) with N = (H // p) * (W // p) (an interpolated table for other image sizes); bias in
    weight's dtype, position_embedding in weight's dtype or float32 (torch.autocast: the conv in bf16/fp16, the table
    fp32). Differentiable w.r.t. weight, bias, position_embedding and float pixels.
    """
    _check_inputs(pixel_values, weight, bias, position_embedding, patch_size)
    _check_kernel_device(pixel_values, weight)
    return torch.ops.siglip_fast.patch_embed(pixel_values, weight, bias, position_embedding, patch_size)


def patch_embed_reference(pixel_values: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                          position_embedding: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Eager PyTorch definition, exactly transformers' SiglipVisionEmbeddings: conv2d(pixels.to(weight.dtype)) ->
    flatten(2) -> transpose(1, 2) -> + position_embedding; uint8 pixels are first normalised to
    (x - 127.5) / 127.5 in weight's dtype (rescale 1/255, then mean = std = 0.5)."""
    _check_inputs(pixel_values, weight, bias, position_embedding, patch_size)
    x = pixel_values.to(weight.dtype)
    if pixel_values.dtype == torch.uint8:
        x = (x - 127.5) / 127.5
    embeds = F.conv2d(x, weight, bias, stride=patch_size)  # (B, D, H // p, W // p)
    embeds = embeds.flatten(2).transpose(1, 2)  # (B, N, D)
    return embeds + position_embedding
