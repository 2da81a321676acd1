"""The alignment objectives against independent references: POT, finite differences, a double loop."""

import warnings

import numpy as np
import ot
import pytest
import torch

from dali_hf.trainers.objectives import (
    AttentiveMarginals,
    contrastive_loss,
    entropy,
    lambda_schedule,
    mmd_loss,
    ot_loss,
    start_ot_loss,
)


def _tokens(seed, batch=3, n=11, m=14, dim=5, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, n, dim, generator=g, dtype=dtype),
            torch.randn(batch, m, dim, generator=g, dtype=dtype) + 0.5)


def _distribution(batch, k, seed):
    w = torch.rand(batch, k, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) + 0.1
    return w / w.sum(1, keepdim=True)


@pytest.mark.parametrize("weighted", [False, True])
def test_exact_ot_equals_pot_emd2(weighted):
    x, y = _tokens(0)
    a = _distribution(3, 11, 1) if weighted else None
    b = _distribution(3, 14, 2) if weighted else None
    ours = ot_loss(x, y, a, b, solver="exact")
    for i in range(3):
        wa = a[i].numpy() if weighted else np.full(11, 1 / 11)
        wb = b[i].numpy() if weighted else np.full(14, 1 / 14)
        reference = ot.emd2(wa, wb, ot.dist(x[i].numpy(), y[i].numpy()))
        assert abs(ours[i].item() - reference) < 1e-6


def test_exact_ot_gradient_equals_finite_differences():
    x, y = _tokens(3, batch=2, n=6, m=8, dim=3)
    a, b = _distribution(2, 6, 4), _distribution(2, 8, 5)
    x.requires_grad_(True)
    a.requires_grad_(True)
    ot_loss(x, y, a, b).sum().backward()
    h = 1e-6
    for index in [(0, 0, 0), (0, 3, 2), (1, 5, 1)]:
        shifted = x.detach().clone()
        shifted[index] += h
        up = ot_loss(shifted, y, a.detach(), b).sum()
        shifted[index] -= 2 * h
        down = ot_loss(shifted, y, a.detach(), b).sum()
        assert abs((up - down).item() / (2 * h) - x.grad[index].item()) < 1e-5
    # weights: directional derivative along a zero-sum direction (the weights stay a distribution)
    direction = torch.zeros_like(a)
    direction[0, 1], direction[0, 4] = 1.0, -1.0
    up = ot_loss(x.detach(), y, a.detach() + h * direction, b).sum()
    down = ot_loss(x.detach(), y, a.detach() - h * direction, b).sum()
    assert abs((up - down).item() / (2 * h) - (a.grad * direction).sum().item()) < 1e-5


def test_threaded_exact_ot_equals_serial():
    x, y = _tokens(6, batch=7, n=20, m=25)  # 7 clips: the last cost chunk is partial for 2 and 4 threads
    serial = np.array([ot.emd2(np.full(20, 1 / 20), np.full(25, 1 / 25), ot.dist(x[i].numpy(), y[i].numpy()))
                       for i in range(7)])
    for threads in (1, 2, 4):
        assert torch.allclose(ot_loss(x, y, num_threads=threads), torch.as_tensor(serial), atol=1e-9, rtol=0)


def test_started_exact_ot_waits_for_its_solves_and_keeps_gradients():
    x, y = _tokens(8, batch=5, n=30, m=40)
    x.requires_grad_(True)
    pending = start_ot_loss(x, y, num_threads=2)
    y_other = y + 1.0  # the caller goes on while the threads solve
    started = pending.result()
    started.sum().backward()
    grad = x.grad.clone()
    x.grad = None
    ot_loss(x, y).sum().backward()
    assert torch.equal(started.detach(), ot_loss(x.detach(), y)) and torch.allclose(grad, x.grad)
    assert not torch.equal(ot_loss(x.detach(), y_other), started.detach())


def test_half_precision_tokens_are_compared_in_float32():
    x, y = _tokens(9, batch=2, n=16, m=20, dim=32, dtype=torch.float32)
    x, y = 8 * x, 8 * y  # norms of a few hundred, as real encoder tokens: bf16 alone would cancel digits
    reference = ot_loss(x.bfloat16().float(), y.bfloat16().float())
    for solver in ("exact", "sinkhorn"):
        loss = ot_loss(x.bfloat16(), y.bfloat16(), solver=solver)
        assert loss.dtype == torch.float32
        expected = reference if solver == "exact" else ot_loss(x.bfloat16().float(), y.bfloat16().float(),
                                                               solver="sinkhorn")
        assert torch.allclose(loss, expected, rtol=1e-5)


def test_sinkhorn_approaches_exact_as_epsilon_shrinks():
    x, y = _tokens(7)
    exact = ot_loss(x, y, solver="exact")
    gaps = [(ot_loss(x, y, solver="sinkhorn", epsilon=eps) - exact).abs().max().item()
            for eps in (0.1, 0.01, 0.001)]
    assert gaps[0] > gaps[1] > gaps[2]
    assert gaps[2] < 1e-3 * exact.min().item()


def test_sinkhorn_gradient_is_close_to_exact():
    x, y = _tokens(8, batch=2)
    grads = []
    for solver in ("exact", "sinkhorn"):
        xs = x.clone().requires_grad_(True)
        ot_loss(xs, y, solver=solver, epsilon=1e-3).sum().backward()
        grads.append(xs.grad)
    assert (grads[0] - grads[1]).norm() < 5e-2 * grads[0].norm()


def test_mmd_equals_direct_double_loop():
    x, y = _tokens(9, batch=2, n=5, m=7, dim=3)

    def reference(a, b):
        z = torch.cat([a, b])
        n = len(z)
        d2 = [[((z[i] - z[j]) ** 2).sum().item() for j in range(n)] for i in range(n)]
        s = sum(map(sum, d2)) / (n * n - n)

        def k(i, j):
            return sum(np.exp(-d2[i][j] / (s * m)) for m in (0.25, 0.5, 1, 2, 4))

        na = len(a)
        xx = np.mean([k(i, j) for i in range(na) for j in range(na)])
        yy = np.mean([k(i, j) for i in range(na, n) for j in range(na, n)])
        xy = np.mean([k(i, j) for i in range(na) for j in range(na, n)])
        return xx - 2 * xy + yy

    ours = mmd_loss(x, y)
    for i in range(2):
        assert abs(ours[i].item() - reference(x[i], y[i])) < 1e-10
    assert torch.allclose(mmd_loss(x, y, chunk_size=1), ours)


def test_mmd_bandwidth_carries_no_gradient():
    # scaling both sets together leaves MMD unchanged only if the bandwidth follows: its value does, its gradient not
    x, y = _tokens(10, batch=1)
    assert torch.allclose(mmd_loss(3 * x, 3 * y), mmd_loss(x, y))
    x.requires_grad_(True)
    mmd_loss(x, y).sum().backward()
    assert x.grad.abs().sum() > 0


def test_contrastive_loss_prefers_matching_pairs():
    x, _ = _tokens(11, batch=4, n=6, m=6)
    matched = contrastive_loss(x, x + 0.01).mean()
    shuffled = contrastive_loss(x, (x + 0.01).flip(0)).mean()
    assert matched < shuffled
    assert contrastive_loss(x, x).shape == (4,)


def test_attentive_weights_are_distributions_and_mix_with_uniform():
    torch.manual_seed(0)
    scorers = AttentiveMarginals(dim=16, num_heads=4, temperature=20.0, uniform_mix=0.5)
    x, y = torch.randn(2, 9, 16), torch.randn(2, 12, 16)
    alpha, beta = scorers(x, y)
    assert alpha.shape == (2, 9) and beta.shape == (2, 12)
    assert torch.allclose(alpha.sum(1), torch.ones(2)) and torch.allclose(beta.sum(1), torch.ones(2))
    assert (alpha >= 0.5 / 9 - 1e-7).all() and (beta >= 0.5 / 12 - 1e-7).all()


def test_entropy_and_lambda_schedule():
    uniform = torch.full((1, 8), 1 / 8)
    assert torch.allclose(entropy(uniform), torch.tensor([np.log(8)], dtype=torch.float32))
    assert [lambda_schedule(e) for e in range(1, 9)] == [None, 500, 400, 300, 200, 100, 100, 100]
    assert lambda_schedule(3, values=(2.0,), final=1.0, uniform_epochs=2) == 2.0
    with pytest.raises(ValueError):
        lambda_schedule(0)


def test_ot_loss_input_errors():
    x, y = _tokens(12)
    with pytest.raises(ValueError, match="x_weights must have shape"):
        ot_loss(x, y, x_weights=torch.ones(3, 5))
    with pytest.raises(ValueError, match="distribution"):
        ot_loss(x, y, x_weights=torch.ones(3, 11, dtype=torch.float64))
    with pytest.raises(ValueError, match="unknown OT solver"):
        ot_loss(x, y, solver="greedy")
    with pytest.raises(ValueError, match=r"expects x \[B, N, D\]"):
        ot_loss(x[0], y[0])


def test_sinkhorn_warns_when_it_does_not_converge():
    x, y = _tokens(13)
    with pytest.warns(UserWarning, match=r"Sinkhorn did not converge in max_iter=5 .*epsilon=0\.0001"):
        ot_loss(x, y, solver="sinkhorn", epsilon=1e-4, max_iter=5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ot_loss(x, y, solver="sinkhorn", epsilon=0.05)


def test_sinkhorn_potentials_equal_pot_at_small_epsilon():
    # the weights' gradient is the centred dual potential u; POT's log-domain Sinkhorn at the same (absolute)
    # epsilon, run to 1e-13, is the reference. Sizes 11 x 14 share no divisor, so the potentials are well determined.
    # Stopping on the row marginals alone left these 0.9e-4 and 1.2e-4 x the cost spread off (0.1 epsilon).
    x, y = _tokens(0)
    a = torch.full((3, 11), 1 / 11, dtype=torch.float64, requires_grad=True)
    ot_loss(x, y, a, solver="sinkhorn", epsilon=1e-3).sum().backward()
    for i in range(3):
        cost = ot.dist(x[i].numpy(), y[i].numpy())
        spread = cost.std(ddof=1)  # as torch.std, by which the solver scales epsilon
        with np.errstate(over="ignore"):  # an exp inside POT overflows at this epsilon; its potentials stay finite
            _, log = ot.sinkhorn(np.full(11, 1 / 11), np.full(14, 1 / 14), cost, 1e-3 * spread,
                                 method="sinkhorn_log", numItermax=100_000, stopThr=1e-13, log=True)
        reference = 1e-3 * spread * log["log_u"]
        reference -= reference.mean()
        assert np.abs(a.grad[i].numpy() - reference).max() < 4e-5 * spread
