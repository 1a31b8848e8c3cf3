"""The SigLIP sigmoid loss for training loops: one device or many (torch.distributed), never the N×N logits.

    loss = −(1/N) Σ_i Σ_j log σ(label_ij · (exp(t)·<x_i, y_j> + b)),   label_ij = +1 if i == j else −1

Single device: `siglip_fast.kernels.sigmoid_loss` (a torch custom op: Triton kernels on CUDA, an eager blockwise
path on CPU). With `group=`, each rank passes its local (n, D) embeddings and gets the loss of its images against
the texts of every rank, divided by n: the mean of the rank losses is the loss of the global batch (N = world·n),
and the gradients are what DDP needs — the image gradient is the rank's own, each text block's gradient is the sum
over ranks of their gradients for it (so that DDP's averaging yields the global gradient), t and b get the rank's
own gradients. The text blocks travel round a ring (send the next block while computing the current one); in the
backward the text-gradient accumulators travel the same ring. Memory per rank: a few (n, D) buffers.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import nn

from siglip_fast.kernels.sigmoid_loss import (
    _block_backward,
    _block_loss_sum,
    _check_inputs,
    _compute_dtype,
    _loss_dtype,
    _resolve_backend,
    _scalars,
)
from siglip_fast.kernels.sigmoid_loss import sigmoid_loss as _local_sigmoid_loss

__all__ = ["sigmoid_loss", "SigmoidLoss"]


def sigmoid_loss(image_embeds: torch.Tensor, text_embeds: torch.Tensor, logit_scale: torch.Tensor,
                 logit_bias: torch.Tensor, *, group: dist.ProcessGroup | None = None, backend: str = "auto",
                 chunk_rows: int | None = None) -> torch.Tensor:
    """SigLIP sigmoid loss, memory-bounded: the N×N logits are never materialised.

    image_embeds, text_embeds: (n, D), same dtype (fp16/bf16/fp32; fp64 on the eager backend) and device. They are
    used as given: this function does NOT L2-normalise them (SiglipModel does, before its loss).
    logit_scale: t, the log of the scale (0-d or (1,), as transformers stores it); logit_bias: b (0-d or (1,)).
    They may be fp32 with bf16 embeddings. Returns a 0-d tensor of dtype promote(embeddings, t, b), computed with
    fp32 accumulation.

    group: a torch.distributed process group (NCCL or gloo; `dist.group.WORLD` for all ranks). Every rank of the
    group must call this with the same (n, D). Each rank gets the loss of its n images against the texts of all
    ranks, divided by n; see the module docstring for the gradients. Not traced by torch.compile (the ring is
    Python-level communication); the single-device path is.

    backend: "auto" (Triton kernels on CUDA, eager blockwise on CPU), "triton" (on CPU only with
    TRITON_INTERPRET=1), "eager". chunk_rows: rows per recomputed slab of logits (a memory knob).
    """
    if group is None:
        return _local_sigmoid_loss(image_embeds, text_embeds, logit_scale, logit_bias, backend=backend,
                                   chunk_rows=chunk_rows)
    _check_inputs(image_embeds, text_embeds, logit_scale, logit_bias)
    backend = _resolve_backend(backend, image_embeds)
    if chunk_rows is not None and (not isinstance(chunk_rows, int) or chunk_rows < 1):
        raise ValueError(f"sigmoid_loss: chunk_rows must be a positive int, got {chunk_rows!r}")
    if not dist.is_available() or not dist.is_initialized():
        raise ValueError("sigmoid_loss: group= was given but torch.distributed is not initialised")
    if not isinstance(group, dist.ProcessGroup):
        raise TypeError(f"sigmoid_loss: group must be a torch.distributed.ProcessGroup, got {type(group).__name__}")
    _check_same_shape_on_all_ranks(image_embeds, group)
    return _RingSigmoidLoss.apply(image_embeds, text_embeds, logit_scale, logit_bias, group, backend, chunk_rows)


class SigmoidLoss(nn.Module):
    """The SigLIP loss with its learnable temperature and bias.

    logit_scale (t, a log) and logit_bias (b) are (1,) parameters as in transformers, initialised to log 10 and −10
    as in the paper. max_logit_scale: clamp t from above in the forward (e.g. math.log(100)); None: no clamp.
    group: the default process group for the distributed loss (None: single device); forward(..., group=) overrides
    it per call. forward(image_embeds, text_embeds) → 0-d loss; the embeddings must already be L2-normalised.
    """

    def __init__(self, *, init_logit_scale: float = math.log(10.0), init_logit_bias: float = -10.0,
                 max_logit_scale: float | None = None, group: dist.ProcessGroup | None = None,
                 backend: str = "auto"):
        super().__init__()
        self.logit_scale = nn.Parameter(torch.tensor([float(init_logit_scale)]))
        self.logit_bias = nn.Parameter(torch.tensor([float(init_logit_bias)]))
        self.max_logit_scale = max_logit_scale
        self.group = group
        self.backend = backend

    def forward(self, image_embeds: torch.Tensor, text_embeds: torch.Tensor, *,
                group: dist.ProcessGroup | None = None) -> torch.Tensor:
        t = self.logit_scale
        if self.max_logit_scale is not None:
            t = t.clamp(max=self.max_logit_scale)
        return sigmoid_loss(image_embeds, text_embeds, t, self.logit_bias,
                            group=self.group if group is None else group, backend=self.backend)

    def extra_repr(self) -> str:
        return f"max_logit_scale={self.max_logit_scale}, backend={self.backend!r}"


# ---------------------------------------------------------------------------------------------------------------
# The ring
# ---------------------------------------------------------------------------------------------------------------

def _check_same_shape_on_all_ranks(x: torch.Tensor, group: dist.ProcessGroup) -> None:
    """One small all_reduce(MAX) of (n, −n, D, −D): every rank sees the same verdict, so all raise together."""
    n, d = x.shape
    probe = torch.tensor([n, -n, d, -d], dtype=torch.int64, device=x.device)
    dist.all_reduce(probe, op=dist.ReduceOp.MAX, group=group)
    hi_n, lo_n, hi_d, lo_d = probe.tolist()
    if hi_n != -lo_n or hi_d != -lo_d:
        raise ValueError(f"sigmoid_loss: every rank of the group must pass embeddings of one shape (n, D); this rank "
                         f"has {tuple(x.shape)}, the group has n in [{-lo_n}, {hi_n}] and D in [{-lo_d}, {hi_d}]")


def _ring(group: dist.ProcessGroup) -> tuple[int, int, int, int]:
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    nxt = dist.get_global_rank(group, (rank + 1) % world)
    prv = dist.get_global_rank(group, (rank - 1) % world)
    return rank, world, nxt, prv


def _shift(send: torch.Tensor, recv: torch.Tensor, nxt: int, prv: int, group: dist.ProcessGroup):
    """Start sending `send` to the next rank and receiving the previous rank's into `recv` (batched, so NCCL
    groups the pair and two ranks sending to each other cannot deadlock)."""
    return dist.batch_isend_irecv([dist.P2POp(dist.isend, send, nxt, group),
                                   dist.P2POp(dist.irecv, recv, prv, group)])


def _wait(works) -> None:
    for w in works:
        w.wait()


class _RingSigmoidLoss(torch.autograd.Function):
    """Rank r's loss (1/n) Σ_{i ∈ r} Σ_j −log σ(label·z) over the texts of all ranks. At step k rank r holds the
    text block of rank (r − k) mod W while the next one is in flight; the label +1 entries lie in the own block."""

    @staticmethod
    def forward(ctx, x, y, t, b, group, backend, chunk_rows):
        rank, world, nxt, prv = _ring(group)
        n = x.shape[0]
        log_scale, bias = _scalars(t, b, _compute_dtype(x.dtype))
        x, y = x.contiguous(), y.contiguous()
        total = torch.zeros((), device=x.device, dtype=_compute_dtype(x.dtype))
        y_cur = y
        for k in range(world):
            if k < world - 1:
                y_next = torch.empty_like(y)
                works = _shift(y_cur, y_next, nxt, prv, group)
            diag_offset = 0 if k == 0 else n  # own block first; offset n puts no +1 label in the block
            total = total + _block_loss_sum(x, y_cur, log_scale, bias, diag_offset, backend, chunk_rows)
            if k < world - 1:
                _wait(works)
                y_cur = y_next
        ctx.save_for_backward(x, y, t, b)
        ctx.group, ctx.backend, ctx.chunk_rows = group, backend, chunk_rows
        return (total / n).to(_loss_dtype(x, t, b))

    @staticmethod
    def backward(ctx, grad):
        x, y, t, b = ctx.saved_tensors
        group, backend, chunk_rows = ctx.group, ctx.backend, ctx.chunk_rows
        rank, world, nxt, prv = _ring(group)
        n = x.shape[0]
        cdt = _compute_dtype(x.dtype)
        log_scale, bias = _scalars(t, b, cdt)
        coef = grad.detach().to(cdt).reshape(()) / n
        dx = torch.zeros(x.shape, device=x.device, dtype=cdt)
        dt = torch.zeros((), device=x.device, dtype=cdt)
        db = torch.zeros((), device=x.device, dtype=cdt)
        # Step k: rank r holds text block s = (r − k) mod W and, arriving from rank r − 1, the accumulated text
        # gradient of block s from ranks s .. r − 1. It adds its own share and passes the sum on; after W steps
        # every accumulator has visited every rank and comes home.
        y_cur, acc_works, acc_in, acc_out = y, None, None, None
        for k in range(world):
            if k < world - 1:
                y_next = torch.empty_like(y)
                y_works = _shift(y_cur, y_next, nxt, prv, group)
            dy_part = torch.zeros(y.shape, device=y.device, dtype=cdt)
            dt_k, db_k = _block_backward(x, y_cur, log_scale, bias, coef, 0 if k == 0 else n, backend, chunk_rows,
                                         dx, dy_part, accumulate_dx=True)
            dt, db = dt + dt_k, db + db_k
            if world == 1:
                acc_in = dy_part
                break
            if k > 0:
                _wait(acc_works)
                dy_part += acc_in
            acc_in, acc_out = torch.empty_like(dy_part), dy_part  # acc_out stays alive until its send is waited on
            acc_works = _shift(acc_out, acc_in, nxt, prv, group)
            if k < world - 1:
                _wait(y_works)
                y_cur = y_next
        if world > 1:
            _wait(acc_works)
        return (dx.to(x.dtype), acc_in.to(y.dtype), dt.to(t.dtype).reshape(t.shape),
                db.to(b.dtype).reshape(b.shape), None, None, None)
