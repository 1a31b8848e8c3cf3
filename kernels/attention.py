"""Fused multi-head attention (non-causal), FlashAttention-2 style, in SigLIP's (B, N, H, d) layout.

    out = softmax(q k^T * scale [masked]) v        q: (B, Nq, H, d)   k, v: (B, Nk, H, d)   out: (B, Nq, H, d)

q, k and v are read through their strides, so they can be `.view`s of one fused (B, N, 3, H, d) QKV projection
output: no transposes, no copies. The forward keeps an online softmax in fp32 (exp2, log2(e) folded into the scale)
and saves the log-sum-exp per query row (fp32) for the backward. The backward is FlashAttention-2's: a preprocess
computes delta = rowsum(dO * O); one kernel owns a block of keys and iterates over query blocks (dk, dv); another
owns a block of queries and iterates over key blocks (dq). Every gradient element is written by exactly one program:
no atomics, bitwise deterministic. No kernel accumulates into a buffer it did not zero itself, so the autotuners
need no `reset_to_zero`/`restore_value`.

Head dims. `tl.arange` and `tl.dot` need power-of-two blocks of at least 16, and SigLIP So400m has d = 72. Padding
72 up to 128 would spend 1.78x the FLOPs. Instead the head dim is split into a power-of-two block and a remainder
block padded to a power of two (>= 16), handled as two dot products that share the softmax:

    d      blocks        columns computed   FLOP overhead (vs padding to the next power of two)
    8      16            16                 2.00x (tl.dot minimum)
    40     32 + 16       48                 1.20x (1.60x)
    48     32 + 16       48                 1.00x (1.33x)
    72     64 + 16       80                 1.11x (1.78x)
    80     64 + 16       80                 1.00x (1.60x)
    88     64 + 32       96                 1.09x (1.45x)
    96     64 + 32       96                 1.00x (1.33x)
    other  next power of two (the split would not save anything: 24, 56, 104, 112, 120 pad as one block)

Alignment. Hopper loads a tile row with 16-byte (async) copies only when the compiler can prove 16-byte alignment:
triton specialises integer arguments divisible by 16, and So400m's head stride 72 is not, so every load of a q/k/v
view of the fused QKV output compiled to scalar 16-bit accesses. The launchers check the real alignment (base
pointers on 16-byte boundaries, unit stride along d, every other stride a multiple of 16 bytes) and pass ALIGN (the
elements in 16 bytes, else 1); the kernels then rewrite each stride as `stride // ALIGN * ALIGN`, which the compiler
knows is a multiple of ALIGN. Unaligned inputs (odd head dims, offset views) take the same code with ALIGN = 1.

Blocks. A program owns BLOCK_M query rows (forward, dq) or BLOCK_N keys (dk/dv) and steps over the other side in full
blocks, then over the partial last block in a block of its own size (the remainder rounded up to a power of two,
at least 16): 196 keys in blocks of 64 take three 64-key steps and one 16-key step, not four 64-key steps. The hot
loop (no mask, full blocks) applies the softmax scale inside one FMA per score. The autotuners key on the token
counts, the head dim, the mask and a power-of-two bucket of B·H, so a small warm-up batch does not pick the
config of a large one.

Masking. `attention_mask` (B, Nk) marks the keys to attend to (True / nonzero), transformers' convention. A masked
key's score is replaced by a large finite negative number (-1e30 in the log2 domain), never -inf, so its weight is
exactly 0 whenever the row attends to at least one key. transformers' eager path adds finfo(dtype).min instead,
which swamps every score of a row whose keys are *all* masked and leaves a uniform average over all Nk keys; the
kernels reproduce that: when a batch row has no attended key, its masked scores are replaced by 0 (all equal), so
every query averages all keys uniformly and the gradients are the eager path's (whose softmax backward still
flows through the swamped scores). Keys past Nk (block tails) get -inf: they never exist.
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
_LOG2E = 1.4426950408889634
_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_MAX_HEAD_DIM = 128


# ----------------------------------------------------------------------------------------------------------------
# Autotune configs, declared beside the kernels they tune. Under the interpreter each collapses to one config.
# ----------------------------------------------------------------------------------------------------------------
def _configs(gpu: list[tuple[int, int, int, int]]) -> list[triton.Config]:
    """(BLOCK_M, BLOCK_N, num_warps, num_stages) tuples -> triton.Configs; one small config under the interpreter."""
    if _INTERPRET:
        return [triton.Config({"BLOCK_M": 32, "BLOCK_N": 32}, num_warps=4, num_stages=1)]
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s) for m, n, w, s in gpu]


# Tiles of at least 64 rows per warpgroup run on Hopper's warpgroup MMA; 16-row query blocks serve the MAP head
# (Nq = 1) and are pruned everywhere else. Few configs per kernel: each costs a compile (and CI's code-generation
# gate compiles all of them) and an autotuning run.
# forward: BLOCK_M query rows owned, BLOCK_N keys per step.
_FWD_CONFIGS = _configs([
    (128, 64, 8, 3), (128, 128, 8, 3), (128, 64, 4, 3), (64, 64, 4, 3), (64, 128, 4, 3), (16, 64, 4, 3),
])
# dk/dv: BLOCK_N keys owned (the MMA rows), BLOCK_M queries per step.
_BWD_KV_CONFIGS = _configs([
    (32, 128, 8, 3), (64, 128, 8, 3), (64, 64, 4, 3), (32, 64, 4, 3), (16, 64, 4, 3),
])
# dq: BLOCK_M query rows owned, BLOCK_N keys per step.
_BWD_Q_CONFIGS = _configs([
    (128, 64, 8, 3), (128, 32, 4, 3), (64, 64, 4, 3), (16, 64, 4, 3),
])


def _prune_block_m(configs, named_args, **kwargs):
    """Keep query blocks no taller than the (padded) query count, and 16-row blocks only for Nq <= 16 (the MAP
    head's single query): a 16-row tile cannot use warpgroup MMA."""
    nq = named_args["Nq"]
    cap = max(16, triton.next_power_of_2(nq))
    kept = [c for c in configs if c.kwargs["BLOCK_M"] <= cap and (c.kwargs["BLOCK_M"] > 16 or nq <= 16)]
    return kept or configs


def _tail_block(count: str, block: str):
    """Heuristic: the block size of the partial last block along `count` (0 when `block` divides it): the
    remainder rounded up to a power of two, at least 16 (tl.dot's minimum), at most `block`. 196 keys in blocks of
    64 leave 4: one 16-key step instead of a 64-key one."""
    def tail(args):
        rest = args[count] % args[block]
        return 0 if rest == 0 else min(args[block], max(16, triton.next_power_of_2(rest)))
    return tail


def _bh_bucket(batch_heads: int) -> int:
    """The batch x heads autotune bucket: a power of two, capped where the grid fills any GPU many times over."""
    return min(triton.next_power_of_2(batch_heads), 4096)


# Nq, Nk, the head dim and the mask fix the work per program; B·H (bucketed) fixes how many programs fill the GPU,
# which changes the best block size: a batch-2 warm-up must not choose the config of a batch-128 run.
_AUTOTUNE_KEY = ["Nq", "Nk", "HEAD_DIM", "HAS_MASK", "BH_BUCKET"]


# ----------------------------------------------------------------------------------------------------------------
# Triton kernels. Tile pointers are built once and advanced by a scalar per step (cheap on the GPU, and few ops per
# step under the interpreter). `*_ok` vectors are bounds masks, applied only where a constexpr says they may bite.
# ----------------------------------------------------------------------------------------------------------------
@triton.jit
def _load(ptrs, row_ok, col_ok, MASK_ROWS: tl.constexpr, MASK_COLS: tl.constexpr):
    """A tile at ptrs (R, C), zero where row_ok (R,) / col_ok (C,) are False if MASK_ROWS / MASK_COLS."""
    if MASK_ROWS and MASK_COLS:
        x = tl.load(ptrs, mask=row_ok[:, None] & col_ok[None, :], other=0.0)
    elif MASK_ROWS:
        x = tl.load(ptrs, mask=row_ok[:, None], other=0.0)
    elif MASK_COLS:
        x = tl.load(ptrs, mask=col_ok[None, :], other=0.0)
    else:
        x = tl.load(ptrs)
    return x


@triton.jit
def _store(ptrs, x, row_ok, col_ok, MASK_ROWS: tl.constexpr, MASK_COLS: tl.constexpr):
    x = x.to(ptrs.dtype.element_ty)
    if MASK_ROWS and MASK_COLS:
        tl.store(ptrs, x, mask=row_ok[:, None] & col_ok[None, :])
    elif MASK_ROWS:
        tl.store(ptrs, x, mask=row_ok[:, None])
    elif MASK_COLS:
        tl.store(ptrs, x, mask=col_ok[None, :])
    else:
        tl.store(ptrs, x)


@triton.jit
def _load_vec(ptrs, ok, MASK: tl.constexpr, other):
    if MASK:
        x = tl.load(ptrs, mask=ok, other=other)
    else:
        x = tl.load(ptrs)
    return x


@triton.jit
def _masked_score(mask_base, stride_mn, Nk, BLOCK_N: tl.constexpr):
    """The score given to masked keys of one batch row: -1e30 (weight exactly 0) when the row attends to at least
    one key; 0.0 when it attends to none, so that all keys weigh the same, as transformers' additive finfo.min."""
    offs_n = tl.arange(0, BLOCK_N)
    any_kept = 0
    for n0 in range(0, Nk, BLOCK_N):
        keep = tl.load(mask_base + (n0 + offs_n) * stride_mn, mask=offs_n < Nk - n0, other=0) != 0
        any_kept = tl.maximum(any_kept, tl.max(keep.to(tl.int32), 0))
    return tl.where(any_kept > 0, -1.0e30, 0.0)


@triton.jit
def _hint(stride, ALIGN: tl.constexpr):
    """`stride`, known to the compiler as a multiple of ALIGN (the launcher checked that it is one, or that its
    dimension has size 1, where the stride is multiplied by 0): with ALIGN elements = 16 bytes, tile rows start on
    16-byte boundaries and loads become 16-byte (async) copies instead of scalar ones. ALIGN = 1: no claim."""
    if ALIGN > 1:
        stride = stride // ALIGN * ALIGN
    return stride


@triton.jit
def _head_base(ptr, b, h, stride_b, stride_h, ALIGN: tl.constexpr):
    """The pointer to batch b, head h of a (B, N, H, d) tensor, its strides hinted as multiples of ALIGN."""
    return ptr + b * _hint(stride_b, ALIGN) + h * _hint(stride_h, ALIGN)


@triton.jit
def _key_tiles(k_base, v_base, mask_base, offs_d0, offs_d1, d0_ok, d1_ok, n_start, Nk,
               stride_kn, stride_kd, stride_vn, stride_vd, stride_mn, TAIL: tl.constexpr, BLOCK_N: tl.constexpr):
    """The key-side tiles of a loop over keys from n_start: (n_ok (BLOCK_N,), the load masks of the two head-dim
    blocks, k and v tile pointers (BLOCK_N, D0) / (BLOCK_N, D1), key-mask pointers (BLOCK_N,)). Rows are bounded by
    Nk only in the TAIL step."""
    offs_n = n_start + tl.arange(0, BLOCK_N)
    n_ok = offs_n < Nk
    mask0 = n_ok[:, None] & d0_ok[None, :] if TAIL else d0_ok[None, :]
    mask1 = n_ok[:, None] & d1_ok[None, :] if TAIL else d1_ok[None, :]
    k0_ptrs = k_base + offs_n[:, None] * stride_kn + offs_d0[None, :] * stride_kd
    k1_ptrs = k_base + offs_n[:, None] * stride_kn + offs_d1[None, :] * stride_kd
    v0_ptrs = v_base + offs_n[:, None] * stride_vn + offs_d0[None, :] * stride_vd
    v1_ptrs = v_base + offs_n[:, None] * stride_vn + offs_d1[None, :] * stride_vd
    return n_ok, mask0, mask1, k0_ptrs, k1_ptrs, v0_ptrs, v1_ptrs, mask_base + offs_n * stride_mn


@triton.jit
def _attention_fwd_inner(
    acc0, acc1, l_i, m_i,      # running output (BLOCK_M, D0), (BLOCK_M, D1), row sum and row max (BLOCK_M,)
    q0, q1,                    # query tile split along the head dim: (BLOCK_M, D0), (BLOCK_M, D1)
    k_base, v_base, mask_base,  # this (batch, head)'s keys, values and key mask, at key 0
    offs_d0, offs_d1, d0_ok, d1_ok,  # head-dim offsets and bounds of the two blocks: (D0,), (D1,)
    masked_score, n_start, n_end, Nk, qk_scale, stride_kn, stride_kd, stride_vn, stride_vd, stride_mn,
    HAS_D1: tl.constexpr, PAD_D0: tl.constexpr, PAD_D1: tl.constexpr, HAS_MASK: tl.constexpr, TAIL: tl.constexpr,
    DOT_PRECISION: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """Online-softmax steps over keys [n_start, n_end) in BLOCK_N blocks. TAIL: one step over the partial last
    block (BLOCK_N is then the tail's own, smaller block), keys >= Nk masked."""
    n_ok, mask0, mask1, k0_ptrs, k1_ptrs, v0_ptrs, v1_ptrs, keep_ptrs = _key_tiles(
        k_base, v_base, mask_base, offs_d0, offs_d1, d0_ok, d1_ok, n_start, Nk,
        stride_kn, stride_kd, stride_vn, stride_vd, stride_mn, TAIL, BLOCK_N)
    for _ in range(n_start, n_end, BLOCK_N):
        k0 = tl.load(k0_ptrs, mask=mask0, other=0.0) if TAIL or PAD_D0 else tl.load(k0_ptrs)  # (BLOCK_N, D0)
        s = tl.dot(q0, tl.trans(k0), input_precision=DOT_PRECISION)                   # (BLOCK_M, BLOCK_N)
        if HAS_D1:
            k1 = tl.load(k1_ptrs, mask=mask1, other=0.0) if TAIL or PAD_D1 else tl.load(k1_ptrs)  # (BLOCK_N, D1)
            s = tl.dot(q1, tl.trans(k1), s, input_precision=DOT_PRECISION)
        if HAS_MASK or TAIL:
            s = s * qk_scale                                                            # log2 domain
            if HAS_MASK:
                keep = (tl.load(keep_ptrs, mask=n_ok, other=1) if TAIL else tl.load(keep_ptrs)) != 0
                s = tl.where(keep[None, :], s, masked_score)
                keep_ptrs += BLOCK_N * stride_mn
            if TAIL:
                s = tl.where(n_ok[None, :], s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            p = tl.math.exp2(s - m_new[:, None])
        else:  # the hot loop: scale folded into one FMA per score (qk_scale > 0, so max(s)·c = max(s·c))
            m_new = tl.maximum(m_i, tl.max(s, 1) * qk_scale)
            p = tl.math.exp2(s * qk_scale - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        m_i = m_new
        p = p.to(v_base.dtype.element_ty)  # P in v's dtype for the PV product (bf16/fp16 tensor cores)
        if HAS_MASK:  # a masked key weighs 0, but 0·NaN is NaN: its value is not read (unless the row keeps none)
            vkeep = (tl.maximum(keep.to(tl.int32), (masked_score == 0.0).to(tl.int32)) != 0)[:, None]  # (BLOCK_N, 1)
            v0 = tl.load(v0_ptrs, mask=(mask0 & vkeep) if TAIL or PAD_D0 else vkeep, other=0.0)
        else:
            v0 = tl.load(v0_ptrs, mask=mask0, other=0.0) if TAIL or PAD_D0 else tl.load(v0_ptrs)
        acc0 = tl.dot(p, v0, acc0 * alpha[:, None], input_precision=DOT_PRECISION)
        k0_ptrs += BLOCK_N * stride_kn
        v0_ptrs += BLOCK_N * stride_vn
        if HAS_D1:
            if HAS_MASK:
                v1 = tl.load(v1_ptrs, mask=(mask1 & vkeep) if TAIL or PAD_D1 else vkeep, other=0.0)
            else:
                v1 = tl.load(v1_ptrs, mask=mask1, other=0.0) if TAIL or PAD_D1 else tl.load(v1_ptrs)
            acc1 = tl.dot(p, v1, acc1 * alpha[:, None], input_precision=DOT_PRECISION)
            k1_ptrs += BLOCK_N * stride_kn
            v1_ptrs += BLOCK_N * stride_vn
    return acc0, acc1, l_i, m_i


@triton.autotune(configs=_FWD_CONFIGS, key=_AUTOTUNE_KEY, prune_configs_by={"early_config_prune": _prune_block_m})
@triton.heuristics({"EVEN_M": lambda a: a["Nq"] % a["BLOCK_M"] == 0, "TAIL_N": _tail_block("Nk", "BLOCK_N")})
@triton.jit
def _attention_fwd_kernel(
    Q,     # pointer to q, shape (B, Nq, H, d), any strides
    K,     # pointer to k, shape (B, Nk, H, d), any strides
    V,     # pointer to v, shape (B, Nk, H, d), any strides
    Mask,  # pointer to the key mask, shape (B, Nk), nonzero = attend (unused without HAS_MASK)
    Out,   # pointer to the output, shape (B, Nq, H, d)
    Lse,   # pointer to the log2-domain log-sum-exp of the scaled scores, shape (B, H, Nq), fp32
    stride_qb, stride_qn, stride_qh, stride_qd,
    stride_kb, stride_kn, stride_kh, stride_kd,
    stride_vb, stride_vn, stride_vh, stride_vd,
    stride_mb, stride_mn,
    stride_ob, stride_on, stride_oh, stride_od,
    qk_scale,  # scale * log2(e), > 0
    H, Nq, Nk,
    BH_BUCKET,  # next power of two of B·H (capped): an autotune key only, so a small warm-up batch tunes apart
    HEAD_DIM: tl.constexpr, BLOCK_D0: tl.constexpr, BLOCK_D1: tl.constexpr, HAS_D1: tl.constexpr,
    PAD_D0: tl.constexpr, PAD_D1: tl.constexpr, HAS_MASK: tl.constexpr, DOT_PRECISION: tl.constexpr,
    ALIGN: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, EVEN_M: tl.constexpr, TAIL_N: tl.constexpr,
):
    # one program per (query block, batch, head); consecutive programs share (batch, head), so k/v stay in L2
    num_m = tl.cdiv(Nq, BLOCK_M)
    pid = tl.program_id(0)
    pid_m = pid % num_m
    bh = pid // num_m
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    stride_qn = _hint(stride_qn, ALIGN)
    stride_kn = _hint(stride_kn, ALIGN)
    stride_vn = _hint(stride_vn, ALIGN)
    stride_on = _hint(stride_on, ALIGN)
    q_base = _head_base(Q, b, h, stride_qb, stride_qh, ALIGN)
    k_base = _head_base(K, b, h, stride_kb, stride_kh, ALIGN)
    v_base = _head_base(V, b, h, stride_vb, stride_vh, ALIGN)
    o_base = _head_base(Out, b, h, stride_ob, stride_oh, ALIGN)
    mask_base = Mask + b * stride_mb

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d0 = tl.arange(0, BLOCK_D0)
    offs_d1 = BLOCK_D0 + tl.arange(0, BLOCK_D1)
    m_ok = offs_m < Nq
    d0_ok = offs_d0 < HEAD_DIM
    d1_ok = offs_d1 < HEAD_DIM
    q0 = _load(q_base + offs_m[:, None] * stride_qn + offs_d0[None, :] * stride_qd, m_ok, d0_ok, not EVEN_M, PAD_D0)
    acc0 = tl.zeros((BLOCK_M, BLOCK_D0), dtype=tl.float32)
    acc1 = tl.zeros((BLOCK_M, BLOCK_D1), dtype=tl.float32)
    if HAS_D1:
        q1 = _load(q_base + offs_m[:, None] * stride_qn + offs_d1[None, :] * stride_qd, m_ok, d1_ok,
                   not EVEN_M, PAD_D1)
    else:  # unused placeholder
        q1 = acc1.to(Q.dtype.element_ty)
    m_i = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
    masked_score = _masked_score(mask_base, stride_mn, Nk, BLOCK_N) if HAS_MASK else 0.0

    n_full = (Nk // BLOCK_N) * BLOCK_N
    acc0, acc1, l_i, m_i = _attention_fwd_inner(
        acc0, acc1, l_i, m_i, q0, q1, k_base, v_base, mask_base, offs_d0, offs_d1, d0_ok, d1_ok,
        masked_score, 0, n_full, Nk, qk_scale, stride_kn, stride_kd, stride_vn, stride_vd, stride_mn,
        HAS_D1, PAD_D0, PAD_D1, HAS_MASK, False, DOT_PRECISION, BLOCK_N)
    if TAIL_N > 0:  # the partial last key block, in a block of its own size (e.g. 4 keys of 196: 16, not 64)
        acc0, acc1, l_i, m_i = _attention_fwd_inner(
            acc0, acc1, l_i, m_i, q0, q1, k_base, v_base, mask_base, offs_d0, offs_d1, d0_ok, d1_ok,
            masked_score, n_full, Nk, Nk, qk_scale, stride_kn, stride_kd, stride_vn, stride_vd, stride_mn,
            HAS_D1, PAD_D0, PAD_D1, HAS_MASK, True, DOT_PRECISION, TAIL_N)

    inv_l = 1.0 / l_i
    o_rows = o_base + offs_m[:, None] * stride_on
    _store(o_rows + offs_d0[None, :] * stride_od, acc0 * inv_l[:, None], m_ok, d0_ok, not EVEN_M, PAD_D0)
    if HAS_D1:
        _store(o_rows + offs_d1[None, :] * stride_od, acc1 * inv_l[:, None], m_ok, d1_ok, not EVEN_M, PAD_D1)
    tl.store(Lse + bh.to(tl.int64) * Nq + offs_m, m_i + tl.math.log2(l_i), mask=m_ok)


@triton.jit
def _attention_bwd_preprocess_kernel(
    Out,    # pointer to the forward output, shape (B, Nq, H, d)
    DOut,   # pointer to the output gradient, shape (B, Nq, H, d), any strides (may be expanded)
    Delta,  # pointer to rowsum(dO * O), shape (B, H, Nq), fp32
    stride_ob, stride_on, stride_oh, stride_od,
    stride_gb, stride_gn, stride_gh, stride_gd,
    H, Nq,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, ALIGN: tl.constexpr,
):
    num_m = tl.cdiv(Nq, BLOCK_M)
    pid = tl.program_id(0)
    pid_m = pid % num_m
    bh = pid // num_m
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    mask = (offs_m[:, None] < Nq) & (offs_d[None, :] < HEAD_DIM)
    o_rows = _head_base(Out, b, h, stride_ob, stride_oh, ALIGN) + offs_m[:, None] * _hint(stride_on, ALIGN)
    do_rows = _head_base(DOut, b, h, stride_gb, stride_gh, ALIGN) + offs_m[:, None] * _hint(stride_gn, ALIGN)
    o = tl.load(o_rows + offs_d[None, :] * stride_od, mask=mask, other=0.0)
    do = tl.load(do_rows + offs_d[None, :] * stride_gd, mask=mask, other=0.0)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(Delta + bh.to(tl.int64) * Nq + offs_m, delta, mask=offs_m < Nq)


@triton.jit
def _attention_bwd_kv_inner(
    dk0, dk1, dv0, dv1,        # running key/value gradients (BLOCK_N, D0), (BLOCK_N, D1) fp32
    k0, k1, v0, v1,            # this program's key and value tiles split along the head dim
    keep, masked_score,        # (BLOCK_N,) the key mask of these keys (unused without HAS_MASK)
    q_base, do_base, lse_base, delta_base,  # this (batch, head)'s q, dO, lse and delta, at query 0
    offs_d0, offs_d1, d0_ok, d1_ok,  # head-dim offsets and bounds of the two blocks: (D0,), (D1,)
    m_start, m_end, Nq, qk_scale, stride_qn, stride_qd, stride_gn, stride_gd,
    HAS_D1: tl.constexpr, PAD_D0: tl.constexpr, PAD_D1: tl.constexpr, HAS_MASK: tl.constexpr, TAIL: tl.constexpr,
    DOT_PRECISION: tl.constexpr, BLOCK_M: tl.constexpr,
):
    """dk/dv steps over queries [m_start, m_end) in BLOCK_M blocks, products taken transposed (keys as rows) so the
    accumulators sit in the layout they are stored in. TAIL: one step over the partial last query block (in its own,
    smaller block); query rows past Nq load q = dO = 0 and lse = delta = 0, so they add nothing."""
    offs_m = m_start + tl.arange(0, BLOCK_M)
    m_ok = offs_m < Nq
    mask0 = m_ok[:, None] & d0_ok[None, :] if TAIL else d0_ok[None, :]
    mask1 = m_ok[:, None] & d1_ok[None, :] if TAIL else d1_ok[None, :]
    q0_ptrs = q_base + offs_m[:, None] * stride_qn + offs_d0[None, :] * stride_qd  # (BLOCK_M, D0)
    do0_ptrs = do_base + offs_m[:, None] * stride_gn + offs_d0[None, :] * stride_gd
    q1_ptrs = q_base + offs_m[:, None] * stride_qn + offs_d1[None, :] * stride_qd  # (BLOCK_M, D1)
    do1_ptrs = do_base + offs_m[:, None] * stride_gn + offs_d1[None, :] * stride_gd
    lse_ptrs = lse_base + offs_m
    delta_ptrs = delta_base + offs_m
    for _ in range(m_start, m_end, BLOCK_M):
        if TAIL:
            lse = tl.load(lse_ptrs, mask=m_ok, other=0.0)                               # (BLOCK_M,)
            delta = tl.load(delta_ptrs, mask=m_ok, other=0.0)
        else:
            lse = tl.load(lse_ptrs)
            delta = tl.load(delta_ptrs)
        q0 = tl.load(q0_ptrs, mask=mask0, other=0.0) if TAIL or PAD_D0 else tl.load(q0_ptrs)  # (BLOCK_M, D0)
        do0 = tl.load(do0_ptrs, mask=mask0, other=0.0) if TAIL or PAD_D0 else tl.load(do0_ptrs)
        s_t = tl.dot(k0, tl.trans(q0), input_precision=DOT_PRECISION)                 # (BLOCK_N, BLOCK_M)
        if HAS_D1:
            q1 = tl.load(q1_ptrs, mask=mask1, other=0.0) if TAIL or PAD_D1 else tl.load(q1_ptrs)  # (BLOCK_M, D1)
            do1 = tl.load(do1_ptrs, mask=mask1, other=0.0) if TAIL or PAD_D1 else tl.load(do1_ptrs)
            s_t = tl.dot(k1, tl.trans(q1), s_t, input_precision=DOT_PRECISION)
        if HAS_MASK:
            s_t = tl.where(keep[:, None], s_t * qk_scale, masked_score)
            p_t = tl.math.exp2(s_t - lse[None, :])                                      # (BLOCK_N, BLOCK_M) fp32
        else:  # one FMA per score
            p_t = tl.math.exp2(s_t * qk_scale - lse[None, :])
        dv0 = tl.dot(p_t.to(do_base.dtype.element_ty), do0, dv0, input_precision=DOT_PRECISION)
        dp_t = tl.dot(v0, tl.trans(do0), input_precision=DOT_PRECISION)               # (BLOCK_N, BLOCK_M)
        if HAS_D1:
            dv1 = tl.dot(p_t.to(do_base.dtype.element_ty), do1, dv1, input_precision=DOT_PRECISION)
            dp_t = tl.dot(v1, tl.trans(do1), dp_t, input_precision=DOT_PRECISION)
        ds_t = (p_t * (dp_t - delta[None, :])).to(q_base.dtype.element_ty)           # dL/d(scaled score)
        dk0 = tl.dot(ds_t, q0, dk0, input_precision=DOT_PRECISION)
        q0_ptrs += BLOCK_M * stride_qn
        do0_ptrs += BLOCK_M * stride_gn
        if HAS_D1:
            dk1 = tl.dot(ds_t, q1, dk1, input_precision=DOT_PRECISION)
            q1_ptrs += BLOCK_M * stride_qn
            do1_ptrs += BLOCK_M * stride_gn
        lse_ptrs += BLOCK_M
        delta_ptrs += BLOCK_M
    return dk0, dk1, dv0, dv1


@triton.autotune(configs=_BWD_KV_CONFIGS, key=_AUTOTUNE_KEY, prune_configs_by={"early_config_prune": _prune_block_m})
@triton.heuristics({"EVEN_N": lambda a: a["Nk"] % a["BLOCK_N"] == 0, "TAIL_M": _tail_block("Nq", "BLOCK_M")})
@triton.jit
def _attention_bwd_kv_kernel(
    Q, K, V,   # pointers to q (B, Nq, H, d), k and v (B, Nk, H, d), any strides
    Mask,      # pointer to the key mask, shape (B, Nk) (unused without HAS_MASK)
    DOut,      # pointer to the output gradient, shape (B, Nq, H, d), any strides
    Lse,       # pointer to the forward's log2-domain log-sum-exp, shape (B, H, Nq), fp32
    Delta,     # pointer to rowsum(dO * O), shape (B, H, Nq), fp32
    DK, DV,    # pointers to the key and value gradients, shape (B, Nk, H, d)
    stride_qb, stride_qn, stride_qh, stride_qd,
    stride_kb, stride_kn, stride_kh, stride_kd,
    stride_vb, stride_vn, stride_vh, stride_vd,
    stride_mb, stride_mn,
    stride_gb, stride_gn, stride_gh, stride_gd,
    stride_dkb, stride_dkn, stride_dkh, stride_dkd,
    stride_dvb, stride_dvn, stride_dvh, stride_dvd,
    scale, qk_scale,
    H, Nq, Nk,
    BH_BUCKET,  # autotune key only (see the forward)
    HEAD_DIM: tl.constexpr, BLOCK_D0: tl.constexpr, BLOCK_D1: tl.constexpr, HAS_D1: tl.constexpr,
    PAD_D0: tl.constexpr, PAD_D1: tl.constexpr, HAS_MASK: tl.constexpr, DOT_PRECISION: tl.constexpr,
    ALIGN: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, EVEN_N: tl.constexpr, TAIL_M: tl.constexpr,
):
    # one program per (key block, batch, head): it owns dk, dv of BLOCK_N keys and walks every query block.
    num_n = tl.cdiv(Nk, BLOCK_N)
    pid = tl.program_id(0)
    pid_n = pid % num_n
    bh = pid // num_n
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    stride_qn = _hint(stride_qn, ALIGN)
    stride_kn = _hint(stride_kn, ALIGN)
    stride_vn = _hint(stride_vn, ALIGN)
    stride_gn = _hint(stride_gn, ALIGN)
    q_base = _head_base(Q, b, h, stride_qb, stride_qh, ALIGN)
    do_base = _head_base(DOut, b, h, stride_gb, stride_gh, ALIGN)
    k_base = _head_base(K, b, h, stride_kb, stride_kh, ALIGN)
    v_base = _head_base(V, b, h, stride_vb, stride_vh, ALIGN)
    mask_base = Mask + b * stride_mb

    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d0 = tl.arange(0, BLOCK_D0)
    offs_d1 = BLOCK_D0 + tl.arange(0, BLOCK_D1)
    n_ok = offs_n < Nk
    d0_ok = offs_d0 < HEAD_DIM
    d1_ok = offs_d1 < HEAD_DIM
    k0 = _load(k_base + offs_n[:, None] * stride_kn + offs_d0[None, :] * stride_kd, n_ok, d0_ok, not EVEN_N, PAD_D0)
    v0 = _load(v_base + offs_n[:, None] * stride_vn + offs_d0[None, :] * stride_vd, n_ok, d0_ok, not EVEN_N, PAD_D0)
    dk0 = tl.zeros((BLOCK_N, BLOCK_D0), dtype=tl.float32)
    dv0 = tl.zeros((BLOCK_N, BLOCK_D0), dtype=tl.float32)
    dk1 = tl.zeros((BLOCK_N, BLOCK_D1), dtype=tl.float32)
    dv1 = tl.zeros((BLOCK_N, BLOCK_D1), dtype=tl.float32)
    if HAS_D1:
        k1 = _load(k_base + offs_n[:, None] * stride_kn + offs_d1[None, :] * stride_kd, n_ok, d1_ok,
                   not EVEN_N, PAD_D1)
        v1 = _load(v_base + offs_n[:, None] * stride_vn + offs_d1[None, :] * stride_vd, n_ok, d1_ok,
                   not EVEN_N, PAD_D1)
    else:  # unused placeholders
        k1 = dk1.to(K.dtype.element_ty)
        v1 = dv1.to(V.dtype.element_ty)
    if HAS_MASK:
        masked_score = _masked_score(mask_base, stride_mn, Nk, BLOCK_N)
        keep = _load_vec(mask_base + offs_n * stride_mn, n_ok, not EVEN_N, 1) != 0  # (BLOCK_N,)
    else:
        masked_score = 0.0
        keep = n_ok
    lse_base = Lse + bh.to(tl.int64) * Nq
    delta_base = Delta + bh.to(tl.int64) * Nq

    m_full = (Nq // BLOCK_M) * BLOCK_M
    dk0, dk1, dv0, dv1 = _attention_bwd_kv_inner(
        dk0, dk1, dv0, dv1, k0, k1, v0, v1, keep, masked_score, q_base, do_base, lse_base, delta_base,
        offs_d0, offs_d1, d0_ok, d1_ok, 0, m_full, Nq, qk_scale, stride_qn, stride_qd, stride_gn, stride_gd,
        HAS_D1, PAD_D0, PAD_D1, HAS_MASK, False, DOT_PRECISION, BLOCK_M)
    if TAIL_M > 0:  # the partial last query block, in a block of its own size
        dk0, dk1, dv0, dv1 = _attention_bwd_kv_inner(
            dk0, dk1, dv0, dv1, k0, k1, v0, v1, keep, masked_score, q_base, do_base, lse_base, delta_base,
            offs_d0, offs_d1, d0_ok, d1_ok, m_full, Nq, Nq, qk_scale, stride_qn, stride_qd, stride_gn, stride_gd,
            HAS_D1, PAD_D0, PAD_D1, HAS_MASK, True, DOT_PRECISION, TAIL_M)

    # key rows past Nk are never stored
    dk_rows = _head_base(DK, b, h, stride_dkb, stride_dkh, ALIGN) + offs_n[:, None] * _hint(stride_dkn, ALIGN)
    dv_rows = _head_base(DV, b, h, stride_dvb, stride_dvh, ALIGN) + offs_n[:, None] * _hint(stride_dvn, ALIGN)
    _store(dk_rows + offs_d0[None, :] * stride_dkd, dk0 * scale, n_ok, d0_ok, not EVEN_N, PAD_D0)
    _store(dv_rows + offs_d0[None, :] * stride_dvd, dv0, n_ok, d0_ok, not EVEN_N, PAD_D0)
    if HAS_D1:
        _store(dk_rows + offs_d1[None, :] * stride_dkd, dk1 * scale, n_ok, d1_ok, not EVEN_N, PAD_D1)
        _store(dv_rows + offs_d1[None, :] * stride_dvd, dv1, n_ok, d1_ok, not EVEN_N, PAD_D1)


@triton.jit
def _attention_bwd_q_inner(
    dq0, dq1,                  # running query gradient (BLOCK_M, D0), (BLOCK_M, D1)
    q0, q1, do0, do1,          # query and output-gradient tiles split along the head dim
    lse, delta,                # (BLOCK_M,) fp32
    k_base, v_base, mask_base,  # this (batch, head)'s keys, values and key mask, at key 0
    offs_d0, offs_d1, d0_ok, d1_ok,  # head-dim offsets and bounds of the two blocks: (D0,), (D1,)
    masked_score, n_start, n_end, Nk, qk_scale, stride_kn, stride_kd, stride_vn, stride_vd, stride_mn,
    HAS_D1: tl.constexpr, PAD_D0: tl.constexpr, PAD_D1: tl.constexpr, HAS_MASK: tl.constexpr, TAIL: tl.constexpr,
    DOT_PRECISION: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """dq steps over keys [n_start, n_end) in BLOCK_N blocks. TAIL: one step over the partial last block (in its
    own, smaller block), keys >= Nk masked."""
    n_ok, mask0, mask1, k0_ptrs, k1_ptrs, v0_ptrs, v1_ptrs, keep_ptrs = _key_tiles(
        k_base, v_base, mask_base, offs_d0, offs_d1, d0_ok, d1_ok, n_start, Nk,
        stride_kn, stride_kd, stride_vn, stride_vd, stride_mn, TAIL, BLOCK_N)
    for _ in range(n_start, n_end, BLOCK_N):
        k0 = tl.load(k0_ptrs, mask=mask0, other=0.0) if TAIL or PAD_D0 else tl.load(k0_ptrs)  # (BLOCK_N, D0)
        v0 = tl.load(v0_ptrs, mask=mask0, other=0.0) if TAIL or PAD_D0 else tl.load(v0_ptrs)
        s = tl.dot(q0, tl.trans(k0), input_precision=DOT_PRECISION)                   # (BLOCK_M, BLOCK_N)
        dp = tl.dot(do0, tl.trans(v0), input_precision=DOT_PRECISION)
        if HAS_D1:
            k1 = tl.load(k1_ptrs, mask=mask1, other=0.0) if TAIL or PAD_D1 else tl.load(k1_ptrs)  # (BLOCK_N, D1)
            v1 = tl.load(v1_ptrs, mask=mask1, other=0.0) if TAIL or PAD_D1 else tl.load(v1_ptrs)
            s = tl.dot(q1, tl.trans(k1), s, input_precision=DOT_PRECISION)
            dp = tl.dot(do1, tl.trans(v1), dp, input_precision=DOT_PRECISION)
        if HAS_MASK or TAIL:
            s = s * qk_scale
            if HAS_MASK:
                keep = (tl.load(keep_ptrs, mask=n_ok, other=1) if TAIL else tl.load(keep_ptrs)) != 0
                s = tl.where(keep[None, :], s, masked_score)
                keep_ptrs += BLOCK_N * stride_mn
            if TAIL:
                s = tl.where(n_ok[None, :], s, float("-inf"))
            p = tl.math.exp2(s - lse[:, None])
        else:  # one FMA per score
            p = tl.math.exp2(s * qk_scale - lse[:, None])
        ds = (p * (dp - delta[:, None])).to(k_base.dtype.element_ty)                   # dL/d(scaled score)
        dq0 = tl.dot(ds, k0, dq0, input_precision=DOT_PRECISION)
        k0_ptrs += BLOCK_N * stride_kn
        v0_ptrs += BLOCK_N * stride_vn
        if HAS_D1:
            dq1 = tl.dot(ds, k1, dq1, input_precision=DOT_PRECISION)
            k1_ptrs += BLOCK_N * stride_kn
            v1_ptrs += BLOCK_N * stride_vn
    return dq0, dq1


@triton.autotune(configs=_BWD_Q_CONFIGS, key=_AUTOTUNE_KEY, prune_configs_by={"early_config_prune": _prune_block_m})
@triton.heuristics({"EVEN_M": lambda a: a["Nq"] % a["BLOCK_M"] == 0, "TAIL_N": _tail_block("Nk", "BLOCK_N")})
@triton.jit
def _attention_bwd_q_kernel(
    Q, K, V,   # pointers to q (B, Nq, H, d), k and v (B, Nk, H, d), any strides
    Mask,      # pointer to the key mask, shape (B, Nk) (unused without HAS_MASK)
    DOut,      # pointer to the output gradient, shape (B, Nq, H, d), any strides
    Lse,       # pointer to the forward's log2-domain log-sum-exp, shape (B, H, Nq), fp32
    Delta,     # pointer to rowsum(dO * O), shape (B, H, Nq), fp32
    DQ,        # pointer to the query gradient, shape (B, Nq, H, d)
    stride_qb, stride_qn, stride_qh, stride_qd,
    stride_kb, stride_kn, stride_kh, stride_kd,
    stride_vb, stride_vn, stride_vh, stride_vd,
    stride_mb, stride_mn,
    stride_gb, stride_gn, stride_gh, stride_gd,
    stride_dqb, stride_dqn, stride_dqh, stride_dqd,
    scale, qk_scale,
    H, Nq, Nk,
    BH_BUCKET,  # autotune key only (see the forward)
    HEAD_DIM: tl.constexpr, BLOCK_D0: tl.constexpr, BLOCK_D1: tl.constexpr, HAS_D1: tl.constexpr,
    PAD_D0: tl.constexpr, PAD_D1: tl.constexpr, HAS_MASK: tl.constexpr, DOT_PRECISION: tl.constexpr,
    ALIGN: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, EVEN_M: tl.constexpr, TAIL_N: tl.constexpr,
):
    # one program per (query block, batch, head): it owns dq of BLOCK_M queries and walks every key block.
    num_m = tl.cdiv(Nq, BLOCK_M)
    pid = tl.program_id(0)
    pid_m = pid % num_m
    bh = pid // num_m
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    stride_qn = _hint(stride_qn, ALIGN)
    stride_kn = _hint(stride_kn, ALIGN)
    stride_vn = _hint(stride_vn, ALIGN)
    stride_gn = _hint(stride_gn, ALIGN)
    stride_dqn = _hint(stride_dqn, ALIGN)
    q_base = _head_base(Q, b, h, stride_qb, stride_qh, ALIGN)
    do_base = _head_base(DOut, b, h, stride_gb, stride_gh, ALIGN)
    k_base = _head_base(K, b, h, stride_kb, stride_kh, ALIGN)
    v_base = _head_base(V, b, h, stride_vb, stride_vh, ALIGN)
    mask_base = Mask + b * stride_mb

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d0 = tl.arange(0, BLOCK_D0)
    offs_d1 = BLOCK_D0 + tl.arange(0, BLOCK_D1)
    m_ok = offs_m < Nq
    d0_ok = offs_d0 < HEAD_DIM
    d1_ok = offs_d1 < HEAD_DIM
    q0 = _load(q_base + offs_m[:, None] * stride_qn + offs_d0[None, :] * stride_qd, m_ok, d0_ok, not EVEN_M, PAD_D0)
    do0 = _load(do_base + offs_m[:, None] * stride_gn + offs_d0[None, :] * stride_gd, m_ok, d0_ok,
                not EVEN_M, PAD_D0)
    dq0 = tl.zeros((BLOCK_M, BLOCK_D0), dtype=tl.float32)
    dq1 = tl.zeros((BLOCK_M, BLOCK_D1), dtype=tl.float32)
    if HAS_D1:
        q1 = _load(q_base + offs_m[:, None] * stride_qn + offs_d1[None, :] * stride_qd, m_ok, d1_ok,
                   not EVEN_M, PAD_D1)
        do1 = _load(do_base + offs_m[:, None] * stride_gn + offs_d1[None, :] * stride_gd, m_ok, d1_ok,
                    not EVEN_M, PAD_D1)
    else:  # unused placeholders
        q1 = dq1.to(Q.dtype.element_ty)
        do1 = dq1.to(DOut.dtype.element_ty)
    lse = _load_vec(Lse + bh.to(tl.int64) * Nq + offs_m, m_ok, not EVEN_M, 0.0)      # (BLOCK_M,)
    delta = _load_vec(Delta + bh.to(tl.int64) * Nq + offs_m, m_ok, not EVEN_M, 0.0)
    masked_score = _masked_score(mask_base, stride_mn, Nk, BLOCK_N) if HAS_MASK else 0.0

    n_full = (Nk // BLOCK_N) * BLOCK_N
    dq0, dq1 = _attention_bwd_q_inner(
        dq0, dq1, q0, q1, do0, do1, lse, delta, k_base, v_base, mask_base, offs_d0, offs_d1, d0_ok, d1_ok,
        masked_score, 0, n_full, Nk, qk_scale, stride_kn, stride_kd, stride_vn, stride_vd, stride_mn,
        HAS_D1, PAD_D0, PAD_D1, HAS_MASK, False, DOT_PRECISION, BLOCK_N)
    if TAIL_N > 0:  # the partial last key block, in a block of its own size
        dq0, dq1 = _attention_bwd_q_inner(
            dq0, dq1, q0, q1, do0, do1, lse, delta, k_base, v_base, mask_base, offs_d0, offs_d1, d0_ok, d1_ok,
            masked_score, n_full, Nk, Nk, qk_scale, stride_kn, stride_kd, stride_vn, stride_vd, stride_mn,
            HAS_D1, PAD_D0, PAD_D1, HAS_MASK, True, DOT_PRECISION, TAIL_N)

    dq_rows = _head_base(DQ, b, h, stride_dqb, stride_dqh, ALIGN) + offs_m[:, None] * stride_dqn
    _store(dq_rows + offs_d0[None, :] * stride_dqd, dq0 * scale, m_ok, d0_ok, not EVEN_M, PAD_D0)
    if HAS_D1:
        _store(dq_rows + offs_d1[None, :] * stride_dqd, dq1 * scale, m_ok, d1_ok, not EVEN_M, PAD_D1)


# ----------------------------------------------------------------------------------------------------------------
# Launchers: validate, allocate, pick the grid
# ----------------------------------------------------------------------------------------------------------------
def _head_dim_blocks(d: int) -> tuple[int, int]:
    """(BLOCK_D0, BLOCK_D1) covering head dim d: a power-of-two block and a padded remainder block (0 = none).
    See the module docstring for the FLOP overhead of each d."""
    whole = max(16, triton.next_power_of_2(d))
    d0 = max(16, 1 << (d.bit_length() - 1))  # largest power of two <= d, at least 16
    if d0 >= d:
        return d0, 0
    d1 = max(16, triton.next_power_of_2(d - d0))
    return (whole, 0) if d0 + d1 >= whole else (d0, d1)


def _describe(t: torch.Tensor) -> str:
    return f"shape {tuple(t.shape)}, dtype {t.dtype}, device {t.device}"


def _check_inputs(q, k, v, attention_mask, scale, *, check_values: bool = True) -> None:
    """Raise TypeError/ValueError naming the argument, what was expected and what was received."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"attention: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.ndim != 4:
            raise ValueError(f"attention: {name} must have shape (B, N, H, d) (4 dims), got {_describe(t)}")
        if t.dtype not in _DTYPES:
            raise TypeError(f"attention: {name} must be float32, bfloat16 or float16, got {_describe(t)}")
    for name, t in (("k", k), ("v", v)):
        if t.dtype != q.dtype:
            raise TypeError(f"attention: {name} must have q's dtype {q.dtype}, got {_describe(t)}")
        if t.device != q.device:
            raise ValueError(f"attention: {name} must be on q's device {q.device}, got {_describe(t)}")
    B, Nq, H, d = q.shape
    if k.shape[0] != B or k.shape[2] != H or k.shape[3] != d:
        raise ValueError(f"attention: k must have shape (B={B}, Nk, H={H}, d={d}) to match q, got {_describe(k)}")
    if v.shape != k.shape:
        raise ValueError(f"attention: v must have k's shape {tuple(k.shape)}, got {_describe(v)}")
    if not 1 <= d <= _MAX_HEAD_DIM:
        raise ValueError(f"attention: head dim d must be in [1, {_MAX_HEAD_DIM}], got d={d} (q: {_describe(q)})")
    if k.shape[1] == 0:
        raise ValueError(f"attention: k and v need at least one key (Nk >= 1), got {_describe(k)}")
    if scale is not None:
        if isinstance(scale, bool) or not isinstance(scale, (int, float)):
            raise TypeError(f"attention: scale must be a float or None, got {type(scale).__name__} {scale!r}")
        if not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"attention: scale must be a finite positive number, got {scale!r}")
    if q.device.type != "cuda" and not _CPU_OK:
        raise ValueError(f"attention: the Triton kernels need CUDA tensors (or TRITON_INTERPRET=1 set before triton "
                         f"is imported, to run them on CPU), got q on {q.device}; use attention_reference instead")
    if attention_mask is None:
        return
    m = attention_mask
    if not isinstance(m, torch.Tensor):
        raise TypeError(f"attention: attention_mask must be a torch.Tensor or None, got {type(m).__name__}")
    if m.shape != (B, k.shape[1]):
        raise ValueError(f"attention: attention_mask must have shape (B, Nk) = {(B, k.shape[1])}, got {_describe(m)}")
    if m.dtype.is_complex:
        raise TypeError(f"attention: attention_mask must be bool, integer or float (1 = attend), got {_describe(m)}")
    if m.device != q.device:
        raise ValueError(f"attention: attention_mask must be on q's device {q.device}, got {_describe(m)}")
    # a float mask is most likely to be an additive one (0 / -inf), which reads inverted here: refuse it
    if check_values and m.is_floating_point() and not bool(((m == 0) | (m == 1)).all()):
        raise ValueError("attention: a float attention_mask must hold only 0 (masked) and 1 (attend), as transformers' "
                         "2-D padding masks do; an additive mask (0 / -inf or finfo.min) is not accepted")


def _kernel_mask(attention_mask, q):
    """(mask tensor, its strides, HAS_MASK): bool viewed as uint8 (no copy); a dummy pointer when there is none."""
    if attention_mask is None:
        return q, (0, 0), False
    m = attention_mask.view(torch.uint8) if attention_mask.dtype == torch.bool else attention_mask
    return m, (m.stride(0), m.stride(1)), True


def _dot_precision(dtype: torch.dtype) -> str:
    """fp32 inputs follow torch's matmul setting (IEEE by default, as eager); bf16/fp16 ignore it."""
    return "tf32" if dtype != torch.float32 or torch.backends.cuda.matmul.allow_tf32 else "ieee"


def _align(*tensors: torch.Tensor) -> int:
    """The kernels' ALIGN: the elements in 16 bytes when every tensor starts on a 16-byte boundary, has a unit
    stride along d and strides that are multiples of that count (dims of size 1 excepted: their stride is multiplied
    by 0), else 1. With it the compiler may use 16-byte (async) copies; without it, e.g. for q/k/v views of a fused
    QKV output with d = 72 (head stride 72 is not a multiple of 16, the most triton infers by itself), every load is
    a scalar one. See `_hint`."""
    vec = 16 // tensors[0].element_size()
    for t in tensors:
        if t.data_ptr() % 16 or (t.shape[-1] > 1 and t.stride(-1) != 1):
            return 1
        if any(st % vec for st, n in zip(t.stride()[:-1], t.shape[:-1], strict=True) if n > 1):
            return 1
    return vec


def _upcast_for_interpreter(dtype: torch.dtype) -> bool:
    """The Triton interpreter computes bf16 `tl.dot` wrongly (numpy has no bf16): there the kernels run in fp32 and
    the results are rounded back, so interpreted bf16 calls are correct rather than garbage."""
    return _INTERPRET and dtype == torch.bfloat16


def _check_out(name: str, t: torch.Tensor | None, shape, dtype, device) -> None:
    if t is not None and (tuple(t.shape) != tuple(shape) or t.dtype != dtype or t.device != device):
        raise ValueError(f"attention: {name} must have shape {tuple(shape)}, dtype {dtype}, device {device}, "
                         f"got {_describe(t)}")


def _attention_fwd(q, k, v, attention_mask=None, scale=None, *, out=None, lse=None):
    """Forward launcher: (out (B, Nq, H, d), lse (B, H, Nq) fp32, log2 domain). `out`/`lse` may be given (tests
    poison them to catch unwritten elements)."""
    _check_inputs(q, k, v, attention_mask, scale)
    B, Nq, H, d = q.shape
    Nk = k.shape[1]
    scale = d**-0.5 if scale is None else float(scale)
    _check_out("out", out, (B, Nq, H, d), q.dtype, q.device)
    _check_out("lse", lse, (B, H, Nq), torch.float32, q.device)
    out = torch.empty((B, Nq, H, d), dtype=q.dtype, device=q.device) if out is None else out  # (B, Nq, H, d)
    lse = torch.empty((B, H, Nq), dtype=torch.float32, device=q.device) if lse is None else lse  # (B, H, Nq)
    if out.numel() == 0:
        return out, lse
    if _upcast_for_interpreter(q.dtype):
        out32, _ = _attention_fwd(q.float(), k.float(), v.float(), attention_mask, scale, lse=lse)
        return out.copy_(out32), lse
    d0, d1 = _head_dim_blocks(d)
    mask, mask_strides, has_mask = _kernel_mask(attention_mask, q)
    grid = lambda meta: (triton.cdiv(Nq, meta["BLOCK_M"]) * B * H,)
    _attention_fwd_kernel[grid](
        q, k, v, mask, out, lse,
        *q.stride(), *k.stride(), *v.stride(), *mask_strides, *out.stride(),
        scale * _LOG2E, H, Nq, Nk, _bh_bucket(B * H),
        HEAD_DIM=d, BLOCK_D0=d0, BLOCK_D1=max(d1, 16), HAS_D1=d1 > 0, PAD_D0=d0 > d, PAD_D1=d0 + d1 > d,
        HAS_MASK=has_mask, DOT_PRECISION=_dot_precision(q.dtype), ALIGN=_align(q, k, v, out),
    )
    return out, lse


def _attention_bwd(grad_out, q, k, v, out, lse, attention_mask=None, scale=None, *, dq=None, dk=None, dv=None):
    """Backward launcher: (dq, dk, dv), each contiguous in its input's shape and dtype. `dq`/`dk`/`dv` may be given
    (tests poison them)."""
    _check_inputs(q, k, v, attention_mask, scale, check_values=False)
    B, Nq, H, d = q.shape
    Nk = k.shape[1]
    scale = d**-0.5 if scale is None else float(scale)
    _check_out("grad_out", grad_out, q.shape, q.dtype, q.device)
    _check_out("out", out, q.shape, q.dtype, q.device)
    _check_out("lse", lse, (B, H, Nq), torch.float32, q.device)
    _check_out("dq", dq, q.shape, q.dtype, q.device)
    _check_out("dk", dk, k.shape, k.dtype, k.device)
    _check_out("dv", dv, v.shape, v.dtype, v.device)
    dq = torch.empty((B, Nq, H, d), dtype=q.dtype, device=q.device) if dq is None else dq  # (B, Nq, H, d)
    dk = torch.empty((B, Nk, H, d), dtype=k.dtype, device=k.device) if dk is None else dk  # (B, Nk, H, d)
    dv = torch.empty((B, Nk, H, d), dtype=v.dtype, device=v.device) if dv is None else dv  # (B, Nk, H, d)
    if dq.numel() == 0:
        return dq, dk.zero_(), dv.zero_()
    if _upcast_for_interpreter(q.dtype):
        grads = _attention_bwd(grad_out.float(), q.float(), k.float(), v.float(), out.float(), lse, attention_mask,
                               scale)
        return tuple(t.copy_(g) for t, g in zip((dq, dk, dv), grads, strict=True))
    d0, d1 = _head_dim_blocks(d)
    mask, mask_strides, has_mask = _kernel_mask(attention_mask, q)
    delta = torch.empty((B, H, Nq), dtype=torch.float32, device=q.device)  # (B, H, Nq) rowsum(dO * O)
    pre_block_m = 16 if _INTERPRET else 64
    _attention_bwd_preprocess_kernel[(triton.cdiv(Nq, pre_block_m) * B * H,)](
        out, grad_out, delta, *out.stride(), *grad_out.stride(), H, Nq,
        HEAD_DIM=d, BLOCK_D=max(16, triton.next_power_of_2(d)), BLOCK_M=pre_block_m, ALIGN=_align(out, grad_out),
    )
    common = dict(HEAD_DIM=d, BLOCK_D0=d0, BLOCK_D1=max(d1, 16), HAS_D1=d1 > 0, PAD_D0=d0 > d, PAD_D1=d0 + d1 > d,
                  HAS_MASK=has_mask, DOT_PRECISION=_dot_precision(q.dtype),
                  ALIGN=_align(q, k, v, grad_out, dq, dk, dv))
    _attention_bwd_kv_kernel[lambda meta: (triton.cdiv(Nk, meta["BLOCK_N"]) * B * H,)](
        q, k, v, mask, grad_out, lse, delta, dk, dv,
        *q.stride(), *k.stride(), *v.stride(), *mask_strides, *grad_out.stride(), *dk.stride(), *dv.stride(),
        scale, scale * _LOG2E, H, Nq, Nk, _bh_bucket(B * H), **common,
    )
    _attention_bwd_q_kernel[lambda meta: (triton.cdiv(Nq, meta["BLOCK_M"]) * B * H,)](
        q, k, v, mask, grad_out, lse, delta, dq,
        *q.stride(), *k.stride(), *v.stride(), *mask_strides, *grad_out.stride(), *dq.stride(),
        scale, scale * _LOG2E, H, Nq, Nk, _bh_bucket(B * H), **common,
    )
    return dq, dk, dv


# ----------------------------------------------------------------------------------------------------------------
# Custom ops (torch.compile traces through them without graph breaks) and their autograd
# ----------------------------------------------------------------------------------------------------------------
@torch.library.custom_op("siglip_fast::attention", mutates_args=())
def _attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attention_mask: Optional[torch.Tensor],
                  scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    return _attention_fwd(q, k, v, attention_mask, scale)


@_attention_op.register_fake
def _(q, k, v, attention_mask, scale):
    _check_inputs(q, k, v, attention_mask, scale, check_values=False)
    B, Nq, H, d = q.shape
    return q.new_empty((B, Nq, H, d)), q.new_empty((B, H, Nq), dtype=torch.float32)


@torch.library.custom_op("siglip_fast::attention_backward", mutates_args=())
def _attention_backward_op(grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                           out: torch.Tensor, lse: torch.Tensor, attention_mask: Optional[torch.Tensor],
                           scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _attention_bwd(grad_out, q, k, v, out, lse, attention_mask, scale)


@_attention_backward_op.register_fake
def _(grad_out, q, k, v, out, lse, attention_mask, scale):
    return (q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape))


# The autograd formula (the role of a torch.autograd.Function, registered on the custom op so that torch.compile
# sees one op forward and one op backward).
def _setup_context(ctx, inputs, output):
    q, k, v, attention_mask, scale = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, attention_mask, out, lse)
    ctx.scale = scale
    ctx.mark_non_differentiable(lse)


def _backward(ctx, grad_out, _grad_lse):
    q, k, v, attention_mask, out, lse = ctx.saved_tensors
    dq, dk, dv = _attention_backward_op(grad_out, q, k, v, out, lse, attention_mask, ctx.scale)
    return dq, dk, dv, None, None


_attention_op.register_autograd(_backward, setup_context=_setup_context)


# ----------------------------------------------------------------------------------------------------------------
# Public functional and eager reference
# ----------------------------------------------------------------------------------------------------------------
def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, attention_mask: torch.Tensor | None = None,
              scale: float | None = None) -> torch.Tensor:
    """Fused non-causal multi-head attention.

    q: (B, Nq, H, d); k, v: (B, Nk, H, d), any strides (e.g. views of one fused QKV projection); float32, bfloat16
    or float16; any head dim d up to 128 (16-byte vector loads when d is a multiple of 8). attention_mask: optional
    (B, Nk), bool or 0/1 integer/float, True/1 = attend to that key (transformers' convention); masked keys are
    excluded for every query, and a batch row with no attended key averages all keys uniformly, as transformers'
    eager path does. scale: a positive float, default d**-0.5.
    Returns a new contiguous (B, Nq, H, d) tensor in q's dtype. Differentiable in q, k and v.
    """
    _check_inputs(q, k, v, attention_mask, scale, check_values=False)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    out, _ = _attention_op(q, k, v, attention_mask, scale)
    return out


def attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
                        attention_mask: torch.Tensor | None = None, scale: float | None = None,
                        dropout_p: float = 0.0, return_probs: bool = False):
    """Eager PyTorch attention in the same layout, computing exactly what transformers' eager SigLIP attention
    computes: scores in the input dtype, an additive finfo.min mask on excluded keys, softmax in fp32 cast back to
    the input dtype, (dropout on the probabilities, as in training), then @ v. Accepts any float dtype (float64 for
    reference checks, whose softmax stays float64). With `return_probs` returns (out, probs (B, H, Nq, Nk)), the
    `output_attentions` of transformers."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            raise ValueError(f"attention_reference: {name} must be a (B, N, H, d) tensor, got "
                             f"{_describe(t) if isinstance(t, torch.Tensor) else type(t).__name__}")
    if q.shape[-1] < 1:
        raise ValueError(f"attention_reference: head dim d must be >= 1, got d={q.shape[-1]} (q: {_describe(q)})")
    if scale is None:
        scale = q.shape[-1] ** -0.5
    qt, kt, vt = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H, N, d)
    scores = torch.matmul(qt, kt.transpose(-1, -2)) * scale  # (B, H, Nq, Nk)
    if attention_mask is not None:
        keep = attention_mask.bool()[:, None, None, :]  # (B, 1, 1, Nk)
        additive = torch.zeros(keep.shape, dtype=q.dtype, device=q.device).masked_fill(~keep, torch.finfo(q.dtype).min)
        scores = scores + additive
    # transformers' softmax runs in fp32; float64 inputs (reference checks) keep float64
    probs = torch.softmax(scores, dim=-1, dtype=torch.promote_types(q.dtype, torch.float32)).to(q.dtype)
    if dropout_p > 0.0:
        probs = F.dropout(probs, p=dropout_p, training=True)
    out = torch.matmul(probs, vt).transpose(1, 2).contiguous()  # (B, Nq, H, d)
    return (out, probs) if return_probs else out
