"""Contrastive baseline (CAV-MAE style InfoNCE on mean-pooled tokens).

    a_i = mean_n x_in / |.|,   v_j = mean_m y_jm / |.|,   s_ij = <a_i, v_j> / T
    loss_i = 1/2 [ -log softmax_j(s_ij)[i] - log softmax_j(s_ji)[i] ]

It aligns the per-clip means only and leaves a modality gap: the baseline DALI beats.
"""

import torch
import torch.nn.functional as F

__all__ = ["contrastive_loss"]


def contrastive_loss(x: torch.Tensor, y: torch.Tensor, temperature: float = 0.05) -> torch.Tensor:
    """Symmetric InfoNCE between mean-pooled `x` [B, N, D] and `y` [B, M, D] over the batch; returns [B]."""
    a = F.normalize(x.mean(dim=1), dim=-1)
    v = F.normalize(y.mean(dim=1), dim=-1)
    logits = a @ v.T / temperature
    targets = torch.arange(len(a), device=a.device)
    return 0.5 * (F.cross_entropy(logits, targets, reduction="none")
                  + F.cross_entropy(logits.T, targets, reduction="none"))
