"""DALI_OT: optimal transport between the two token sets, squared Euclidean cost (docs/method.md, section 3).

    C_ij = |x_i - y_j|^2,   OT(x, y; a, b) = min_{P >= 0, P 1 = a, P^T 1 = b} <P, C>

with a, b the token weights (uniform 1/N, 1/M unless given). Gradients follow the envelope theorem: through the
cost at the optimal plan (d/dC = P*), and for the weights, the centred dual potentials (d/da = u - mean(u)), as
POT's `emd2` gives them.

Solvers:
- "exact": POT's network simplex (`ot.emd`), the paper's loss. Clips are solved in CPU worker threads (the solver
  releases the GIL) while the caller goes on: the cost matrices are computed a few clips at a time and each clip is
  handed to the threads as soon as its costs exist (on an accelerator through an asynchronous copy the worker
  waits for), so solving overlaps with computing the next costs, or with whatever the caller starts before asking
  for the result (`start_ot_loss`; the alignment trainer runs the next micro-batch's forward pass there).
- "sinkhorn": batched log-domain entropic OT in torch, all clips at once, on the tensors' device. `epsilon` is
  relative to the spread (standard deviation) of each clip's cost matrix, so it means the same for any feature
  scale or width; it defaults to 0.05, and the loss is the transport cost <P_eps, C> of the entropic plan, which
  approaches the exact value as epsilon shrinks (bench/objectives.py measures the gap). Epsilon scaling (start at
  the cost spread, halve down to epsilon) keeps it fast at small epsilon. It stops when both the row marginals
  (L1 error within 1e-3) and the centred dual potentials (change over 10 iterations within 3e-3 epsilon) have
  settled, and warns, as POT's solvers do, when `max_iter` runs out first.

References
----------
Malard, Olvera, Lathuiliere, Essid, "An Eye for an Ear: Zero-shot Audio Description Leveraging an Image Captioner
using Audiovisual Distribution Alignment", NeurIPS 2024 (arXiv 2410.05997): the DALI_OT objective.
Bonneel, van de Panne, Paris, Heidrich, "Displacement interpolation using Lagrangian mass transport", SIGGRAPH Asia
2011: the network simplex behind `ot.emd`.
Cuturi, "Sinkhorn distances: lightspeed computation of optimal transport", NeurIPS 2013; Schmitzer, "Stabilized
sparse scaling algorithms for entropy regularized transport problems", SIAM J. Sci. Comput. 2019 (log domain,
epsilon scaling).
"""

import os
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

__all__ = ["ot_loss", "start_ot_loss", "PendingOTLoss", "pairwise_sq_distances", "DEFAULT_EPSILON"]

DEFAULT_EPSILON = 0.05


def pairwise_sq_distances(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    r"""Squared Euclidean distances between the tokens of each clip, the OT cost C_ij = |x_i - y_j|^2.

    Half-precision tokens (a bf16 model) are compared in float32, autocast or not: |x|^2 + |y|^2 - 2 x.y cancels
    digits that bf16 does not have. Results are clamped at 0 against rounding.

    Parameters
    ----------
    x : torch.Tensor, shape (B, N, D), float
        First token sets (the audio tokens).
    y : torch.Tensor, shape (B, M, D), float
        Second token sets (the image tokens).

    Returns
    -------
    torch.Tensor, shape (B, N, M)
        The distances, in float32 for half-precision inputs, else in the inputs' dtype.

    Examples
    --------
    >>> import torch
    >>> x = torch.tensor([[[0.0, 0.0], [1.0, 0.0]]])
    >>> y = torch.tensor([[[0.0, 2.0]]])
    >>> pairwise_sq_distances(x, y)
    tensor([[[4.],
             [5.]]])
    """
    if x.dtype in (torch.float16, torch.bfloat16) or y.dtype in (torch.float16, torch.bfloat16):
        x, y = x.float(), y.float()
    with torch.autocast(x.device.type, enabled=False):
        return (x.pow(2).sum(-1)[:, :, None] + y.pow(2).sum(-1)[:, None, :]
                - 2 * x @ y.transpose(1, 2)).clamp_min(0)


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
    r"""Per-clip optimal transport cost between the token sets `x` and `y` (DALI_OT).

    .. math::
        OT(x, y; a, b) = \min_{P \geq 0,\ P 1 = a,\ P^T 1 = b} \sum_{ij} P_{ij} |x_i - y_j|^2

    Gradients reach `x` and `y` through the cost at the optimal plan, and the weights through the centred dual
    potentials (d/da = u - mean(u), d/db = v - mean(v)), as POT's `emd2` gives them.

    Parameters
    ----------
    x : torch.Tensor, shape (B, N, D), float
        Audio tokens (after the audio-to-vision projection).
    y : torch.Tensor, shape (B, M, D), float
        Image tokens.
    x_weights : torch.Tensor, shape (B, N), optional
        Weights of the audio tokens, each row a distribution (non-negative, summing to 1). Default: uniform 1/N.
    y_weights : torch.Tensor, shape (B, M), optional
        Weights of the image tokens, likewise. Default: uniform 1/M.
    solver : {"exact", "sinkhorn"}, default "exact"
        "exact": POT's network simplex in CPU threads (the paper's loss). "sinkhorn": batched log-domain entropic
        OT in torch on the tensors' device; the loss is the transport cost <P_eps, C> of the entropic plan.
    epsilon : float, optional
        Sinkhorn's regularisation, relative to the standard deviation of each clip's costs (default 0.05).
        Ignored by the exact solver.
    num_threads : int, optional
        Threads for the exact solver (default: the CPU count; problems below 64 x 64 tokens are solved inline).
    max_iter : int, optional
        Iteration cap: 10^7 network simplex iterations (exact) or 5000 Sinkhorn iterations at the final epsilon.
        Either solver warns when it stops at the cap.

    Returns
    -------
    torch.Tensor, shape (B,)
        One OT cost per clip, in float32 for half-precision tokens, else in the tokens' dtype.

    Examples
    --------
    >>> import torch
    >>> x = torch.tensor([[[0.0], [1.0]]])  # one clip: two 1-D audio tokens
    >>> y = torch.tensor([[[0.0], [3.0]]])  # and two image tokens
    >>> ot_loss(x, y)  # half the mass moves 0 -> 0, half 1 -> 3
    tensor([2.])
    >>> a = torch.tensor([[0.75, 0.25]], requires_grad=True)
    >>> loss = ot_loss(x, y, x_weights=a)
    >>> loss.backward()
    >>> loss  # 0.5 stays at 0, 0.25 moves 0 -> 3 and 0.25 moves 1 -> 3
    tensor([3.2500], grad_fn=<AddBackward0>)
    >>> a.grad  # the centred dual potential: mass moved from token 1 to token 0 costs 5 per unit
    tensor([[ 2.5000, -2.5000]])
    >>> sinkhorn = ot_loss(x, y, solver="sinkhorn", epsilon=1e-3)
    >>> torch.allclose(sinkhorn, torch.tensor([2.0]), atol=1e-3)
    True

    References
    ----------
    The DALI_OT objective of Malard et al., NeurIPS 2024 (arXiv 2410.05997); docs/method.md, section 3.
    """
    return start_ot_loss(x, y, x_weights, y_weights, solver, epsilon, num_threads, max_iter).result()


def start_ot_loss(x, y, x_weights=None, y_weights=None, solver="exact", epsilon=None, num_threads=None,
                  max_iter=None) -> "PendingOTLoss":
    """`ot_loss` started, not waited for: the exact solves run in CPU threads while the caller goes on.

    The alignment trainer runs the next micro-batch's forward pass on the accelerator meanwhile. The Sinkhorn
    solver runs at once. Parameters are those of `ot_loss`.

    Returns
    -------
    PendingOTLoss
        Its `result()` waits for the solves and returns what `ot_loss` would, shape (B,).

    Examples
    --------
    >>> import torch
    >>> x, y = torch.tensor([[[0.0], [1.0]]]), torch.tensor([[[0.0], [3.0]]])
    >>> pending = start_ot_loss(x, y)
    >>> pending.result()
    tensor([2.])
    """
    return PendingOTLoss(x, y, x_weights, y_weights, solver, epsilon, num_threads, max_iter)


class PendingOTLoss:
    """Per-clip OT losses being computed (made by `start_ot_loss`).

    `result()` waits for them and returns the losses, shape (B,), with gradients for the tokens and the weights.
    Parameters are those of `ot_loss`.
    """

    def __init__(self, x, y, x_weights=None, y_weights=None, solver="exact", epsilon=None, num_threads=None,
                 max_iter=None):
        if x.ndim != 3 or y.ndim != 3 or x.shape[0] != y.shape[0] or x.shape[2] != y.shape[2]:
            raise ValueError(f"ot_loss expects x [B, N, D] and y [B, M, D], got {tuple(x.shape)} and "
                             f"{tuple(y.shape)}")
        if solver not in ("exact", "sinkhorn"):
            raise ValueError(f"unknown OT solver {solver!r}: use 'exact' or 'sinkhorn'")
        self.a = _weights(x_weights, x.shape[:2], x, "x_weights")
        self.b = _weights(y_weights, y.shape[:2], y, "y_weights")
        if solver == "sinkhorn":
            self.costs = [pairwise_sq_distances(x, y)]
            self._solution = _sinkhorn(self.costs[0].detach(), self.a.detach(), self.b.detach(),
                                       DEFAULT_EPSILON if epsilon is None else epsilon, max_iter or 5000)
        else:
            self._solution = None
            self._exact = _ExactSolves(x, y, self.a.detach(), self.b.detach(), num_threads, max_iter or 10_000_000)
            self.costs = self._exact.costs

    def result(self) -> torch.Tensor:
        if self._solution is None:
            self._solution = self._exact.wait()
        plans, u, v = self._solution
        a, b = self.a, self.b
        loss = torch.cat([(plan * cost).sum(dim=(1, 2)) for plan, cost in zip(plans, self.costs, strict=True)])
        # value unchanged; gradients for the weights are the centred dual potentials
        loss = loss + ((a - a.detach()) * (u - u.mean(1, keepdim=True))).sum(1)
        return loss + ((b - b.detach()) * (v - v.mean(1, keepdim=True))).sum(1)


def _weights(weights, shape, like, name) -> torch.Tensor:
    """The token weights in the loss's precision (float32 for half-precision tokens), checked."""
    dtype = torch.promote_types(like.dtype, torch.float32)
    if weights is None:
        return torch.full(shape, 1.0 / shape[1], dtype=dtype, device=like.device)
    if tuple(weights.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(weights.shape)}")
    tolerance = 1e-4 if weights.dtype in (torch.float32, torch.float64) else 1e-2
    weights = weights.to(dtype)
    if (weights < 0).any() or not torch.allclose(weights.sum(1), torch.ones_like(weights[:, 0]), atol=tolerance):
        raise ValueError(f"{name}: each row must be a distribution (non-negative, summing to 1)")
    return weights


class _ExactSolves:
    """Costs computed a few clips at a time; each clip's network simplex runs in a pool thread as soon as its costs
    are on the CPU. Plans and potentials land in preallocated CPU tensors, one clip per task."""

    def __init__(self, x, y, a, b, num_threads, max_iter):
        batch, n, m = x.shape[0], x.shape[1], y.shape[1]
        # threads pay off for problems of real size; tiny ones solve faster inline than a pool hands them out
        inline = num_threads is None and n * m < 4096
        workers = min(batch, num_threads or os.cpu_count() or 1)
        self.a64 = a.to("cpu", torch.float64).numpy()
        self.b64 = b.to("cpu", torch.float64).numpy()
        self.plans = torch.empty((batch, n, m), dtype=torch.promote_types(x.dtype, torch.float32))  # the costs' dtype
        self.u = torch.empty((batch, n), dtype=torch.float64)
        self.v = torch.empty((batch, m), dtype=torch.float64)
        self.costs, self.futures, self.warnings = [], [], []
        self.max_iter = max_iter
        for start in range(0, batch, workers):
            cost = pairwise_sq_distances(x[start:start + workers], y[start:start + workers])
            self.costs.append(cost)
            host, ready = _to_host(cost.detach())
            for offset, clip_cost in enumerate(host):
                if inline:
                    self._solve(start + offset, clip_cost, ready)
                else:
                    self.futures.append(_pool(workers).submit(self._solve, start + offset, clip_cost, ready))

    def _solve(self, i, cost, ready):
        import ot

        if ready is not None:
            ready.synchronize()
        plan, log = ot.emd(self.a64[i] / self.a64[i].sum(), self.b64[i] / self.b64[i].sum(),
                           cost.numpy().astype(np.float64), numItermax=self.max_iter, log=True)
        if log["warning"] is not None:
            self.warnings.append(f"exact OT, clip {i}: {log['warning']}")
        self.plans[i] = torch.from_numpy(plan)
        self.u[i], self.v[i] = torch.from_numpy(log["u"]), torch.from_numpy(log["v"])

    def wait(self):
        for future in self.futures:
            future.result()
        for message in self.warnings:
            warnings.warn(message, stacklevel=4)
        device, dtype = self.costs[0].device, self.costs[0].dtype
        plans = self.plans.to(device).split([len(cost) for cost in self.costs])
        return plans, self.u.to(device, dtype), self.v.to(device, dtype)


def _to_host(cost: torch.Tensor):
    """A CPU copy of `cost` and, on CUDA, the event that marks the (asynchronous) copy done."""
    if cost.device.type != "cuda":
        return cost.to("cpu"), None
    host = torch.empty(cost.shape, dtype=cost.dtype, pin_memory=True)
    host.copy_(cost, non_blocking=True)
    ready = torch.cuda.Event()
    ready.record()
    return host, ready


_POOLS: dict[int, ThreadPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()


def _pool(workers: int) -> ThreadPoolExecutor:
    """One long-lived pool per size: a training run solves every step, and starting threads each time costs."""
    with _POOLS_LOCK:
        if workers not in _POOLS:
            _POOLS[workers] = ThreadPoolExecutor(workers, thread_name_prefix="dali-exact-ot")
        return _POOLS[workers]


_CHECK_EVERY = 10  # Sinkhorn iterations between convergence checks


def _sinkhorn(cost, a, b, epsilon, max_iter, tol=1e-3, potential_tol=3e-3):
    """Batched log-domain Sinkhorn with epsilon scaling; returns ([plan], u, v) in the costs' units.

    Every `_CHECK_EVERY` iterations at the final epsilon it checks both what POT's solvers check: the plan's
    row-marginal error (L1; the columns are exact after each update) and the change of the centred dual potentials
    since the previous check, in units of epsilon (the relative change of POT's scalings exp(f / eps)). It stops
    when the first is under `tol` and the second under `potential_tol`, and warns as POT does when `max_iter` runs
    out first: the row error alone can be small while the potentials, the weights' gradient, still move.
    (`potential_tol` 3e-3 puts the potentials within ~0.02 epsilon of POT's converged ones on small problems, where
    the row rule alone left ~0.1 epsilon; 1e-3 would gain 3x more accuracy for many more iterations on degenerate
    problems, where the potentials drift along near-flat directions.)
    """
    # Shifting the cost changes neither the plan nor the centred potentials; epsilon is in units of its spread.
    shift = cost.amin(dim=(1, 2), keepdim=True)
    scale = cost.std(dim=(1, 2), keepdim=True).clamp_min(torch.finfo(cost.dtype).tiny)
    c = (cost - shift) / scale
    log_a, log_b = a.log()[:, :, None], b.log()[:, None, :]
    f = torch.zeros_like(cost[:, :, 0])
    g = torch.zeros_like(cost[:, 0, :])

    def update(f, g, eps):
        f = -eps * torch.logsumexp((g[:, None, :] - c) / eps + log_b, dim=2)
        return f, -eps * torch.logsumexp((f[:, :, None] - c) / eps + log_a, dim=1)

    for eps in _epsilon_schedule(epsilon)[:-1]:
        for _ in range(20):
            f, g = update(f, g, eps)
    last_f, last_g = f, g  # the potentials at the previous check
    for step in range(1, max_iter + 1):
        f, g = update(f, g, epsilon)
        if step % _CHECK_EVERY == 0 or step == max_iter:
            row_error = (_plan(f, g, c, log_a, log_b, epsilon).sum(2) - a).abs().sum(1).max().item()
            potential_change = max(_centred_change(f, last_f), _centred_change(g, last_g)) / epsilon
            if row_error < tol and potential_change < potential_tol:
                break
            last_f, last_g = f, g
    else:
        warnings.warn(
            f"Sinkhorn did not converge in max_iter={max_iter} iterations at epsilon={epsilon} (row-marginal error "
            f"{row_error:.1e}, dual potentials still changing by {potential_change:.1e} epsilon per "
            f"{_CHECK_EVERY} iterations; tolerances {tol:.0e} and {potential_tol:.0e}). Raise `max_iter` or "
            "`epsilon`, or use solver='exact'.",
            stacklevel=5)
    plan = _plan(f, g, c, log_a, log_b, epsilon)
    return [plan], f * scale[:, :, 0], g * scale[:, 0, :]


def _epsilon_schedule(epsilon: float) -> list[float]:
    """1, 1/2, 1/4, ... down to `epsilon` (last): each stage warm-starts the next, so small epsilons stay fast."""
    schedule, eps = [], 1.0
    while eps > epsilon:
        schedule.append(eps)
        eps /= 2
    return schedule + [epsilon]


def _plan(f, g, c, log_a, log_b, eps):
    return torch.exp((f[:, :, None] + g[:, None, :] - c) / eps + log_a + log_b)


def _centred_change(new: torch.Tensor, old: torch.Tensor) -> float:
    """Largest change of the potentials up to each clip's constant shift (which changes neither plan nor loss)."""
    change = new - old
    return (change - change.mean(1, keepdim=True)).abs().max().item()
