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
"""

import math
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from siglip_fast.kernels.sigmoid_loss import sigmoid_loss_reference

from siglip_fast.loss import SigmoidLoss, sigmoid_loss

N_LOCAL, D = 5, 33  # odd on purpose: rows and D tails in every block
TOL = {torch.float64: 1e-10, torch.float32: 2e-5}


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
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
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
            assert "every rank of the group must pass embeddings of one shape" in str(e), e
        else:
            raise AssertionError("mismatched local batch sizes were accepted")
    finally:
        dist.destroy_process_group()


def test_distributed_matches_single_process(tmp_path):
    """3 gloo processes: the loss over all 3 and over a 2-process subgroup (one spawn keeps CI fast)."""
    if not dist.is_available():
        pytest.skip("torch.distributed is not available in this build")
    mp.spawn(_worker, args=(3, str(tmp_path / "rendezvous")), nprocs=3, join=True)


def test_group_needs_initialised_distributed():
    if dist.is_available() and dist.is_initialized():
        pytest.skip("a process group is already initialised in this process")
    x = torch.randn(4, 8)
    with pytest.raises(ValueError, match="torch.distributed is not initialised"):
        sigmoid_loss(x, x, torch.zeros(()), torch.zeros(()), group=object())
