"""DALI_OT: optimal transport between the two token sets, squared Euclidean cost (METHOD.md section 3).

    C_ij = |x_i - y_j|^2,   OT(x, y; a, b) = min_{P >= 0, P 1 = a, P^T 1 = b} <P, C>

with a, b the token weights (uniform 1/N, 1/M unless given). Gradients follow the envelope theorem: through the
cost at the optimal plan (d/dC = P*), and for the weights, the centred dual potentials (d/da = u - mean(u)), as
POT's `emd2` gives them.

Solvers:
- "exact": POT's network simplex (`ot.emd`), the paper's loss. Clips are solved in parallel threads (the solver
  releases the GIL), on CPU copies of the costs.
- "sinkhorn": batched log-domain entropic OT in torch, all clips at once, on the tensors' device. `epsilon` is
  relative to the spread (standard deviation) of each clip's cost matrix, so it means the same for any feature
  scale or width; it defaults to 0.05, and the loss is the transport cost <P_eps, C> of the entropic plan, which
  approaches the exact value as epsilon shrinks (bench/objectives.py measures the gap). Epsilon scaling (start at
  the cost spread, halve down to epsilon) keeps it fast at small epsilon.
"""

import os
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

__all__ = ["ot_loss", "pairwise_sq_distances", "DEFAULT_EPSILON"]

DEFAULT_EPSILON = 0.05


def pairwise_sq_distances(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """|x_i - y_j|^2 for x [B, N, D], y [B, M, D]: [B, N, M] (clamped at 0 against rounding)."""
    return (x.pow(2).sum(-1)[:, :, None] + y.pow(2).sum(-1)[:, None, :] - 2 * x @ y.transpose(1, 2)).clamp_min(0)


def ot_loss(
    x: torch.Tensor,
    y: torch.Tensor,
    x_weights: torch.Tensor | None = None,
    y_weights: torch.Tensor | None = None,
    solver: str = "exact",
    epsilon: float | None = None,
    num_threads: int | None = None,
    max_iter: int | None = None,
) -> torch.Tensor:
    """Per-clip optimal transport cost between `x` [B, N, D] and `y` [B, M, D]; returns [B].

    Args:
        x_weights, y_weights: token weights [B, N] / [B, M], each row a distribution (None = uniform).
        solver: "exact" (POT network simplex) or "sinkhorn" (batched entropic, torch).
        epsilon: sinkhorn regularisation relative to the spread of the clip's costs (default 0.05); exact ignores it.
        num_threads: threads for the exact solver (default: the CPU count, or 1 below 64 x 64 tokens).
        max_iter: solver iteration cap (exact: 10^7 simplex iterations; sinkhorn: 5000 per clip batch).
    """
    if x.ndim != 3 or y.ndim != 3 or x.shape[0] != y.shape[0] or x.shape[2] != y.shape[2]:
        raise ValueError(f"ot_loss expects x [B, N, D] and y [B, M, D], got {tuple(x.shape)} and {tuple(y.shape)}")
    a = _weights(x_weights, x.shape[:2], x, "x_weights")
    b = _weights(y_weights, y.shape[:2], y, "y_weights")
    cost = pairwise_sq_distances(x, y)
    if solver == "exact":
        plan, u, v = _exact(cost.detach(), a.detach(), b.detach(), num_threads, max_iter or 10_000_000)
    elif solver == "sinkhorn":
        plan, u, v = _sinkhorn(cost.detach(), a.detach(), b.detach(),
                               DEFAULT_EPSILON if epsilon is None else epsilon, max_iter or 5000)
    else:
        raise ValueError(f"unknown OT solver {solver!r}: use 'exact' or 'sinkhorn'")
    loss = (plan * cost).sum(dim=(1, 2))
    # value unchanged; gradients for the weights are the centred dual potentials
    loss = loss + ((a - a.detach()) * (u - u.mean(1, keepdim=True))).sum(1)
    return loss + ((b - b.detach()) * (v - v.mean(1, keepdim=True))).sum(1)


def _weights(weights, shape, like, name) -> torch.Tensor:
    if weights is None:
        return torch.full(shape, 1.0 / shape[1], dtype=like.dtype, device=like.device)
    if tuple(weights.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(weights.shape)}")
    if (weights < 0).any() or not torch.allclose(weights.sum(1), torch.ones_like(weights[:, 0]), atol=1e-4):
        raise ValueError(f"{name}: each row must be a distribution (non-negative, summing to 1)")
    return weights


def _exact(cost, a, b, num_threads, max_iter):
    import ot

    costs = cost.to("cpu")
    a64 = a.to("cpu", torch.float64).numpy()
    b64 = b.to("cpu", torch.float64).numpy()
    plans = torch.empty(costs.shape, dtype=cost.dtype)
    u = torch.empty(a.shape, dtype=torch.float64)
    v = torch.empty(b.shape, dtype=torch.float64)

    def solve(i):  # each thread writes its own clip's rows; the network simplex releases the GIL
        a_i, b_i = a64[i] / a64[i].sum(), b64[i] / b64[i].sum()
        plan, log = ot.emd(a_i, b_i, costs[i].numpy().astype(np.float64), numItermax=max_iter, log=True)
        if log["warning"] is not None:
            warnings.warn(f"exact OT, clip {i}: {log['warning']}", stacklevel=3)
        plans[i] = torch.from_numpy(plan)
        u[i], v[i] = torch.from_numpy(log["u"]), torch.from_numpy(log["v"])

    # threads pay off for problems of real size; tiny ones solve faster than a pool starts
    default_threads = (os.cpu_count() or 1) if costs.shape[1] * costs.shape[2] >= 4096 else 1
    workers = min(len(costs), num_threads or default_threads)
    if workers > 1:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(solve, range(len(costs))))
    else:
        for i in range(len(costs)):
            solve(i)
    return plans.to(cost.device), u.to(cost.device, cost.dtype), v.to(cost.device, cost.dtype)


def _sinkhorn(cost, a, b, epsilon, max_iter, tol=1e-3):
    # Shifting the cost changes neither the plan nor the centred potentials; epsilon is in units of its spread.
    shift = cost.amin(dim=(1, 2), keepdim=True)
    scale = cost.std(dim=(1, 2), keepdim=True).clamp_min(torch.finfo(cost.dtype).tiny)
    c = (cost - shift) / scale
    log_a, log_b = a.log()[:, :, None], b.log()[:, None, :]
    f = torch.zeros_like(cost[:, :, 0])
    g = torch.zeros_like(cost[:, 0, :])
    eps_schedule = []
    eps = 1.0
    while eps > epsilon:
        eps_schedule.append(eps)
        eps /= 2
    eps_schedule.append(epsilon)
    for stage, eps in enumerate(eps_schedule):
        last = stage == len(eps_schedule) - 1
        for step in range(max_iter if last else 20):
            f = -eps * torch.logsumexp((g[:, None, :] - c) / eps + log_b, dim=2)
            g = -eps * torch.logsumexp((f[:, :, None] - c) / eps + log_a, dim=1)
            if last and step % 10 == 9:
                row = torch.exp((f[:, :, None] + g[:, None, :] - c) / eps + log_a + log_b).sum(2)
                if (row - a).abs().sum(1).max() < tol:
                    break
    plan = torch.exp((f[:, :, None] + g[:, None, :] - c) / eps + log_a + log_b)
    return plan, f * scale[:, :, 0], g * scale[:, 0, :]
