"""The SigLIP sigmoid loss for training loops: one device or many (torch.distributed), never the N×N logits.

    loss = −(1/N) Σ_i Σ_j log σ(label_ij · (exp(t)·<x_i, y_j> + b)),   label_ij = +1 if i == j else −1

Single device: `siglip_fast.kernels.sigmoid_loss` (a torch custom op: Triton kernels on CUDA, an eager blockwise
path on CPU). With `group=`, each rank passes its local (n, D) embeddings and gets the loss of its images against
the texts of every rank, divided by n: the mean of the rank losses is the loss of the global batch (N = world·n),
and the gradients are what DDP needs — the image gradient is the rank's own, each text block's gradient is the sum
over ranks of their gradients for it (so that DDP's averaging yields the global gradient), t and b get the rank's
own gradients. The text blocks travel round a ring (send the next block while computing the current one); in the
backward the text-gradient accumulators travel the same ring. Memory per rank: a few (n, D) buffers.

Before any data moves, the ranks agree on what they were given (see `_collective_check`): one small all_gather of
a fixed-size int64 description per rank, so that a rank with a bad input, or ranks that disagree on (n, D), dtype,
device type or whether a backward will follow, make every rank raise the same ValueError together instead of one
rank raising alone while its peers block in the ring (or a mismatched dtype crashing gloo / returning garbage).
"""

from __future__ import annotations

import math
import numbers
import struct

import torch
import torch.distributed as dist
from torch import nn

from siglip_fast.kernels.sigmoid_loss import (
    _BACKENDS,
    _autocast_embeds,
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

_NAMES = ("image_embeds", "text_embeds", "logit_scale", "logit_bias")


def sigmoid_loss(image_embeds: torch.Tensor, text_embeds: torch.Tensor, logit_scale: torch.Tensor,
                 logit_bias: torch.Tensor, *, group: dist.ProcessGroup | None = None, backend: str = "auto",
                 chunk_rows: int | None = None) -> torch.Tensor:
    """SigLIP sigmoid loss, memory-bounded: the N×N logits are never materialised.

    image_embeds, text_embeds: (n, D) strided tensors, same dtype (fp16/bf16/fp32; fp64 on the eager backend) and
    device. They are used as given: this function does NOT L2-normalise them (SiglipModel does, before its loss),
    and NaN/inf in them propagate to the loss as in any PyTorch op (checking them would cost a full read).
    logit_scale: t, the log of the scale (0-d or (1,), as transformers stores it); logit_bias: b (0-d or (1,)).
    They may be fp32 with bf16 embeddings. Returns a 0-d tensor of dtype promote(embeddings, t, b), computed with
    fp32 accumulation (fp64 for fp64 embeddings).

    Scale overflow: exp(t) must be finite in the compute dtype (fp32, or fp64 for fp64 embeddings: t ≤ ~88.72 in
    fp32) and b finite; otherwise ValueError naming the value, on every backend and under torch.compile alike.
    Why an error and not a clamp: past that point the loss is not computable (the backends returned NaN or inf
    depending on where the overflow met the GEMM) and a silent clamp would hide a diverged run and zero t's
    gradient; keeping t in range is the training loop's choice, and `SigmoidLoss(max_logit_scale=...)` is the
    documented clamp for it. Cost: the check reads t and b to the host — on CUDA one stream sync per call (the
    backward already reads exp(t) to the host). It runs inside a small custom op, so torch.compile(fullgraph=True)
    graphs keep no graph break; during CUDA-graph capture it is skipped (no host read is possible there); the
    distributed path folds it into its metadata exchange (no extra sync).
    Near the limit the loss is still finite whenever its true value fits fp32: each term is divided by the batch
    before any sum (the terms are ≥ 0, so no partial sum exceeds the loss); only a loss beyond the fp32 range is
    inf. The gradients' sums are not rescaled that way: once N·exp(t) nears the fp32 range (t above about
    88.7 − ln N) they can overflow to inf.

    group: a torch.distributed process group (NCCL or gloo; `dist.group.WORLD` for all ranks). Every rank of the
    group must call this, with the same (n, D), dtype and device type, and either all or none of them with grad
    enabled and an input requiring grad (and then all must run the backward: the ring's backward is collective
    too). Each rank gets the loss of its n images against the texts of all ranks, divided by n; see the module
    docstring for the gradients. Before any data moves the ranks exchange a small fixed-size description of their
    inputs (one extra all_gather of 42 int64 per rank, on the CPU for gloo and on the current CUDA device for NCCL,
    whose result is read on the host): if any rank's input is invalid, or the ranks disagree, every rank raises
    the same ValueError naming the offending rank(s) and what differs, and none starts the ring. Errors that leave
    no group to talk to (torch.distributed not initialised, `group` not a process group of which this rank is a
    member) are raised locally. Not traced by torch.compile (the ring is Python-level communication); the
    single-device path is. Differentiable once: backward with create_graph=True raises.

    backend: "auto" (Triton kernels on CUDA, eager blockwise on CPU), "triton" (on CPU only with
    TRITON_INTERPRET=1), "eager". chunk_rows: rows per block of logits (a memory knob).

    Under torch.autocast the embeddings are cast to the autocast dtype (autocast's rule for the logits GEMM; the
    gradients flow back to the originals) and the loss runs as without autocast (fp32 accumulation), on every path.
    """
    if isinstance(image_embeds, torch.Tensor) and isinstance(text_embeds, torch.Tensor) \
            and image_embeds.is_floating_point() and text_embeds.is_floating_point():
        image_embeds, text_embeds, amp_device = _autocast_embeds(image_embeds, text_embeds)
        if amp_device is not None:
            with torch.autocast(amp_device, enabled=False):
                return sigmoid_loss(image_embeds, text_embeds, logit_scale, logit_bias, group=group, backend=backend,
                                    chunk_rows=chunk_rows)
    if group is None:
        backend = _check_local(image_embeds, text_embeds, logit_scale, logit_bias, backend, chunk_rows)
        if image_embeds.device.type != "meta":  # meta tensors carry no values to check
            logit_scale, logit_bias = _checked_scalars(logit_scale, logit_bias, _compute_dtype(image_embeds.dtype))
        return _local_sigmoid_loss(image_embeds, text_embeds, logit_scale, logit_bias, backend=backend,
                                   chunk_rows=chunk_rows)
    _check_group(group)
    backend = _collective_check(image_embeds, text_embeds, logit_scale, logit_bias, backend, chunk_rows, group)
    return _RingSigmoidLoss.apply(image_embeds, text_embeds, logit_scale, logit_bias, group, backend, chunk_rows)


class SigmoidLoss(nn.Module):
    """The SigLIP loss with its learnable temperature and bias.

    logit_scale (t, a log) and logit_bias (b) are (1,) parameters as in transformers, initialised to log 10 and −10
    as in the paper (finite real numbers). max_logit_scale: clamp t from above in the forward (e.g.
    math.log(100)); t gets no gradient while above it; None: no clamp (and `sigmoid_loss` raises if exp(t)
    overflows). group: the default process group for the distributed loss (None: single device); forward(...,
    group=) overrides it per call. backend: "auto", "triton" or "eager". Every argument is checked here, at
    construction. forward(image_embeds, text_embeds) → 0-d loss; the embeddings must already be L2-normalised.
    """

    def __init__(self, *, init_logit_scale: float = math.log(10.0), init_logit_bias: float = -10.0,
                 max_logit_scale: float | None = None, group: dist.ProcessGroup | None = None,
                 backend: str = "auto"):
        super().__init__()
        init_logit_scale = _real("init_logit_scale", init_logit_scale, finite=True)
        init_logit_bias = _real("init_logit_bias", init_logit_bias, finite=True)
        if max_logit_scale is not None:
            max_logit_scale = _real("max_logit_scale", max_logit_scale, finite=False)
        _check_backend_arg(backend, "SigmoidLoss")
        if group is not None:
            _check_group_type(group, "SigmoidLoss")
        self.logit_scale = nn.Parameter(torch.tensor([init_logit_scale]))
        self.logit_bias = nn.Parameter(torch.tensor([init_logit_bias]))
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
# Argument checks
# ---------------------------------------------------------------------------------------------------------------

def _real(name: str, v, *, finite: bool) -> float:
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise TypeError(f"SigmoidLoss: {name} must be a real number, got {type(v).__name__} {v!r}")
    v = float(v)
    if math.isnan(v) or (finite and math.isinf(v)):
        raise ValueError(f"SigmoidLoss: {name} must be {'finite' if finite else 'a number (not NaN)'}, got {v!r}")
    return v


def _check_backend_arg(backend, who: str) -> None:
    if not isinstance(backend, str):
        raise TypeError(f"{who}: backend must be a str, one of {_BACKENDS}, got {type(backend).__name__} "
                        f"{backend!r}")
    if backend not in _BACKENDS:
        raise ValueError(f"{who}: backend must be one of {_BACKENDS}, got {backend!r}")


def _check_group_type(group, who: str) -> None:
    if not dist.is_available():
        raise ValueError(f"{who}: group= was given but this torch build has no torch.distributed")
    if isinstance(group, int) and group == dist.GroupMember.NON_GROUP_MEMBER:
        raise ValueError(f"{who}: this rank is not a member of the process group it was given")
    if not isinstance(group, dist.ProcessGroup):
        raise TypeError(f"{who}: group must be a torch.distributed.ProcessGroup, got {type(group).__name__}")


def _check_group(group) -> None:
    """What must hold before the ranks can talk at all (raised locally: there is no group to tell)."""
    if not dist.is_available() or not dist.is_initialized():
        raise ValueError("sigmoid_loss: group= was given but torch.distributed is not initialised")
    _check_group_type(group, "sigmoid_loss")
    if dist.get_rank(group) < 0:
        raise ValueError("sigmoid_loss: this rank is not a member of the process group it was given")


def _check_local(x, y, t, b, backend, chunk_rows) -> str:
    """This rank's own input checks (TypeError/ValueError); returns the resolved backend."""
    for name, v in zip(_NAMES, (x, y, t, b), strict=True):
        if isinstance(v, torch.Tensor) and v.layout != torch.strided:
            raise TypeError(f"sigmoid_loss: {name} must be a dense (strided) tensor, got layout {v.layout}")
    _check_inputs(x, y, t, b)
    _check_backend_arg(backend, "sigmoid_loss")
    if chunk_rows is not None and (isinstance(chunk_rows, bool) or not isinstance(chunk_rows, int)
                                   or chunk_rows < 1):
        raise ValueError(f"sigmoid_loss: chunk_rows must be a positive int or None, got {chunk_rows!r}")
    return _resolve_backend(backend, x)


# ---------------------------------------------------------------------------------------------------------------
# The scale/bias check: exp(t) and b finite in the compute dtype
# ---------------------------------------------------------------------------------------------------------------

def _scalar_flags(t: torch.Tensor, b: torch.Tensor, cdt: torch.dtype) -> torch.Tensor:
    """(t_ok, b_ok, t, b) as a float64 (4,) tensor on t's device, computed there (no host read)."""
    t, b = t.detach().reshape(()), b.detach().reshape(())
    t_ok = torch.isfinite(t.to(cdt).exp())
    b_ok = torch.isfinite(b.to(cdt))
    return torch.stack([t_ok.double(), b_ok.double(), t.double(), b.double()])


def _scalar_problems(t_ok: bool, b_ok: bool, t: float, b: float, cdt: torch.dtype) -> list[str]:
    out = []
    if not t_ok:
        cdt_name = str(cdt).removeprefix("torch.")
        out.append(f"logit_scale = {t!r}: exp(logit_scale) is not finite in {cdt_name} (the loss's compute dtype), "
                   f"so the loss cannot be computed; it must be ≤ {math.log(torch.finfo(cdt).max):.4f} — keep it "
                   f"in range, e.g. SigmoidLoss(max_logit_scale=math.log(100)) or clamp it after the optimizer step")
    if not b_ok:
        out.append(f"logit_bias = {b!r} is not finite")
    return out


@torch.library.custom_op("siglip_fast::sigmoid_loss_checked_scalars", mutates_args=())
def _checked_scalars(logit_scale: torch.Tensor, logit_bias: torch.Tensor, compute_dtype: torch.dtype
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """(t, b) unchanged (copies), after checking that exp(t) and b are finite in compute_dtype: one host read.
    A custom op so that torch.compile keeps it in the graph (opaque, run at run time) instead of breaking there."""
    if logit_scale.is_cuda and torch.cuda.is_current_stream_capturing():  # no host read is possible in a CUDA graph
        return logit_scale.clone(), logit_bias.clone()
    t_ok, b_ok, t, b = _scalar_flags(logit_scale, logit_bias, compute_dtype).tolist()
    problems = _scalar_problems(bool(t_ok), bool(b_ok), t, b, compute_dtype)
    if problems:
        raise ValueError("sigmoid_loss: " + "; ".join(problems))
    return logit_scale.clone(), logit_bias.clone()


@_checked_scalars.register_fake
def _(logit_scale, logit_bias, compute_dtype):
    return torch.empty_like(logit_scale), torch.empty_like(logit_bias)


_checked_scalars.register_autograd(lambda ctx, gt, gb: (gt, gb, None), setup_context=lambda ctx, inputs, output: None)


# ---------------------------------------------------------------------------------------------------------------
# The collective check: every rank learns what every rank was given, before any data moves
# ---------------------------------------------------------------------------------------------------------------

# One rank's description, int64 words: n, D, needs_grad, t_ok, b_ok, t, b (float64 bits), dtype (16 bytes),
# device type (16 bytes), this rank's own input error (256 bytes, UTF-8, truncated). n = D = −1 when unknown.
_STR_WORDS, _ERR_WORDS = 2, 32
_META_WORDS = 7 + 2 * _STR_WORDS + _ERR_WORDS  # 42
_BACKEND_DEVICES = {"gloo": {"cpu"}, "mpi": {"cpu"}, "nccl": {"cuda"}}


def _pack(s: str, words: int) -> list[int]:
    raw = s.encode("utf-8")
    if len(raw) > 8 * words:  # truncated, and marked so
        raw = raw[:8 * words - 3].decode("utf-8", errors="ignore").encode("utf-8") + "…".encode("utf-8")
    raw = raw.ljust(8 * words, b"\0")
    return list(struct.unpack(f"<{words}q", raw))


def _unpack(ws: list[int]) -> str:
    return struct.pack(f"<{len(ws)}q", *ws).rstrip(b"\0").decode("utf-8", errors="ignore")


def _as_float(w: int) -> float:
    return struct.unpack("<d", struct.pack("<q", w))[0]


def _group_devices(group: dist.ProcessGroup) -> tuple[torch.device, set[str] | None]:
    """(where the metadata goes: the CPU when the group's backend has gloo, else the current CUDA device for NCCL;
    the device types the group can move data for, None when unknown)."""
    name = str(dist.get_backend(group)).lower()  # "gloo", "nccl", or "cpu:gloo,cuda:nccl"
    kinds = {part.split(":")[-1] for part in name.split(",")}
    supported = set().union(*(_BACKEND_DEVICES.get(k, set()) for k in kinds)) if kinds <= _BACKEND_DEVICES.keys() \
        else None
    if "gloo" in kinds or "mpi" in kinds or "nccl" not in kinds or not torch.cuda.is_available():
        return torch.device("cpu"), supported
    return torch.device("cuda", torch.cuda.current_device()), supported


def _rank_name(group: dist.ProcessGroup, r: int) -> str:
    g = dist.get_global_rank(group, r)
    return f"rank {r}" if g == r else f"rank {r} (global rank {g})"


def _describe(x, y, t, b, backend, chunk_rows, group, meta_device, supported) -> tuple[torch.Tensor, str | None, str]:
    """(this rank's description (_META_WORDS,) int64 on meta_device, its local error or None, resolved backend)."""
    err, resolved = None, "eager"
    try:
        resolved = _check_local(x, y, t, b, backend, chunk_rows)
        if supported is not None and x.device.type not in supported:
            raise ValueError(f"sigmoid_loss: the group's backend ({dist.get_backend(group)}) moves "
                             f"{'/'.join(sorted(supported))} tensors, got embeddings on {x.device}")
    except Exception as e:  # whatever this rank's inputs raise, its peers hear of it instead of waiting
        err = f"{type(e).__name__}: {e}"
    if err is None:
        n, d = x.shape
        needs_grad = torch.is_grad_enabled() and any(v.requires_grad for v in (x, y, t, b))
        if x.device.type == "meta":
            scal = torch.tensor([1, 1, 0, 0], dtype=torch.float64, device=meta_device)  # no values to check
        else:
            scal = _scalar_flags(t, b, _compute_dtype(x.dtype)).to(meta_device)
        dtype, dev = str(x.dtype).removeprefix("torch."), x.device.type
    else:
        n = d = -1
        needs_grad = False
        scal = torch.tensor([1, 1, 0, 0], dtype=torch.float64, device=meta_device)
        dtype = dev = ""
    head = torch.tensor([n, d, int(needs_grad)], dtype=torch.int64, device=meta_device)
    scal = torch.cat([scal[:2].to(torch.int64), scal[2:].view(torch.int64)])  # flags as ints, t/b as float64 bits
    tail = torch.tensor(_pack(dtype, _STR_WORDS) + _pack(dev, _STR_WORDS) + _pack(err or "", _ERR_WORDS),
                        dtype=torch.int64, device=meta_device)
    return torch.cat([head, scal, tail]), err, resolved


def _verdict(rows: list[list[int]], names: list[str]) -> str | None:
    """The problems in the gathered descriptions, one message every rank builds identically; None if all agree."""
    problems = []
    valid = []
    for r, row in enumerate(rows):
        err = _unpack(row[7 + 2 * _STR_WORDS:])
        if err:
            problems.append(f"{names[r]}: {err}")
        else:
            valid.append(r)

    def field(r):
        row = rows[r]
        return {"n": row[0], "D": row[1], "dtype": _unpack(row[7:7 + _STR_WORDS]),
                "device type": _unpack(row[7 + _STR_WORDS:7 + 2 * _STR_WORDS]),
                "a backward (grad enabled, an input requiring grad)": bool(row[2])}

    fields = {r: field(r) for r in valid}
    for key in ("dtype", "device type", "n", "D", "a backward (grad enabled, an input requiring grad)"):
        values = {}
        for r in valid:
            values.setdefault(fields[r][key], []).append(r)
        if len(values) > 1:
            problems.append(f"the ranks disagree on {key}: " + ", ".join(
                f"{v} on {', '.join(names[r] for r in rs)}" for v, rs in values.items()))
    for r in valid:
        row = rows[r]
        dtype = getattr(torch, fields[r]["dtype"], torch.float32)
        for p in _scalar_problems(bool(row[3]), bool(row[4]), _as_float(row[5]), _as_float(row[6]),
                                  _compute_dtype(dtype)):
            problems.append(f"{names[r]}: {p}")
    if not problems:
        return None
    return ("sigmoid_loss(group=...): checked on every rank before any data moved, no rank computes the loss: "
            + "; ".join(problems))


def _collective_check(x, y, t, b, backend, chunk_rows, group) -> str:
    """All ranks exchange their descriptions (one all_gather of _META_WORDS int64 each, fixed size and dtype, on the
    backend's device, so the exchange itself cannot mismatch) and raise the same ValueError together, or none does.
    Returns this rank's resolved backend."""
    meta_device, supported = _group_devices(group)
    mine, err, resolved = _describe(x, y, t, b, backend, chunk_rows, group, meta_device, supported)
    world = dist.get_world_size(group)
    table = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(table, mine, group=group)
    rows = torch.stack(table).tolist()  # the one host read (a sync on CUDA)
    message = _verdict(rows, [_rank_name(group, r) for r in range(world)])
    if message is not None:
        raise ValueError(message)
    assert err is None  # a local error is in the table, so the verdict cannot be clean
    return resolved


# ---------------------------------------------------------------------------------------------------------------
# The ring
# ---------------------------------------------------------------------------------------------------------------

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
            total = total + _block_loss_sum(x, y_cur, log_scale, bias, diag_offset, backend, chunk_rows, norm=1.0 / n)
            if k < world - 1:
                _wait(works)
                y_cur = y_next
        ctx.save_for_backward(x, y, t, b)
        ctx.group, ctx.backend, ctx.chunk_rows = group, backend, chunk_rows
        return total.to(_loss_dtype(x, t, b))

    @staticmethod
    def backward(ctx, grad):
        if torch.is_grad_enabled():  # create_graph=True: the ring's communication has no derivative to offer
            raise RuntimeError("sigmoid_loss(group=...) is differentiable once: backward with create_graph=True "
                               "(a double backward) is not supported")
        x, y, t, b = ctx.saved_tensors
        if x.device.type in ("cpu", "cuda") and torch.is_autocast_enabled(x.device.type):
            with torch.autocast(x.device.type, enabled=False):  # a backward run under autocast: same fp32 math
                return _RingSigmoidLoss.backward(ctx, grad)
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
