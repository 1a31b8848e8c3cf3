"""Blockwise SigLIP sigmoid loss: the N×N logits are never materialised.

For image embeddings x (N, D), text embeddings y (N, D), t = logit_scale (a log) and b = logit_bias:

    z_ij = exp(t)·<x_i, y_j> + b,   label_ij = +1 if i == j else −1,
    loss = −(1/N) Σ_i Σ_j log σ(label_ij · z_ij)

— the value transformers' `SiglipModel(return_loss=True)` computes (it sums the transposed matrix; the sum is the
same). The embeddings are used as given: the loss does not L2-normalise them (the model does).

Gradients, with w = −label·z, dz'_ij = −label_ij·σ(w_ij) ∈ [−1, 1] and dz = dz'·g/N (g the incoming gradient):

    dx = exp(t)·dz @ y,   dy = exp(t)·dzᵀ @ x,   dt = Σ dz·(z − b) = exp(t)·Σ dz·<x, y>,   db = Σ dz.

Two paths, chosen in `sigmoid_loss` from static facts torch.compile guards on (grad mode, inputs' requires_grad):

* Loss only (no_grad / eval): `_sigmoid_loss_fwd_kernel`. Each (BLOCK_M, BLOCK_N) tile of logits is computed with
  `tl.dot` (fp32 accumulation, looping over D in masked chunks), turned into −log σ(label·z) = softplus(w) (stable
  form) and summed; every tile writes one fp32 partial, summed by torch (deterministic). Nothing N×N or (N, D) is
  allocated. One GEMM-equivalent (2·N²·D FLOPs).

* Training (a gradient will be needed): one fused forward, no recompute. The N×N matrix is walked in blocks of
  dz' (`_blocks`: ~128 MiB, square by default, see below). Per block, `_sigmoid_loss_grad_kernel` (FUSED) computes
  the tiles of z once and writes, from the same registers, the loss partials, exp(t)·dz' (the block, in the input
  dtype), and per-tile Σ exp(t)·dz'·<x, y> and Σ dz'; then two cuBLAS GEMMs on the block accumulate, in fp32,
  dxs[rows] += exp(t)·dz'_blk @ y[cols] and dys[cols] += exp(t)·dz'_blkᵀ @ x[rows] (the first block of each row /
  column range writes with β = 0: no zero fill). The op returns the loss and saves dxs, dys (N, D) fp32 and the
  two sums ((1,) each); its backward (`siglip_fast::sigmoid_loss_train_backward`) launches no kernel: it multiplies
  them by g/N, writing dx, dy straight in the embeddings' dtype. Three GEMM-equivalents in all (tile pass, dx, dy)
  instead of four (forward, recompute, dx, dy). dz' is pre-scaled by exp(t) so that no host sync is needed to
  fold exp(t) into cuBLAS's alpha; rounding exp(t)·dz' to bf16/fp16 has the same relative error bound (unit
  roundoff 2^-8 / 2^-11) as rounding dz' did, and the saved gradients are fp32, so the training path's error is the
  old backward's. fp16 limit: exp(t)·|dz'| ≤ exp(t) must stay below 65504 (t < 11.09), where the plain fp16 logits
  overflow as well.

  The kernel's epilogue (σ, softplus, the store of dz', three sums) runs on the tile's four column quarters in
  turn, with per-row sums inside each warp and one cross-warp reduction per sum: on the whole tile it spilled.

  Why not a flash-style dx/dy kernel: SigLIP's D (768..1152) is far too wide for a register-resident (BLOCK_M, D)
  accumulator, splitting D across programs recomputes the logits D/BLOCK_D times, and atomics would make the
  gradients non-deterministic. Blocks + cuBLAS keep the memory bounded and the result bitwise reproducible.

Blocks and accumulator traffic. Each block re-reads and rewrites its rows of dxs and its columns of dys (fp32), so
for blocks of R rows × C columns the accumulators move ≈ N²·D·8·(1/R + 1/C) bytes; at a fixed block size R·C that
is smallest for square blocks. Default (`_blocks`): R = C = the largest multiple of 128 with R·C·itemsize ≤ 128 MiB
(8192 in bf16/fp16, 5760 in fp32), full-width slabs when N is narrower; `chunk_rows` alone keeps (chunk_rows, N)
slabs. At the target shape (N = 32768, D = 1152, bf16; one fp32 (N, D) accumulator = 151 MB):
  before (backward over 16 full-width 2048-row slabs): dy zero fill + 16 × (read + write) ≈ 5.0 GB, dx (fp32
  slab result, rescale, cast) ≈ 0.7 GB, final casts ≈ 0.2 GB: ≈ 5.9 GB;
  now (4 × 4 blocks of 8192²): dxs and dys each written once and read+written 3 more times, 7 × 151 MB = 1.06 GB
  each, 2.1 GB, plus the backward's rescale (read 302 MB, write 151 MB): ≈ 2.6 GB.
The dz' blocks themselves (2.1 GB written, 4.3 GB read as GEMM operands) cost the same as before and are streamed
by compute-bound work (each 8192² block feeds two GEMMs of 155 GFLOP).

Memory above the inputs at the target shape, bf16: forward dxs + dys 2·N·D·4 = 288 MiB + one dz' block
8192²·2 = 128 MiB (+ partials, 48 KiB) = 416 MiB; backward 288 MiB saved + the returned bf16 dx, dy 2·N·D·2 =
144 MiB = 432 MiB ≈ 0.42 GiB (≤ 0.5 GiB). fp32 inputs: 288 + 127 MiB forward, 288 + 288 MiB (the fp32 gradients
themselves) = 576 MiB backward. Time at the target, predicted (not measured; no GPU run yet): 3 × 2.47 TFLOP =
7.4 TFLOP ≈ 10.2 ms at 730 TFLOP/s, + ≈ 0.15 ms for the backward's rescale (0.45 GB); with the Triton tile pass at
600 TFLOP/s and the cuBLAS GEMMs at 700: 4.1 + 7.1 + 0.15 ≈ 11.4 ms. Before: 4 × 2.47 = 9.9 TFLOP ≈ 13.5 ms at
730 TFLOP/s, plus up to ≈ 2 ms of accumulator traffic (5.9 GB at 3 TB/s) where the GEMMs do not hide it. fp32 inputs
run the same three GEMM-equivalents: ≈ 20 ms under TF32 (set_float32_matmul_precision("high")), far more in IEEE
fp32 (no tensor cores).

The distributed ring (siglip_fast/loss.py) keeps a recomputing backward per (x block, y block) pair
(`_block_backward`: `_sigmoid_loss_grad_kernel` un-FUSED writes dz' and Σ dz'·<x, y>, Σ dz'; same 2-D blocks and
GEMMs). The eager path (CPU, and the `"eager"` backend) runs the same math on full-width (chunk_rows, N) slabs in
PyTorch, in fp32 (fp64 for fp64 inputs), with the same fused training forward.

`sigmoid_loss_reference` is the plain formula (full logits matrix, labels 2I − 1), as open_clip and transformers
compute it: the tests' and benchmarks' ground truth.
"""

from __future__ import annotations

import math
import os

import torch
import torch.nn.functional as F

from ._triton import tl, triton

__all__ = ["sigmoid_loss", "sigmoid_loss_blockwise", "sigmoid_loss_reference"]

_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
_CPU_OK = _INTERPRET  # CPU tensors accepted: under the interpreter (benchmarks.codegen also sets it to compile on CPU)
_KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_EAGER_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_BACKENDS = ("auto", "triton", "eager")
_SLAB_BYTES = 128 * 2**20  # one dz' block of the Triton path
_EAGER_SLAB_ELEMENTS = 2 * 2**20  # the eager path's (chunk_rows, N) slabs: 8 MiB each in fp32


# ---------------------------------------------------------------------------------------------------------------
# Triton kernels
# ---------------------------------------------------------------------------------------------------------------

# Tile sizes BLOCK_M/BLOCK_N are picked by the launcher (they size the partial-sum buffers); autotuning chooses the
# D chunk and the pipeline depth. Every kernel only stores (no accumulation into its outputs), so a tuning run cannot
# corrupt a result and no reset_to_zero is needed. Under the interpreter one config keeps CI fast.
# Compile-only audit (triton 3.9, sm_90, bf16, D = 1152, 128×128 tiles; registers / stack): with 4 warps the
# (128, 128) fp32 tile alone is 128 registers per thread and both kernels spilled (255 / 0.5-1.2 KiB), so only 8-warp
# configs (two warpgroups, HGMMA, 16-byte cp.async) are kept: forward 106-109 / 0, grad kernel 182-187 / 0 (its
# epilogue runs on column quarters, see `_sigmoid_loss_grad_kernel`). Of those, the three that can win: a 64-wide D
# chunk with 3 stages (96 KiB of shared memory: two forward CTAs per SM) or 4 stages (128 KiB), and a 32-wide chunk
# with 4 stages (64 KiB). Three compiles per kernel variant instead of eight.
if _INTERPRET:
    _CONFIGS = [triton.Config({"BLOCK_D": 32}, num_warps=4, num_stages=1)]
else:
    _CONFIGS = [
        triton.Config({"BLOCK_D": 64}, num_warps=8, num_stages=3),
        triton.Config({"BLOCK_D": 64}, num_warps=8, num_stages=4),
        triton.Config({"BLOCK_D": 32}, num_warps=8, num_stages=4),
    ]


@triton.jit
def _tile_coords(M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """Grouped (L2-friendly) ordering of the 2-D tile grid flattened to one program axis."""
    pid = tl.program_id(0)
    grid_m = tl.cdiv(M, BLOCK_M)
    grid_n = tl.cdiv(N, BLOCK_N)
    width = GROUP_M * grid_n
    first_m = (pid // width) * GROUP_M
    group_size = tl.minimum(grid_m - first_m, GROUP_M)
    pid_m = first_m + (pid % width) % group_size
    pid_n = (pid % width) // group_size
    return pid_m, pid_n, grid_n


@triton.jit
def _similarity_tile(x_ptr, y_ptr, rows, cols, M, N, D, stride_x, stride_y,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr):
    """<x_i, y_j> for the tile's rows × cols, fp32 accumulation over D in masked BLOCK_D chunks."""
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    offs_d = tl.arange(0, BLOCK_D)
    x_ptrs = x_ptr + rows[:, None] * stride_x + offs_d[None, :]  # (BLOCK_M, BLOCK_D)
    y_ptrs = y_ptr + cols[None, :] * stride_y + offs_d[:, None]  # (BLOCK_D, BLOCK_N): a yᵀ tile
    row_ok = rows[:, None] < M
    col_ok = cols[None, :] < N
    for d0 in range(0, D, BLOCK_D):
        d_ok = (d0 + offs_d) < D
        xt = tl.load(x_ptrs, mask=row_ok & d_ok[None, :], other=0.0)
        yt = tl.load(y_ptrs, mask=d_ok[:, None] & col_ok, other=0.0)
        acc = tl.dot(xt, yt, acc, input_precision=PRECISION)
        x_ptrs += BLOCK_D
        y_ptrs += BLOCK_D
    return acc


@triton.jit
def _log1p(u):
    """log(1 + u) for u in [0, 1], accurate for tiny u (Goldberg's trick; tl has no portable log1p)."""
    w = 1.0 + u
    den = tl.where(w == 1.0, 1.0, w - 1.0)
    return tl.where(w == 1.0, u, tl.log(w) * (u / den))


@triton.jit
def _signed_logits_tile(x_ptr, y_ptr, log_scale_ptr, bias_ptr, M, N, D, diag_offset, stride_x, stride_y,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, GROUP_M: tl.constexpr,
                        PRECISION: tl.constexpr):
    """This program's tile: (its index among the tiles, rows, cols, s = <x_i, y_j> (BLOCK_M, BLOCK_N) fp32,
    pos = where the label is +1, w = −label·z with z = exp(t)·s + b)."""
    pid_m, pid_n, grid_n = _tile_coords(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    s = _similarity_tile(x_ptr, y_ptr, rows, cols, M, N, D, stride_x, stride_y,
                         BLOCK_M, BLOCK_N, BLOCK_D, PRECISION)  # (BLOCK_M, BLOCK_N) fp32
    z = s * tl.exp(tl.load(log_scale_ptr)) + tl.load(bias_ptr)
    pos = cols[None, :] == rows[:, None] + diag_offset
    w = tl.where(pos, -z, z)  # −label·z
    return pid_m * grid_n + pid_n, rows, cols, s, pos, w


@triton.autotune(configs=_CONFIGS, key=["D"])
@triton.jit(do_not_specialize=["diag_offset"])  # it changes per slab and per ring step: no recompiles
def _sigmoid_loss_fwd_kernel(
    x_ptr,  # (M, D) image embeddings, row stride stride_x, unit column stride
    y_ptr,  # (N, D) text embeddings, row stride stride_y, unit column stride
    log_scale_ptr,  # (1,) fp32 logit_scale t (a log)
    bias_ptr,  # (1,) fp32 logit_bias b
    part_ptr,  # (grid_m * grid_n,) fp32 out: per tile, Σ −log σ(label·z) · norm
    M, N, D,
    diag_offset,  # label is +1 where col == row + diag_offset
    norm,  # fp32 factor of every term (1 / the loss's batch): partial sums of the loss never exceed the loss
    stride_x, stride_y,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, GROUP_M: tl.constexpr,
    PRECISION: tl.constexpr,
):
    part, rows, cols, s, pos, w = _signed_logits_tile(
        x_ptr, y_ptr, log_scale_ptr, bias_ptr, M, N, D, diag_offset, stride_x, stride_y,
        BLOCK_M, BLOCK_N, BLOCK_D, GROUP_M, PRECISION)
    term = (tl.maximum(w, 0.0) + _log1p(tl.exp(-tl.abs(w)))) * norm  # softplus(w) = −log σ(label·z), normalised
    term = tl.where((rows[:, None] < M) & (cols[None, :] < N), term, 0.0)
    tl.store(part_ptr + part, tl.sum(tl.sum(term, axis=1), axis=0))


@triton.jit
def _halves(t, BLOCK_M: tl.constexpr, WIDTH: tl.constexpr):
    """The left and right (BLOCK_M, WIDTH // 2) halves of a (BLOCK_M, WIDTH) tile."""
    return tl.split(tl.permute(tl.reshape(t, (BLOCK_M, 2, WIDTH // 2)), (0, 2, 1)))


@triton.jit
def _grad_epilogue(s, rows, cols, M, N, diag_offset, scale, bias, norm, dz_ptr, FUSED: tl.constexpr):
    """dz' of one (rows × cols) piece of a tile from its similarities s (fp32): stores dz' (times exp(t) when
    FUSED) and returns the piece's row sums (BLOCK_M,) of softplus(w)·norm (FUSED; else the dz' sums again, unused),
    dz'·s and dz' (row sums only: they stay inside each warp; the tile sums them across warps once, not per piece)."""
    valid = (rows[:, None] < M) & (cols[None, :] < N)
    pos = cols[None, :] == rows[:, None] + diag_offset
    z = s * scale + bias
    w = tl.where(valid, tl.where(pos, -z, z), float("-inf"))  # −label·z; −inf outside: every term below is 0
    u = tl.exp(-tl.abs(w))  # one exp serves σ(w) and softplus(w)
    sig = tl.where(w >= 0, 1.0 / (1.0 + u), u / (1.0 + u))  # σ(w), stable
    dz = tl.where(pos, -sig, sig)
    k = scale if FUSED else 1.0
    dz_ptrs = dz_ptr + rows[:, None].to(tl.int64) * N + cols[None, :]
    tl.store(dz_ptrs, (dz * k).to(dz_ptr.dtype.element_ty), mask=valid)
    tsum = tl.sum(dz * s, axis=1)
    bsum = tl.sum(dz, axis=1)
    if FUSED:
        lsum = tl.sum((tl.maximum(w, 0.0) + _log1p(u)) * norm, axis=1)  # softplus(w) = −log σ(label·z), normalised
    else:
        lsum = bsum
    return lsum, tsum, bsum


@triton.autotune(configs=_CONFIGS, key=["D", "FUSED"])
@triton.jit(do_not_specialize=["diag_offset"])
def _sigmoid_loss_grad_kernel(
    x_ptr,  # (M, D) image embeddings (a row block), row stride stride_x
    y_ptr,  # (N, D) text embeddings (a row block), row stride stride_y
    log_scale_ptr,  # (1,) fp32 logit_scale t
    bias_ptr,  # (1,) fp32 logit_bias b
    dz_ptr,  # (M, N) out, input dtype, row stride N: dz' = −label·σ(−label·z), times exp(t) when FUSED
    lpart_ptr,  # (grid_m * grid_n,) fp32 out, FUSED only: per tile, Σ −log σ(label·z) · norm
    tpart_ptr,  # (grid_m * grid_n,) fp32 out: per tile, Σ dz'·<x, y> (times exp(t) when FUSED)
    bpart_ptr,  # (grid_m * grid_n,) fp32 out: per tile, Σ dz'
    M, N, D,
    diag_offset,
    norm,  # fp32 factor of every loss term (FUSED only), as in _sigmoid_loss_fwd_kernel
    stride_x, stride_y,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, GROUP_M: tl.constexpr,
    PRECISION: tl.constexpr,
    FUSED: tl.constexpr,  # the training forward: also the loss partials, and dz' pre-scaled by exp(t)
):
    pid_m, pid_n, grid_n = _tile_coords(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    s = _similarity_tile(x_ptr, y_ptr, rows, cols, M, N, D, stride_x, stride_y,
                         BLOCK_M, BLOCK_N, BLOCK_D, PRECISION)  # (BLOCK_M, BLOCK_N) fp32
    scale = tl.exp(tl.load(log_scale_ptr))
    bias = tl.load(bias_ptr)
    # The epilogue runs on the tile's four column quarters one after the other (a register-level split, no shared
    # memory): with 8 warps a (128, 128) fp32 tile is 64 registers per thread, and the epilogue keeps s, w, σ and
    # dz' live together: on the whole tile that spilled (255 registers + 0.9-1.3 KiB of stack on sm_90; halves
    # still spilled 16 bytes), on quarters it needs 184 registers and no stack.
    q: tl.constexpr = BLOCK_N // 4
    s_lo, s_hi = _halves(s, BLOCK_M, BLOCK_N)
    s0, s1 = _halves(s_lo, BLOCK_M, BLOCK_N // 2)
    s2, s3 = _halves(s_hi, BLOCK_M, BLOCK_N // 2)
    c = pid_n * BLOCK_N + tl.arange(0, q)
    l0, t0, b0 = _grad_epilogue(s0, rows, c, M, N, diag_offset, scale, bias, norm, dz_ptr, FUSED)
    l1, t1, b1 = _grad_epilogue(s1, rows, c + q, M, N, diag_offset, scale, bias, norm, dz_ptr, FUSED)
    l2, t2, b2 = _grad_epilogue(s2, rows, c + 2 * q, M, N, diag_offset, scale, bias, norm, dz_ptr, FUSED)
    l3, t3, b3 = _grad_epilogue(s3, rows, c + 3 * q, M, N, diag_offset, scale, bias, norm, dz_ptr, FUSED)
    part = pid_m * grid_n + pid_n
    if FUSED:
        tl.store(lpart_ptr + part, tl.sum((l0 + l1) + (l2 + l3), axis=0))
        tl.store(tpart_ptr + part, tl.sum((t0 + t1) + (t2 + t3), axis=0) * scale)
    else:
        tl.store(tpart_ptr + part, tl.sum((t0 + t1) + (t2 + t3), axis=0))
    tl.store(bpart_ptr + part, tl.sum((b0 + b1) + (b2 + b3), axis=0))


# ---------------------------------------------------------------------------------------------------------------
# Launchers
# ---------------------------------------------------------------------------------------------------------------

def _tiles(M: int, N: int) -> tuple[int, int]:
    if _INTERPRET:
        return 64, 64
    return (64 if M <= 64 else 128), (64 if N <= 64 else 128)


def _precision(dtype: torch.dtype) -> str:
    """fp32 inputs follow torch's matmul precision setting: full fp32 by default, TF32 under 'high'/'medium'."""
    if dtype == torch.float32 and torch.get_float32_matmul_precision() == "highest":
        return "ieee"
    return "tf32"


def _check_kernel_operands(x: torch.Tensor, y: torch.Tensor, log_scale: torch.Tensor, bias: torch.Tensor) -> None:
    if x.dtype not in _KERNEL_DTYPES or y.dtype != x.dtype:
        raise TypeError(f"sigmoid_loss kernel: embeddings must share a dtype among {_KERNEL_DTYPES}, "
                        f"got {x.dtype} and {y.dtype}")
    if x.dim() != 2 or y.dim() != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"sigmoid_loss kernel: expected x (M, D) and y (N, D), got {tuple(x.shape)} and "
                         f"{tuple(y.shape)}")
    if x.stride(1) != 1 or y.stride(1) != 1:
        raise ValueError("sigmoid_loss kernel: embeddings need a unit stride along D")
    for name, v in (("log_scale", log_scale), ("bias", bias)):
        if v.dtype != torch.float32 or v.numel() != 1 or not v.is_contiguous():
            raise ValueError(f"sigmoid_loss kernel: {name} must be a contiguous fp32 tensor of one element, "
                             f"got {v.dtype} {tuple(v.shape)}")
    devices = {x.device, y.device, log_scale.device, bias.device}
    if len(devices) != 1:
        raise ValueError(f"sigmoid_loss kernel: all operands must be on one device, got {devices}")
    if x.device.type != "cuda" and not _CPU_OK:
        raise ValueError(f"sigmoid_loss kernel: needs CUDA tensors (or TRITON_INTERPRET=1), got {x.device}")


def _upcast_for_interpreter(x: torch.Tensor) -> bool:
    """The Triton interpreter computes bf16 `tl.dot` wrongly (numpy has no bf16): there the tile passes run on fp32
    copies of the embeddings (results rounded back where they are stored in the input dtype), so interpreted bf16
    calls are correct rather than garbage."""
    return _INTERPRET and x.dtype == torch.bfloat16


def _sigmoid_loss_fwd(x: torch.Tensor, y: torch.Tensor, log_scale: torch.Tensor, bias: torch.Tensor,
                      diag_offset: int = 0, *, norm: float = 1.0, out: torch.Tensor | None = None) -> torch.Tensor:
    """Per-tile sums of −log σ(label·z)·norm for x (M, D) against y (N, D): a (grid_m·grid_n,) fp32 tensor.

    `out` (tests): a buffer of that shape to write into instead of a fresh `torch.empty`."""
    _check_kernel_operands(x, y, log_scale, bias)
    if _upcast_for_interpreter(x):
        return _sigmoid_loss_fwd(x.float(), y.float(), log_scale, bias, diag_offset, norm=norm, out=out)
    M, D = x.shape
    N = y.shape[0]
    bm, bn = _tiles(M, N)
    n_tiles = triton.cdiv(M, bm) * triton.cdiv(N, bn)
    if out is None:
        out = torch.empty(n_tiles, device=x.device, dtype=torch.float32)
    elif out.shape != (n_tiles,) or out.dtype != torch.float32 or out.device != x.device:
        raise ValueError(f"out: expected ({n_tiles},) float32 on {x.device}, got {tuple(out.shape)} {out.dtype}")
    _sigmoid_loss_fwd_kernel[(n_tiles,)](
        x, y, log_scale, bias, out, M, N, D, diag_offset, float(norm), x.stride(0), y.stride(0),
        BLOCK_M=bm, BLOCK_N=bn, GROUP_M=8, PRECISION=_precision(x.dtype),
    )
    return out


def _sigmoid_loss_bwd(x: torch.Tensor, y: torch.Tensor, log_scale: torch.Tensor, bias: torch.Tensor,
                      diag_offset: int = 0, *, out: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """dz' (M, N) in the input dtype, and per-tile fp32 sums of dz'·<x, y> and of dz'.

    `out` (tests): (dz, tpart, bpart) buffers to write into instead of fresh `torch.empty`s."""
    _check_kernel_operands(x, y, log_scale, bias)
    if _upcast_for_interpreter(x):
        dz, tpart, bpart = _sigmoid_loss_bwd(x.float(), y.float(), log_scale, bias, diag_offset)
        results = (dz.to(x.dtype), tpart, bpart)
        return results if out is None else tuple(o.copy_(r) for o, r in zip(out, results, strict=True))
    M, D = x.shape
    N = y.shape[0]
    bm, bn = _tiles(M, N)
    n_tiles = triton.cdiv(M, bm) * triton.cdiv(N, bn)
    if out is None:
        dz = torch.empty(M, N, device=x.device, dtype=x.dtype)
        tpart = torch.empty(n_tiles, device=x.device, dtype=torch.float32)
        bpart = torch.empty(n_tiles, device=x.device, dtype=torch.float32)
    else:
        dz, tpart, bpart = out
        if dz.shape != (M, N) or dz.dtype != x.dtype or not dz.is_contiguous():
            raise ValueError(f"out[0]: expected contiguous ({M}, {N}) {x.dtype}, got {tuple(dz.shape)} {dz.dtype}")
        for name, p in (("out[1]", tpart), ("out[2]", bpart)):
            if p.shape != (n_tiles,) or p.dtype != torch.float32:
                raise ValueError(f"{name}: expected ({n_tiles},) float32, got {tuple(p.shape)} {p.dtype}")
    _sigmoid_loss_grad_kernel[(n_tiles,)](
        x, y, log_scale, bias, dz, tpart, tpart, bpart, M, N, D, diag_offset, 1.0, x.stride(0), y.stride(0),
        BLOCK_M=bm, BLOCK_N=bn, GROUP_M=8, PRECISION=_precision(x.dtype), FUSED=False,
    )
    return dz, tpart, bpart


def _sigmoid_loss_fused(x: torch.Tensor, y: torch.Tensor, log_scale: torch.Tensor, bias: torch.Tensor,
                        diag_offset: int = 0, *, norm: float = 1.0,
                        out: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The training forward's tile pass: (exp(t)·dz' (M, N) in the input dtype, parts (3, n_tiles) fp32) with
    parts[0] the per-tile Σ −log σ(label·z)·norm, parts[1] Σ exp(t)·dz'·<x, y>, parts[2] Σ dz'.

    `out` (tests): (dz, parts) buffers to write into instead of fresh `torch.empty`s."""
    _check_kernel_operands(x, y, log_scale, bias)
    if _upcast_for_interpreter(x):
        dz, parts = _sigmoid_loss_fused(x.float(), y.float(), log_scale, bias, diag_offset, norm=norm)
        results = (dz.to(x.dtype), parts)
        return results if out is None else tuple(o.copy_(r) for o, r in zip(out, results, strict=True))
    M, D = x.shape
    N = y.shape[0]
    bm, bn = _tiles(M, N)
    n_tiles = triton.cdiv(M, bm) * triton.cdiv(N, bn)
    if out is None:
        dz = torch.empty(M, N, device=x.device, dtype=x.dtype)
        parts = torch.empty(3, n_tiles, device=x.device, dtype=torch.float32)
    else:
        dz, parts = out
        if dz.shape != (M, N) or dz.dtype != x.dtype or not dz.is_contiguous():
            raise ValueError(f"out[0]: expected contiguous ({M}, {N}) {x.dtype}, got {tuple(dz.shape)} {dz.dtype}")
        if parts.shape != (3, n_tiles) or parts.dtype != torch.float32 or not parts.is_contiguous():
            raise ValueError(f"out[1]: expected contiguous (3, {n_tiles}) float32, got {tuple(parts.shape)} "
                             f"{parts.dtype}")
    _sigmoid_loss_grad_kernel[(n_tiles,)](
        x, y, log_scale, bias, dz, parts[0], parts[1], parts[2], M, N, D, diag_offset, float(norm), x.stride(0),
        y.stride(0),
        BLOCK_M=bm, BLOCK_N=bn, GROUP_M=8, PRECISION=_precision(x.dtype), FUSED=True,
    )
    return dz, parts


# ---------------------------------------------------------------------------------------------------------------
# Block primitives shared by the single-process op and the distributed ring (siglip_fast/loss.py)
# ---------------------------------------------------------------------------------------------------------------

_OUT_DTYPE_OK = {"mm": True, "addmm": True}  # torch builds whose CUDA GEMMs take out_dtype (bf16/fp16 -> fp32)


def _mm_f32(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b with an fp32 (or fp64) result; bf16/fp16 operands accumulate in fp32 without rounding the output."""
    if a.dtype in (torch.float32, torch.float64):
        return a @ b
    if a.is_cuda and _OUT_DTYPE_OK["mm"]:
        try:
            return torch.mm(a, b, out_dtype=torch.float32)
        except (TypeError, RuntimeError, NotImplementedError):
            _OUT_DTYPE_OK["mm"] = False  # older torch: a low-precision output, then upcast
    return (a @ b).float()


def _gemm_into(dst: torch.Tensor, a: torch.Tensor, b: torch.Tensor, alpha: float, accumulate: bool) -> None:
    """dst = alpha·a @ b (accumulate=False: dst's old values, NaN included, are ignored) or dst += alpha·a @ b;
    dst fp32/fp64 (a row range of an accumulator). No temporary where the GEMM can write dst's dtype itself."""
    if a.dtype == dst.dtype:
        dst.addmm_(a, b, beta=1.0 if accumulate else 0.0, alpha=alpha)
        return
    if a.is_cuda and _OUT_DTYPE_OK["addmm"]:
        try:
            if not accumulate and alpha == 1.0:
                torch.mm(a, b, out_dtype=dst.dtype, out=dst)
            else:
                torch.addmm(dst, a, b, out_dtype=dst.dtype, beta=1.0 if accumulate else 0.0, alpha=alpha, out=dst)
            return
        except (TypeError, RuntimeError, NotImplementedError):
            _OUT_DTYPE_OK["addmm"] = False
    prod = _mm_f32(a, b)
    if accumulate:
        dst.add_(prod, alpha=alpha)
    else:
        torch.mul(prod, alpha, out=dst)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _default_chunk_rows(backend: str, M: int, N: int, dtype: torch.dtype) -> int:
    """Rows of a full-width (rows, N) slab: ~128 MiB of dz' for Triton, 8 MiB (fp32) for eager."""
    if backend == "triton":
        rows = _SLAB_BYTES // (max(N, 1) * dtype.itemsize)
        return max(128, rows // 128 * 128)
    return max(1, _EAGER_SLAB_ELEMENTS // max(N, 1))


def _blocks(backend: str, M: int, N: int, dtype: torch.dtype, chunk_rows: int | None,
            chunk_cols: int | None) -> tuple[int, int]:
    """(rows, cols) of the dz' blocks the gradient GEMMs consume.

    Triton, by default: square-ish blocks of ~_SLAB_BYTES (8192 × 8192 in bf16, 5760 × 5760 in fp32), the shape
    that minimises the fp32 accumulator traffic for a given slab size (each block re-reads and rewrites its rows of
    dx' and its columns of dy'); a full-width slab when N is narrower than the square. chunk_rows alone keeps the
    old meaning, (chunk_rows, N) slabs; chunk_cols (tests) splits the columns too."""
    if chunk_rows is None and chunk_cols is None:
        if backend != "triton":
            return _default_chunk_rows(backend, M, N, dtype), N
        side = max(128, math.isqrt(_SLAB_BYTES // dtype.itemsize) // 128 * 128)
        cols = min(N, side)
        return max(128, _SLAB_BYTES // (cols * dtype.itemsize) // 128 * 128), cols
    return (chunk_rows or _default_chunk_rows(backend, M, min(N, chunk_cols or N), dtype)), (chunk_cols or N)


def _eager_logits(xc: torch.Tensor, y: torch.Tensor, log_scale: torch.Tensor, bias: torch.Tensor,
                  diag_offset: int) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """(w, diag): w = −label·z for a (C, N) slab, one fused GEMM; diag = the (row, col) pairs with label +1."""
    w = torch.addmm(bias, xc * log_scale.exp(), y.T)  # z = exp(t)·<x, y> + b, (C, N)
    lo, hi = max(0, -diag_offset), min(xc.shape[0], y.shape[0] - diag_offset)
    i = torch.arange(lo, max(lo, hi), device=xc.device)
    diag = (i, i + diag_offset)
    w[diag] = -w[diag]
    return w, diag


def _block_loss_sum(x: torch.Tensor, y: torch.Tensor, log_scale: torch.Tensor, bias: torch.Tensor,
                    diag_offset: int, backend: str, chunk_rows: int | None, norm: float = 1.0) -> torch.Tensor:
    """Σ_ij −log σ(label_ij·z_ij)·norm of x (M, D) against y (N, D), label +1 where j == i + diag_offset; fp32 0-d.

    Every term is multiplied by norm (1 / the loss's batch) before any sum: the terms are ≥ 0, so every partial sum
    is at most the loss itself, which therefore comes out finite whenever its true value fits the compute dtype
    (summing first and dividing at the end overflowed once N·loss did, e.g. logit_scale ≈ 88.7)."""
    M, N = x.shape[0], y.shape[0]
    if backend == "triton":
        return _sigmoid_loss_fwd(x, y, log_scale, bias, diag_offset, norm=norm).sum()
    cdt = _compute_dtype(x.dtype)
    x, y, log_scale, bias = x.to(cdt), y.to(cdt), log_scale.to(cdt), bias.to(cdt)
    chunk = chunk_rows or _default_chunk_rows(backend, M, N, x.dtype)
    total = torch.zeros((), device=x.device, dtype=cdt)
    for r0 in range(0, M, chunk):
        w, _ = _eager_logits(x[r0:r0 + chunk], y, log_scale, bias, diag_offset + r0)
        total = total + F.softplus(w).mul_(norm).sum()  # softplus(−label·z) = −log σ(label·z)
    return total


def _block_grads(x: torch.Tensor, y: torch.Tensor, log_scale: torch.Tensor, bias: torch.Tensor, diag_offset: int,
                 backend: str, blocks: tuple[int, int], dx_acc: torch.Tensor, dy_acc: torch.Tensor, alpha: float,
                 *, fused: bool, dx_fresh: bool, dy_fresh: bool, norm: float = 1.0) -> torch.Tensor:
    """One pass over the (rows, cols) blocks of dz' for x (M, D) against y (N, D): per block, one tile pass
    (Triton kernel or eager slab) writes the block of dz', then two GEMMs on it:

        dx_acc[rows] (+)= alpha · dz'_blk @ y[cols],   dy_acc[cols] (+)= alpha · dz'_blkᵀ @ x[rows]

    (the first column block writes dx_acc's rows when dx_fresh, the first row block dy_acc's columns when dy_fresh:
    no zero fill, no read of an uninitialised accumulator). fused: the training forward, dz' carries the factor
    exp(t) and the loss is summed too, each term times norm (see _block_loss_sum). Returns fp32/fp64 (3,):
    [Σ −log σ(label·z)·norm (fused only, else 0),
    Σ dz'·<x, y> (times exp(t) when fused), Σ dz']. dx_acc, dy_acc: fp32 (fp64 for fp64 inputs), contiguous."""
    M, N = x.shape[0], y.shape[0]
    rows, cols = blocks
    sums = torch.zeros(3, device=x.device, dtype=dx_acc.dtype)
    scale = log_scale.exp().reshape(()) if fused else None
    for r0 in range(0, M, rows):
        xr = x[r0:r0 + rows]  # (R, D)
        for c0 in range(0, N, cols):
            yc = y[c0:c0 + cols]  # (C, D)
            offset = diag_offset + r0 - c0  # label +1 where col == row + offset within the block
            if backend == "triton":
                if fused:
                    dz, parts = _sigmoid_loss_fused(xr, yc, log_scale, bias, offset, norm=norm)  # exp(t)·dz' (R, C)
                    sums += parts.sum(dim=1)
                else:
                    dz, tpart, bpart = _sigmoid_loss_bwd(xr, yc, log_scale, bias, offset)  # dz' (R, C)
                    sums[1] += tpart.sum()
                    sums[2] += bpart.sum()
                _gemm_into(dx_acc[r0:r0 + rows], dz, yc, alpha, accumulate=not (dx_fresh and c0 == 0))
            else:
                dz, diag = _eager_logits(xr, yc, log_scale, bias, offset)  # w = −label·z
                if fused:
                    sums[0] += F.softplus(dz).mul_(norm).sum()
                dz = dz.sigmoid_()  # σ(w)
                dz[diag] = -dz[diag]  # dz' = −label·σ(w)
                sums[2] += dz.sum()
                if fused:
                    dz.mul_(scale)
                dzy = dz @ yc  # (R, D)
                sums[1] += (dzy * xr).sum()  # Σ_ij dz'_ij <x_i, y_j> = Σ_i <x_i, (dz' @ y)_i>: O(R·D), not O(R·C)
                if dx_fresh and c0 == 0:
                    torch.mul(dzy, alpha, out=dx_acc[r0:r0 + rows])
                else:
                    dx_acc[r0:r0 + rows].add_(dzy, alpha=alpha)
            _gemm_into(dy_acc[c0:c0 + cols], dz.T, xr, alpha, accumulate=not (dy_fresh and r0 == 0))
            del dz
    return sums


def _block_backward(x: torch.Tensor, y: torch.Tensor, log_scale: torch.Tensor, bias: torch.Tensor,
                    coef: torch.Tensor, diag_offset: int, backend: str, chunk_rows: int | None,
                    dx_out: torch.Tensor, dy_acc: torch.Tensor, *, accumulate_dx: bool, chunk_cols: int | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of coef·Σ_ij −log σ(label_ij·z_ij) for one (x block, y block) pair, recomputing the logits (the
    distributed ring's backward; the single-process training path saves its gradients in the forward instead).

    Writes (or, with accumulate_dx, adds) dx into dx_out (M, D), adds dy into the fp32/fp64 accumulator dy_acc
    (N, D), and returns (dt, db) as fp32/fp64 0-d tensors. coef is a 0-d tensor (the incoming gradient / batch)."""
    M, N = x.shape[0], y.shape[0]
    cdt = dy_acc.dtype
    if backend == "eager":
        x, y, log_scale, bias = x.to(cdt), y.to(cdt), log_scale.to(cdt), bias.to(cdt)
    scale = log_scale.exp().to(cdt).reshape(())
    g = float(coef * scale)  # one host sync per block: lets cuBLAS fold the factor in (alpha) without temporaries
    blocks = _blocks(backend, M, N, x.dtype, chunk_rows, chunk_cols)
    direct = dx_out.dtype == cdt and dx_out.is_contiguous()
    dx_acc = dx_out if direct else torch.empty(dx_out.shape, device=x.device, dtype=cdt)
    sums = _block_grads(x, y, log_scale, bias, diag_offset, backend, blocks, dx_acc, dy_acc, g,
                        fused=False, dx_fresh=not (direct and accumulate_dx), dy_fresh=False)
    if not direct:
        if accumulate_dx:
            dx_out.add_(dx_acc)
        else:
            dx_out.copy_(dx_acc)
    return coef * scale * sums[1], coef * sums[2]


# ---------------------------------------------------------------------------------------------------------------
# Input checks, shared with siglip_fast/loss.py
# ---------------------------------------------------------------------------------------------------------------

def _check_inputs(image_embeds, text_embeds, logit_scale, logit_bias) -> None:
    for name, v in (("image_embeds", image_embeds), ("text_embeds", text_embeds),
                    ("logit_scale", logit_scale), ("logit_bias", logit_bias)):
        if not isinstance(v, torch.Tensor):
            raise TypeError(f"sigmoid_loss: {name} must be a torch.Tensor, got {type(v).__name__}")
        if not v.is_floating_point():
            raise TypeError(f"sigmoid_loss: {name} must be a floating-point tensor, got {v.dtype}")
    for name, v in (("image_embeds", image_embeds), ("text_embeds", text_embeds)):
        if v.dim() != 2:
            raise ValueError(f"sigmoid_loss: {name} must be 2-D (N, D), got shape {tuple(v.shape)}")
        if v.dtype not in _EAGER_DTYPES:
            raise TypeError(f"sigmoid_loss: {name} dtype must be one of {_EAGER_DTYPES}, got {v.dtype}")
    if image_embeds.shape != text_embeds.shape:
        raise ValueError(f"sigmoid_loss: image_embeds and text_embeds must have the same shape (N, D), got "
                         f"{tuple(image_embeds.shape)} and {tuple(text_embeds.shape)}")
    if image_embeds.shape[0] == 0 or image_embeds.shape[1] == 0:
        raise ValueError(f"sigmoid_loss: empty embeddings, got shape {tuple(image_embeds.shape)}")
    if image_embeds.dtype != text_embeds.dtype:
        raise TypeError(f"sigmoid_loss: image_embeds and text_embeds must share a dtype, got {image_embeds.dtype} "
                        f"and {text_embeds.dtype}")
    for name, v in (("logit_scale", logit_scale), ("logit_bias", logit_bias)):
        if v.dim() > 1 or v.numel() != 1:
            raise ValueError(f"sigmoid_loss: {name} must be a scalar tensor of shape () or (1,), got shape "
                             f"{tuple(v.shape)}")
    devices = [(n, v.device) for n, v in (("image_embeds", image_embeds), ("text_embeds", text_embeds),
                                          ("logit_scale", logit_scale), ("logit_bias", logit_bias))]
    if len({d for _, d in devices}) != 1:
        raise ValueError("sigmoid_loss: all inputs must be on one device, got "
                         + ", ".join(f"{n} on {d}" for n, d in devices))


def _resolve_backend(backend: str, x: torch.Tensor) -> str:
    if backend not in _BACKENDS:
        raise ValueError(f"sigmoid_loss: backend must be one of {_BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "triton" if x.device.type == "cuda" and x.dtype in _KERNEL_DTYPES else "eager"
    if backend == "triton":
        if x.device.type != "cuda" and not (x.device.type == "cpu" and _CPU_OK):
            raise ValueError(f"sigmoid_loss: backend='triton' needs CUDA tensors (or CPU tensors with "
                             f"TRITON_INTERPRET=1 set before triton is imported), got tensors on {x.device}")
        if x.dtype not in _KERNEL_DTYPES:
            raise TypeError(f"sigmoid_loss: backend='triton' supports {_KERNEL_DTYPES}, got {x.dtype}")
    return backend


def _autocast_embeds(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, str | None]:
    """Under torch.autocast (on the embeddings' device): (x, y) in the autocast dtype, as autocast casts the inputs of
    the logits GEMM (float64 ones are kept, as autocast keeps them), and the device type whose autocast the loss then
    switches off for its own fp32 math (None when autocast is off there)."""
    kind = x.device.type
    if kind not in ("cpu", "cuda") or not torch.is_autocast_enabled(kind):
        return x, y, None
    amp = torch.get_autocast_dtype(kind)
    cast = lambda t: t if t.dtype in (amp, torch.float64) else t.to(amp)  # noqa: E731
    return cast(x), cast(y), kind


def _loss_dtype(x: torch.Tensor, t: torch.Tensor, b: torch.Tensor) -> torch.dtype:
    return torch.promote_types(torch.promote_types(x.dtype, t.dtype), b.dtype)


def _scalars(t: torch.Tensor, b: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(log_scale, bias) as contiguous (1,) tensors of the compute dtype (t and b may be stored in any float dtype)."""
    return t.detach().reshape(1).to(dtype).contiguous(), b.detach().reshape(1).to(dtype).contiguous()


# ---------------------------------------------------------------------------------------------------------------
# Single-process ops: torch custom ops (torch.compile traces through them)
# ---------------------------------------------------------------------------------------------------------------

def _loss_forward(x, y, t, b, backend: str, chunk_rows: int) -> torch.Tensor:
    log_scale, bias = _scalars(t, b, _compute_dtype(x.dtype))
    x, y = x.contiguous(), y.contiguous()
    total = _block_loss_sum(x, y, log_scale, bias, 0, backend, chunk_rows or None, norm=1.0 / x.shape[0])
    return total.to(_loss_dtype(x, t, b))


def _loss_train(x, y, t, b, backend: str, chunk_rows: int):
    """The training forward: the loss and, from the same tile pass, the gradients of the loss sum Σ −log σ(label·z)
    (not yet divided by N, not multiplied by the incoming gradient): exp(t)·dz' @ y, exp(t)·dz'ᵀ @ x in fp32 (fp64
    for fp64 inputs), and exp(t)·Σ dz'·<x, y> and Σ dz' as (1,) tensors."""
    cdt = _compute_dtype(x.dtype)
    log_scale, bias = _scalars(t, b, cdt)
    x, y = x.contiguous(), y.contiguous()
    if backend == "eager":
        x, y = x.to(cdt), y.to(cdt)
    dxs = torch.empty(x.shape, device=x.device, dtype=cdt)
    dys = torch.empty(y.shape, device=y.device, dtype=cdt)
    blocks = _blocks(backend, x.shape[0], y.shape[0], x.dtype, chunk_rows or None, None)
    sums = _block_grads(x, y, log_scale, bias, 0, backend, blocks, dxs, dys, 1.0,
                        fused=True, dx_fresh=True, dy_fresh=True, norm=1.0 / x.shape[0])
    loss = sums[0].to(_loss_dtype(x, t, b))
    return loss, dxs, dys, sums[1:2].clone(), sums[2:3].clone()


@torch.library.custom_op("siglip_fast::sigmoid_loss", mutates_args=())
def _sigmoid_loss_op(image_embeds: torch.Tensor, text_embeds: torch.Tensor, logit_scale: torch.Tensor,
                     logit_bias: torch.Tensor, backend: str, chunk_rows: int) -> torch.Tensor:
    """The loss only (eval, no_grad): the forward kernel, no N×N and no (N, D) buffer."""
    return _loss_forward(image_embeds, text_embeds, logit_scale, logit_bias, backend, chunk_rows)


@_sigmoid_loss_op.register_fake
def _(image_embeds, text_embeds, logit_scale, logit_bias, backend, chunk_rows):
    return image_embeds.new_empty((), dtype=_loss_dtype(image_embeds, logit_scale, logit_bias))


@torch.library.custom_op("siglip_fast::sigmoid_loss_train", mutates_args=())
def _sigmoid_loss_train_op(image_embeds: torch.Tensor, text_embeds: torch.Tensor, logit_scale: torch.Tensor,
                           logit_bias: torch.Tensor, backend: str, chunk_rows: int
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, dxs, dys, dts, dbs): the loss and the unscaled gradients its backward only rescales."""
    return _loss_train(image_embeds, text_embeds, logit_scale, logit_bias, backend, chunk_rows)


@_sigmoid_loss_train_op.register_fake
def _(image_embeds, text_embeds, logit_scale, logit_bias, backend, chunk_rows):
    cdt = _compute_dtype(image_embeds.dtype)
    stat = image_embeds.new_empty((1,), dtype=cdt)
    return (image_embeds.new_empty((), dtype=_loss_dtype(image_embeds, logit_scale, logit_bias)),
            image_embeds.new_empty(image_embeds.shape, dtype=cdt), text_embeds.new_empty(text_embeds.shape, dtype=cdt),
            stat, torch.empty_like(stat))


@torch.library.custom_op("siglip_fast::sigmoid_loss_train_backward", mutates_args=())
def _sigmoid_loss_train_backward_op(grad: torch.Tensor, dxs: torch.Tensor, dys: torch.Tensor, dts: torch.Tensor,
                                    dbs: torch.Tensor, embed_dtype: torch.dtype
                                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dx, dy, dt, db) = (grad/N)·(dxs, dys, dts, dbs); dx, dy written straight in the embeddings' dtype (no fp32
    temporary), dt, db (1,) in the compute dtype. No kernel launch, no recompute: one elementwise pass."""
    coef = grad.detach().to(dxs.dtype).reshape(()) / dxs.shape[0]
    dx = torch.empty(dxs.shape, device=dxs.device, dtype=embed_dtype)
    dy = torch.empty(dys.shape, device=dys.device, dtype=embed_dtype)
    torch.mul(dxs, coef, out=dx)
    torch.mul(dys, coef, out=dy)
    return dx, dy, dts * coef, dbs * coef


@_sigmoid_loss_train_backward_op.register_fake
def _(grad, dxs, dys, dts, dbs, embed_dtype):
    return (dxs.new_empty(dxs.shape, dtype=embed_dtype), dys.new_empty(dys.shape, dtype=embed_dtype),
            torch.empty_like(dts), torch.empty_like(dbs))


def _train_setup_context(ctx, inputs, output):
    image_embeds, text_embeds, logit_scale, logit_bias, backend, chunk_rows = inputs
    _, dxs, dys, dts, dbs = output
    ctx.save_for_backward(dxs, dys, dts, dbs)  # (N, D), (N, D), (1,), (1,): nothing N×N
    ctx.mark_non_differentiable(dxs, dys, dts, dbs)
    ctx.set_materialize_grads(False)  # no zero (N, D) gradients for the saved outputs
    ctx.embed_dtype = image_embeds.dtype
    ctx.t_meta, ctx.b_meta = (logit_scale.dtype, logit_scale.shape), (logit_bias.dtype, logit_bias.shape)


def _train_backward(ctx, grad, *_):
    if torch.is_grad_enabled():  # create_graph=True: the saved gradients carry no graph back to the inputs
        raise RuntimeError("sigmoid_loss: double backward (create_graph=True) is not supported: its gradients are "
                           "computed in the forward and saved, so they cannot be differentiated again; use "
                           "sigmoid_loss_reference for higher-order gradients")
    dxs, dys, dts, dbs = ctx.saved_tensors
    dx, dy, dt, db = _sigmoid_loss_train_backward_op(grad, dxs, dys, dts, dbs, ctx.embed_dtype)
    (t_dtype, t_shape), (b_dtype, b_shape) = ctx.t_meta, ctx.b_meta
    return dx, dy, dt.to(t_dtype).reshape(t_shape), db.to(b_dtype).reshape(b_shape), None, None


_sigmoid_loss_train_op.register_autograd(_train_backward, setup_context=_train_setup_context)


# ---------------------------------------------------------------------------------------------------------------
# Public functionals and the reference
# ---------------------------------------------------------------------------------------------------------------

def sigmoid_loss(image_embeds: torch.Tensor, text_embeds: torch.Tensor, logit_scale: torch.Tensor,
                 logit_bias: torch.Tensor, *, backend: str = "auto", chunk_rows: int | None = None) -> torch.Tensor:
    """The SigLIP sigmoid loss of one device's batch, without materialising the N×N logits.

    image_embeds, text_embeds: (N, D), same dtype (fp16/bf16/fp32; fp64 on the eager backend), already
    L2-normalised (this function does not normalise). logit_scale (t, a log) and logit_bias (b): 0-d or (1,) float
    tensors, any float dtype (fp32 with bf16 embeddings is the usual case). Returns a 0-d tensor of dtype
    promote(embeddings, t, b), computed with fp32 accumulation. backend: "auto" (Triton on CUDA, eager blockwise
    on CPU), "triton", "eager". chunk_rows: rows per slab of dz' (memory knob; by default Triton uses ~128 MiB
    blocks of 8192 × 8192 in bf16, eager 8 MiB full-width slabs). When a gradient will be needed (grad mode on and
    an input requires grad) the forward also computes the gradients (see the module docstring) and keeps two
    (N, D) fp32 tensors until the backward; otherwise it only sums the loss. For several devices use
    `siglip_fast.sigmoid_loss(..., group=...)`.

    Under torch.autocast the embeddings are cast to the autocast dtype (as autocast casts a GEMM's inputs; the
    gradients flow back to the originals) and the rest runs as without autocast: fp32 accumulation, the loss in
    promote(autocast dtype, t, b).
    """
    _check_inputs(image_embeds, text_embeds, logit_scale, logit_bias)
    image_embeds, text_embeds, amp_device = _autocast_embeds(image_embeds, text_embeds)
    if amp_device is not None:
        with torch.autocast(amp_device, enabled=False):
            return sigmoid_loss(image_embeds, text_embeds, logit_scale, logit_bias, backend=backend,
                                chunk_rows=chunk_rows)
    backend = _resolve_backend(backend, image_embeds)
    if chunk_rows is not None and (not isinstance(chunk_rows, int) or chunk_rows < 1):
        raise ValueError(f"sigmoid_loss: chunk_rows must be a positive int, got {chunk_rows!r}")
    args = (image_embeds, text_embeds, logit_scale, logit_bias, backend, chunk_rows or 0)
    if torch.is_grad_enabled() and any(v.requires_grad for v in args[:4]):
        return _sigmoid_loss_train_op(*args)[0]  # the gradients come out of the forward's tile pass
    return _sigmoid_loss_op(*args)


def sigmoid_loss_blockwise(image_embeds: torch.Tensor, text_embeds: torch.Tensor, logit_scale: torch.Tensor,
                           logit_bias: torch.Tensor, *, chunk_rows: int | None = None) -> torch.Tensor:
    """The eager blockwise path (any device): `sigmoid_loss(..., backend="eager")`."""
    return sigmoid_loss(image_embeds, text_embeds, logit_scale, logit_bias, backend="eager", chunk_rows=chunk_rows)


def sigmoid_loss_reference(image_embeds: torch.Tensor, text_embeds: torch.Tensor, logit_scale: torch.Tensor,
                           logit_bias: torch.Tensor) -> torch.Tensor:
    """The plain formula, as open_clip and transformers compute it: full (N, N) logits, labels 2I − 1 (each term
    divided by N before the sum, so that the loss is finite whenever its true value is: the terms are ≥ 0)."""
    n = image_embeds.shape[0]
    logits = image_embeds @ text_embeds.T * logit_scale.exp() + logit_bias  # (N, N)
    labels = 2 * torch.eye(n, device=logits.device, dtype=logits.dtype) - 1
    return (-F.logsigmoid(labels * logits) / n).sum()
