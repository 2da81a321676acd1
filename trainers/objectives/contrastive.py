"""Contrastive baseline (CAV-MAE style InfoNCE on mean-pooled tokens).

    a_i = mean_n x_in / |.|,   v_j = mean_m y_jm / |.|,   s_ij = <a_i, v_j> / T
    loss_i = 1/2 [ -log softmax_j(s_ij)[i] - log softmax_j(s_ji)[i] ]

It aligns the per-clip means only and leaves a modality gap: the baseline DALI beats.

References
----------
Gong, Rouditchenko, Liu, Harwath, Karlinsky, Kuehne, Glass, "Contrastive Audio-Visual Masked Autoencoder",
ICLR 2023 (CAV-MAE's contrastive loss); van den Oord, Li, Vinyals, "Representation learning with contrastive
predictive coding", arXiv 1807.03748, 2018 (InfoNCE).
"""

import torch
import torch.nn.functional as F

__all__ = ["contrastive_loss"]


def contrastive_loss(x: torch.Tensor, y: torch.Tensor, temperature: float = 0.05) -> torch.Tensor:
    r"""Per-clip symmetric InfoNCE between the mean-pooled token sets, over the batch (the contrastive baseline).

    .. math::
        s_{ij} = \langle \hat a_i, \hat v_j \rangle / T,\qquad
        loss_i = \tfrac12 \left[ -\log \mathrm{softmax}_j(s_{ij})_i - \log \mathrm{softmax}_j(s_{ji})_i \right]

    with \hat a_i, \hat v_j the L2-normalised token means of clip i's audio and clip j's image.

    Parameters
    ----------
    x : torch.Tensor, shape (B, N, D), float
        Audio tokens; the other clips of the batch are the negatives.
    y : torch.Tensor, shape (B, M, D), float
        Image tokens, clip i matching x's clip i.
    temperature : float, default 0.05
        Softmax temperature T.

    Returns
    -------
    torch.Tensor, shape (B,)
        One loss per clip.

    Examples
    --------
    >>> import torch
    >>> x = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])  # two clips, one token each
    >>> matched = contrastive_loss(x, x)
    >>> swapped = contrastive_loss(x, x.flip(0))
    >>> bool((matched < swapped).all())
    True
    >>> matched.shape
    torch.Size([2])

    References
    ----------
    The contrastive baseline of Malard et al., NeurIPS 2024 (arXiv 2410.05997), after CAV-MAE (Gong et al.,
    ICLR 2023); docs/method.md, section 3.
    """
    a = F.normalize(x.mean(dim=1), dim=-1)
    v = F.normalize(y.mean(dim=1), dim=-1)
    logits = a @ v.T / temperature
    targets = torch.arange(len(a), device=a.device)
    return 0.5 * (F.cross_entropy(logits, targets, reduction="none")
                  + F.cross_entropy(logits.T, targets, reduction="none"))
