"""The distributed sigmoid loss with 3 gloo processes on CPU (all three, and a 2-process subgroup), against one
process on the whole batch.

Rank r holds rows r·n .. (r+1)·n − 1 of the global batch (N = W·n). With L = the single-process loss of the
global batch and L_r the loss rank r returns, the relations checked are

    L_r            = (1/n) Σ_{i ∈ r} Σ_j −log σ(label_ij z_ij)           (its images against all texts)
    mean_r L_r     = L
    ∂L_r/∂x_r      = W · ∂L/∂x_r                                          (the image gradient is the rank's own)
    grad y_r       = Σ_r' ∂L_r'/∂y_r = W · ∂L/∂y_r                         (the text gradient summed over ranks)
    mean_r dt_r    = ∂L/∂t,   mean_r db_r = ∂L/∂b                          (dt_r = ∂L_r/∂t)

so that DDP, which averages each parameter gradient over the W ranks, obtains exactly ∂L/∂θ.

Bad input (issue 13): with 2 and 3 ranks, one rank's (or two ranks') bad or mismatched input makes every rank raise
the same ValueError naming the offending rank(s), before any data moves; none hangs, none crashes, and the group
still works afterwards. Every spawn runs under a hard deadline (RANKS_TIMEOUT_S), so a hang fails the test instead
of blocking CI for the backend's 30-minute timeout.
"""

import datetime
import math
import os
import re
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from siglip_fast.kernels.sigmoid_loss import sigmoid_loss_reference
from siglip_fast.loss import SigmoidLoss, sigmoid_loss

N_LOCAL, D = 5, 33  # odd on purpose: rows and D tails in every block
TOL = {torch.float64: 1e-10, torch.float32: 2e-5}
RANKS_TIMEOUT_S = float(os.environ.get("SIGLIP_FAST_DIST_TIMEOUT_S", "300"))  # whole spawn, imports included
GLOO_TIMEOUT = datetime.timedelta(seconds=60)  # a blocked collective errors out instead of waiting 30 minutes


def _run_ranks(fn, world, tmp_path, timeout=RANKS_TIMEOUT_S):
    """Spawn `world` processes running fn(rank, world, init_file); fail if they are not all done within timeout
    (a hang), or if any raises or dies (a crash, e.g. SIGABRT inside gloo). The survivors are killed either way."""
    if not dist.is_available():
        pytest.skip("torch.distributed is not available in this build")
    ctx = mp.start_processes(fn, args=(world, str(tmp_path / "rendezvous")), nprocs=world, join=False,
                             start_method="spawn")
    deadline = time.monotonic() + timeout
    try:
        while not ctx.join(timeout=max(0.1, deadline - time.monotonic())):
            if time.monotonic() >= deadline:
                pytest.fail(f"{world} ranks still running after {timeout:.0f} s: a rank hangs")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()


def _init(rank, world, init_file):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world,
                            timeout=GLOO_TIMEOUT)


def _close(got, ref, tol, name):
    got = got.detach().double()
    torch.testing.assert_close(got, ref, rtol=tol, atol=tol * max(ref.abs().max().item(), 1e-30),
                               msg=lambda m: f"{name}: {m}")


def _global_problem(world, t, b):
    g = torch.Generator().manual_seed(1234 + world)  # the same global batch on every rank
    x = F.normalize(torch.randn(world * N_LOCAL, D, generator=g, dtype=torch.float64), dim=-1)
    y = F.normalize(torch.randn(world * N_LOCAL, D, generator=g, dtype=torch.float64), dim=-1)
    return x, y, torch.tensor([t], dtype=torch.float64), torch.tensor([b], dtype=torch.float64)


def _check_rank(group, backend, dtype, t0, b0):
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    X, Y, T, B = (v.to(dtype).double() for v in _global_problem(world, t0, b0))  # values as the ranks see them
    leaves = [v.clone().requires_grad_() for v in (X, Y, T, B)]
    full = sigmoid_loss_reference(*leaves)
    full.backward()
    gX, gY, gT, gB = (v.grad for v in leaves)
    rows = slice(rank * N_LOCAL, (rank + 1) * N_LOCAL)
    z = X[rows] @ Y.T * T.exp() + B  # (n, N): rank r's images against all texts
    label = -torch.ones_like(z)
    label[:, rows] += 2 * torch.eye(N_LOCAL, dtype=torch.float64)
    own_loss = -F.logsigmoid(label * z).sum() / N_LOCAL
    own_dz = -label * torch.sigmoid(-label * z) / N_LOCAL
    own_dt = (own_dz * (z - B)).sum()

    t_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    x = X[rows].to(dtype).requires_grad_()
    y = Y[rows].to(dtype).requires_grad_()
    t = T.to(t_dtype).reshape(()).requires_grad_()  # 0-d here, (1,) in the module test
    b = B.to(t_dtype).reshape(()).requires_grad_()
    loss = sigmoid_loss(x, y, t, b, group=group, backend=backend)
    loss.backward()
    tol = TOL[dtype]
    _close(loss, own_loss, tol, "rank loss")
    mean = torch.stack([loss.detach().double(), t.grad.double(), b.grad.double()])
    dist.all_reduce(mean, group=group)
    mean /= world
    _close(mean[0], full.detach(), tol, "mean of rank losses")
    _close(x.grad, world * gX[rows], tol, "d_image")
    _close(y.grad, world * gY[rows], tol, "d_text")
    _close(t.grad, own_dt, tol, "rank d_logit_scale")
    _close(b.grad, own_dz.sum(), tol, "rank d_logit_bias")
    _close(mean[1], gT.reshape(()), tol, "mean d_logit_scale")
    _close(mean[2], gB.reshape(()), tol, "mean d_logit_bias")
    assert x.grad.dtype == dtype and y.grad.dtype == dtype and t.grad.shape == ()


def _worker(rank, world, init_file):
    _init(rank, world, init_file)
    try:
        torch.manual_seed(rank)
        # W = 3: the whole world; W = 2: a subgroup of global ranks 1 and 2 (ring peers are mapped to global ranks)
        pair = dist.new_group([1, 2])
        for group in (dist.group.WORLD, pair):
            if rank not in dist.get_process_group_ranks(group):
                continue
            _check_rank(group, "eager", torch.float64, math.log(10.0), -10.0)
            _check_rank(group, "eager", torch.float32, math.log(1000.0), -50.0)
            if os.environ.get("TRITON_INTERPRET") == "1":  # the kernels, interpreted on CPU (gloo: CPU tensors)
                _check_rank(group, "triton", torch.float32, 0.0, 0.0)
        dist.barrier()

        # the module: its group, (1,) parameters, and the same relations for the parameters' gradients
        X, Y, T, B = _global_problem(world, math.log(10.0), -10.0)
        mod = SigmoidLoss(group=dist.group.WORLD).double()
        rows = slice(rank * N_LOCAL, (rank + 1) * N_LOCAL)
        loss = mod(X[rows], Y[rows])
        loss.backward()
        ref = [mod.logit_scale.detach().clone().requires_grad_(), mod.logit_bias.detach().clone().requires_grad_()]
        full = sigmoid_loss_reference(X, Y, *ref)
        full.backward()
        stats = torch.cat([loss.detach().reshape(1), mod.logit_scale.grad, mod.logit_bias.grad])
        dist.all_reduce(stats)
        stats /= world
        _close(stats, torch.cat([full.detach().reshape(1), ref[0].grad, ref[1].grad]), 1e-10, "module")

        # a rank with a different batch: every rank raises, none hangs
        n = N_LOCAL - (rank == world - 1)
        x = torch.randn(n, D)
        try:
            sigmoid_loss(x, x, torch.zeros(()), torch.zeros(()), group=dist.group.WORLD)
        except ValueError as e:
            assert "the ranks disagree on n" in str(e), e
        else:
            raise AssertionError("mismatched local batch sizes were accepted")
    finally:
        dist.destroy_process_group()


def test_distributed_matches_single_process(tmp_path):
    """3 gloo processes: the loss over all 3 and over a 2-process subgroup (one spawn keeps CI fast)."""
    _run_ranks(_worker, 3, tmp_path)


def _edge_worker(rank, world, init_file):
    """logit_scale 88.7, unit embeddings whose rank losses fit fp32 while the sums of their terms do not: x = 20
    orthonormal rows of a rotation, y = x except y_0, y_1, positive mixes of x_0..x_7 and x_8..x_15 (~0.35·exp(t)
    per negative pair): each rank's n·L_r ≈ 3·exp(t) overflows, L_r does not."""
    _init(rank, world, init_file)
    try:
        g = torch.Generator().manual_seed(88)  # the same global batch on every rank
        q, _ = torch.linalg.qr(torch.randn(48, 48, generator=g, dtype=torch.float64))
        n = 10
        X = q[:world * n].clone()
        Y = X.clone()
        for c in (0, 1):
            Y[c] = (torch.rand(8, 1, generator=g, dtype=torch.float64).add_(0.5) * X[8 * c:8 * c + 8]).sum(0)
            Y[c] /= Y[c].norm()
        X, Y = X.float().double(), Y.float().double()
        t, b = torch.tensor(88.7), torch.tensor(-10.0)
        rows = slice(rank * n, (rank + 1) * n)
        z = X[rows] @ Y.T * t.double().exp() + b.double()
        label = -torch.ones_like(z)
        label[:, rows] += 2 * torch.eye(n, dtype=torch.float64)
        own = (-F.logsigmoid(label * z) / n).sum()
        assert own < torch.finfo(torch.float32).max < n * own
        backends = ["eager"] + (["triton"] if os.environ.get("TRITON_INTERPRET") == "1" else [])
        for backend in backends:
            loss = sigmoid_loss(X[rows].float(), Y[rows].float(), t, b, group=dist.group.WORLD, backend=backend)
            assert torch.isfinite(loss), backend
            _close(loss, own, 1e-5, f"rank loss at the scale limit ({backend})")
    finally:
        dist.destroy_process_group()


def test_distributed_loss_near_the_scale_limit(tmp_path):
    """Issue 23: the ring summed each rank's terms before dividing by n, so t ≈ 88.7 gave inf where the rank loss
    fits fp32; the terms are divided by n before any sum now."""
    _run_ranks(_edge_worker, 2, tmp_path)


# --- bad input on some ranks: every rank raises the same ValueError, together --------------------------------------

def _inputs(dtype=torch.float32, n=N_LOCAL, d=D):
    x = F.normalize(torch.randn(n, d, dtype=torch.float64), dim=-1).to(dtype)
    y = F.normalize(torch.randn(n, d, dtype=torch.float64), dim=-1).to(dtype)
    return [x, y, torch.tensor(math.log(10.0)), torch.tensor(-10.0)], {}


def _scenarios(world):
    """(name, inputs(rank) → (args, kwargs), the pattern the common message must match). The odd rank is the last."""
    odd = world - 1
    others = ", ".join(f"rank {r}" for r in range(odd))

    def on_odd(change):
        def make(rank):
            args, kw = _inputs()
            return change(args, kw) if rank == odd else (args, kw)
        return make

    def with_(i, v):
        def change(args, kw):
            args[i] = v
            return args, kw
        return change

    def grad(args, kw):
        args[0].requires_grad_()
        return args, kw

    scenarios = [
        ("dtype", lambda r: _inputs(torch.float64 if r == odd else torch.float32),
         rf"the ranks disagree on dtype: float32 on {others}, float64 on rank {odd}"),
        ("width D", lambda r: _inputs(d=D + (r == odd)), rf"disagree on D: {D} on {others}, {D + 1} on rank {odd}"),
        ("batch n", lambda r: _inputs(n=N_LOCAL - (r == odd)),
         rf"disagree on n: {N_LOCAL} on {others}, {N_LOCAL - 1} on rank {odd}"),
        ("ndim", on_odd(lambda a, kw: ([a[0][None], a[1][None], a[2], a[3]], kw)),
         rf"rank {odd}: ValueError: sigmoid_loss: image_embeds must be 2-D \(N, D\), got shape \(1, {N_LOCAL}, {D}\)"),
        ("device type", on_odd(lambda a, kw: ([v.to("meta") for v in a], kw)),
         rf"rank {odd}: ValueError: .*moves cpu tensors, got embeddings on meta"),
        ("non-scalar logit_scale", on_odd(with_(2, torch.zeros(2))),
         rf"rank {odd}: ValueError: sigmoid_loss: logit_scale must be a scalar tensor .* got shape \(2,\)"),
        ("integer embeddings", on_odd(lambda a, kw: ([a[0].long(), a[1].long(), a[2], a[3]], kw)),
         rf"rank {odd}: TypeError: sigmoid_loss: image_embeds must be a floating-point tensor, got torch.int64"),
        ("bad backend", on_odd(lambda a, kw: (a, {"backend": "bogus"})),
         rf"rank {odd}: ValueError: sigmoid_loss: backend must be one of .* got 'bogus'"),
        ("exp(logit_scale) overflows", on_odd(with_(2, torch.tensor(89.0))),
         rf"rank {odd}: logit_scale = 89.0: exp\(logit_scale\) is not finite in float32"),
        ("non-finite logit_bias", on_odd(with_(3, torch.tensor(float("nan")))), rf"rank {odd}: logit_bias = nan"),
        ("backward on some ranks only", on_odd(grad),
         rf"disagree on a backward .*: False on {others}, True on rank {odd}"),
    ]
    if world >= 3:  # two ranks with two different problems: both are named, in rank order
        def two(rank):
            args, kw = _inputs(torch.float64 if rank == 1 else torch.float32)
            if rank == 2:
                args[2] = torch.ones(1, 1)
            return args, kw
        scenarios.append(("two bad ranks", two, r"rank 2: ValueError: sigmoid_loss: logit_scale must be a scalar.*; "
                                                r"the ranks disagree on dtype: float32 on rank 0, float64 on rank 1"))
    return scenarios


def _expect_same_error(name, group, make, pattern):
    rank = dist.get_rank()
    args, kw = make(dist.get_rank(group))
    try:
        sigmoid_loss(*args, group=group, **kw)
        msg = None
    except ValueError as e:
        msg = str(e)
    msgs = [None] * dist.get_world_size(group)
    dist.all_gather_object(msgs, msg, group=group)  # the group is still usable after the error
    assert all(m is not None for m in msgs), f"{name}: group ranks {[r for r, m in enumerate(msgs) if m is None]} " \
                                             f"did not raise (messages: {msgs})"
    assert len(set(msgs)) == 1, f"{name}: the ranks raised different messages: {msgs}"
    assert msgs[0].startswith("sigmoid_loss(group=...): checked on every rank"), msgs[0]
    assert re.search(pattern, msgs[0]), f"{name}: {msgs[0]!r} does not match {pattern!r} (rank {rank})"


def _errors_worker(rank, world, init_file):
    _init(rank, world, init_file)
    try:
        torch.manual_seed(rank)
        for name, make, pattern in _scenarios(world):
            _expect_same_error(name, dist.group.WORLD, make, pattern)
        if world >= 3:  # a subgroup of global ranks 1 and 2: group ranks are named with their global rank
            pair = dist.new_group([1, 2])
            if rank in (1, 2):
                _expect_same_error("subgroup dtype", pair, lambda r: _inputs(torch.float64 if r == 1 else
                                                                              torch.float32),
                                   r"float32 on rank 0 \(global rank 1\), float64 on rank 1 \(global rank 2\)")
            dist.barrier()
        # nothing is left in flight: a valid call afterwards gives the right loss on every rank
        X, Y, T, B = _global_problem(world, math.log(10.0), -10.0)
        rows = slice(rank * N_LOCAL, (rank + 1) * N_LOCAL)
        loss = sigmoid_loss(X[rows], Y[rows], T, B, group=dist.group.WORLD)
        losses = [None] * world
        dist.all_gather_object(losses, loss.item())
        _close(torch.tensor(losses, dtype=torch.float64).mean(), sigmoid_loss_reference(X, Y, T, B), 1e-10,
               "mean of rank losses after the errors")
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("world", [2, 3])
def test_distributed_bad_input_raises_on_every_rank(world, tmp_path):
    """Mismatched dtype, D, n, and one rank's invalid input (ndim, device type, scale shape, integer dtype, backend,
    overflowing scale, NaN bias, a backward on some ranks only): all ranks raise the same ValueError naming the
    offending rank, none hangs or crashes, and the group works afterwards."""
    _run_ranks(_errors_worker, world, tmp_path)


def _double_backward_worker(rank, world, init_file):
    _init(rank, world, init_file)
    try:
        x, y, t, b = _inputs(torch.float64)[0]
        x.requires_grad_()
        loss = sigmoid_loss(x, y, t.double(), b.double(), group=dist.group.WORLD)
        try:
            torch.autograd.grad(loss, x, create_graph=True)
        except RuntimeError as e:
            assert "differentiable once: backward with create_graph=True" in str(e), e
        else:
            raise AssertionError("create_graph=True through the ring was accepted (second derivatives would be "
                                 "silently wrong: the ring's communication is not in the graph)")
        (gx,) = torch.autograd.grad(loss, x)  # a plain backward still works on every rank afterwards
        assert torch.isfinite(gx).all()
    finally:
        dist.destroy_process_group()


def test_distributed_double_backward_is_a_clear_error(tmp_path):
    """Before: create_graph=True gave a graph that silently left out the ring (wrong second derivatives)."""
    _run_ranks(_double_backward_worker, 2, tmp_path)


def test_group_needs_initialised_distributed():
    if dist.is_available() and dist.is_initialized():
        pytest.skip("a process group is already initialised in this process")
    x = torch.randn(4, 8)
    with pytest.raises(ValueError, match="torch.distributed is not initialised"):
        sigmoid_loss(x, x, torch.zeros(()), torch.zeros(()), group=object())


@pytest.mark.parametrize("backend,cuda,device,supported", [
    ("gloo", True, "cpu", {"cpu"}),
    ("nccl", True, "cuda:0", {"cuda"}),
    ("cpu:gloo,cuda:nccl", True, "cpu", {"cpu", "cuda"}),  # init_process_group() without a backend
    ("mpi", False, "cpu", {"cpu"}),
    ("ucc", False, "cpu", None),
])
def test_metadata_goes_where_the_backend_can_move_it(monkeypatch, backend, cuda, device, supported):
    """The description all_gather: on the CPU when the group's backend has gloo, else on the current CUDA device for
    NCCL (never on the device of a rank's possibly wrong input); and the device types the backend can move."""
    import siglip_fast.loss as loss_mod

    monkeypatch.setattr(dist, "get_backend", lambda group=None: backend)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    got_device, got_supported = loss_mod._group_devices(object())
    assert got_device == torch.device(device) and got_supported == supported
