"""DALI_OT^Att: optimal transport with learned marginals (docs/method.md, section 3).

    alpha = softmax( mean_features( MHA(q = W^a_q x, k = W^i_k y, v = W^i_v y) ) / T )   over the N audio tokens
    beta  = softmax( mean_features( MHA(q = W^i_q y, k = W^a_k x, v = W^a_v x) ) / T )   over the M image tokens
    (reference code: alpha <- (1 - mix) alpha + mix / N, beta likewise, mix = 1/2)

    scorers minimise  OT(x, y; alpha, beta) - lambda (H(alpha) + H(beta)),   H(p) = -sum p log p

so visible-but-silent objects and off-screen sounds can carry little mass; lambda follows `lambda_schedule`.
The OT term is `ot_loss` with x_weights=alpha, y_weights=beta; its gradient for the weights is the centred dual
potentials.

References
----------
Malard, Olvera, Lathuiliere, Essid, "An Eye for an Ear: Zero-shot Audio Description Leveraging an Image Captioner
using Audiovisual Distribution Alignment", NeurIPS 2024 (arXiv 2410.05997): the DALI_OT^Att objective.
"""

import torch
from torch import nn

__all__ = ["AttentiveMarginals", "entropy", "lambda_schedule"]


class AttentiveMarginals(nn.Module):
    r"""The two cross-attention scorers that give the token weights (alpha, beta) of attentive OT.

    .. math::
        \alpha = (1 - \mu)\, \mathrm{softmax}_n\Big(\mathrm{mean}_d\, \mathrm{MHA}(W^a_q x, W^i_k y, W^i_v y) / T\Big)
                  + \mu / N

    and beta likewise with the roles of x and y swapped (mu = `uniform_mix`, T = `temperature`).

    `audio_scorer` gives the audio token weights (alpha), `image_scorer` the image token weights (beta); `a_q` ...
    `i_v` are the query / key / value pre-projections of each modality. The authors' checkpoint has the same modules
    with the two scorer names swapped (their `image_scorer` gives alpha): `dali_hf.convert` renames them.

    Parameters
    ----------
    dim : int
        Token width D, shared by both modalities (the aligned space).
    num_heads : int, default 8
        Attention heads of each scorer; must divide `dim`.
    temperature : float, default 20.0
        Softmax temperature T over the tokens.
    uniform_mix : float, default 0.5
        Share mu of the uniform weights mixed in, so every token keeps at least mu / N of the mass.

    Examples
    --------
    >>> import torch
    >>> _ = torch.manual_seed(0)
    >>> scorers = AttentiveMarginals(dim=8, num_heads=2)
    >>> x, y = torch.randn(2, 5, 8), torch.randn(2, 7, 8)  # 2 clips: 5 audio, 7 image tokens
    >>> alpha, beta = scorers(x, y)
    >>> alpha.shape, beta.shape
    (torch.Size([2, 5]), torch.Size([2, 7]))
    >>> torch.allclose(alpha.sum(-1), torch.ones(2)), bool((alpha >= 0.5 / 5).all())
    (True, True)

    References
    ----------
    The DALI_OT^Att objective of Malard et al., NeurIPS 2024 (arXiv 2410.05997); docs/method.md, section 3.
    """

    def __init__(self, dim: int, num_heads: int = 8, temperature: float = 20.0, uniform_mix: float = 0.5):
        super().__init__()
        self.temperature = temperature
        self.uniform_mix = uniform_mix
        for name in ("a_q", "a_k", "a_v", "i_q", "i_k", "i_v"):
            setattr(self, name, nn.Linear(dim, dim))
        self.audio_scorer = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.image_scorer = nn.MultiheadAttention(dim, num_heads, batch_first=True)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Token weights (alpha, beta), shapes (B, N) and (B, M), of audio tokens `x` (B, N, D) and image tokens
        `y` (B, M, D); each row is a distribution."""
        audio_scores, _ = self.audio_scorer(self.a_q(x), self.i_k(y), self.i_v(y), need_weights=False)
        image_scores, _ = self.image_scorer(self.i_q(y), self.a_k(x), self.a_v(x), need_weights=False)
        return self._weights(audio_scores), self._weights(image_scores)

    def _weights(self, scores: torch.Tensor) -> torch.Tensor:
        weights = torch.softmax(scores.mean(-1) / self.temperature, dim=-1)
        return (1 - self.uniform_mix) * weights + self.uniform_mix / weights.shape[-1]


def entropy(p: torch.Tensor) -> torch.Tensor:
    r"""Shannon entropy of each row of `p`, H(p) = -sum_k p_k log p_k (0 log 0 = 0).

    Parameters
    ----------
    p : torch.Tensor, shape (B, K), float
        Distributions, one per row.

    Returns
    -------
    torch.Tensor, shape (B,)
        The entropies, in nats.

    Examples
    --------
    >>> import torch
    >>> entropy(torch.tensor([[0.25, 0.25, 0.25, 0.25], [0.5, 0.5, 0.0, 0.0]]))  # log 4, log 2
    tensor([1.3863, 0.6931])
    """
    return -(p * p.clamp_min(torch.finfo(p.dtype).tiny).log()).sum(-1)


def lambda_schedule(
    epoch: int, values: tuple[float, ...] = (500.0, 400.0, 300.0, 200.0), final: float = 100.0,
    uniform_epochs: int = 1,
) -> float | None:
    """Entropy weight lambda of the scorers' loss OT - lambda (H(alpha) + H(beta)) for 1-based `epoch`.

    Parameters
    ----------
    epoch : int
        The epoch, counted from 1.
    values : tuple of float, default (500, 400, 300, 200)
        Lambda of the epochs after the uniform ones, one epoch each.
    final : float, default 100
        Lambda once `values` are used up.
    uniform_epochs : int, default 1
        Leading epochs with uniform weights (the scorers idle).

    Returns
    -------
    float or None
        Lambda, or None during the uniform epochs. The defaults are the paper's schedule: uniform, 500, 400, 300,
        200, then 100.

    Examples
    --------
    >>> [lambda_schedule(epoch) for epoch in range(1, 8)]
    [None, 500.0, 400.0, 300.0, 200.0, 100.0, 100.0]

    References
    ----------
    Malard et al., NeurIPS 2024 (arXiv 2410.05997), DALI_OT^Att; docs/method.md, section 3.
    """
    if epoch < 1:
        raise ValueError(f"epochs are counted from 1, got {epoch}")
    if epoch <= uniform_epochs:
        return None
    index = epoch - uniform_epochs - 1
    return values[index] if index < len(values) else final
