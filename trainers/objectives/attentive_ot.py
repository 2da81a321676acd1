"""DALI_OT^Att: optimal transport with learned marginals (docs/method.md, section 3).

    alpha = softmax( mean_features( MHA(q = W^a_q x, k = W^i_k y, v = W^i_v y) ) / T )   over the N audio tokens
    beta  = softmax( mean_features( MHA(q = W^i_q y, k = W^a_k x, v = W^a_v x) ) / T )   over the M image tokens
    (reference code: alpha <- (1 - mix) alpha + mix / N, beta likewise, mix = 1/2)

    scorers minimise  OT(x, y; alpha, beta) - lambda (H(alpha) + H(beta)),   H(p) = -sum p log p

so visible-but-silent objects and off-screen sounds can carry little mass; lambda follows `lambda_schedule`.
"""

import torch
from torch import nn

__all__ = ["AttentiveMarginals", "entropy", "lambda_schedule"]


class AttentiveMarginals(nn.Module):
    """The two cross-attention scorers that give the token weights (alpha, beta).

    `audio_scorer` gives the audio token weights (alpha), `image_scorer` the image token weights (beta); `a_q` ...
    `i_v` are the query / key / value pre-projections of each modality. The authors' checkpoint has the same modules
    with the two scorer names swapped (their `image_scorer` gives alpha): `dali_hf.convert` renames them.
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
        """Token weights for audio tokens `x` [B, N, D] and image tokens `y` [B, M, D]: ([B, N], [B, M])."""
        audio_scores, _ = self.audio_scorer(self.a_q(x), self.i_k(y), self.i_v(y), need_weights=False)
        image_scores, _ = self.image_scorer(self.i_q(y), self.a_k(x), self.a_v(x), need_weights=False)
        return self._weights(audio_scores), self._weights(image_scores)

    def _weights(self, scores: torch.Tensor) -> torch.Tensor:
        weights = torch.softmax(scores.mean(-1) / self.temperature, dim=-1)
        return (1 - self.uniform_mix) * weights + self.uniform_mix / weights.shape[-1]


def entropy(p: torch.Tensor) -> torch.Tensor:
    """Shannon entropy of each row of `p` [B, K]: [B]."""
    return -(p * p.clamp_min(torch.finfo(p.dtype).tiny).log()).sum(-1)


def lambda_schedule(
    epoch: int, values: tuple[float, ...] = (500.0, 400.0, 300.0, 200.0), final: float = 100.0,
    uniform_epochs: int = 1,
) -> float | None:
    """Entropy weight for 1-based `epoch`: None (uniform weights, scorers idle) for the first `uniform_epochs`,
    then `values` one epoch each, then `final`. Defaults are the paper's: uniform, 500, 400, 300, 200, then 100."""
    if epoch < 1:
        raise ValueError(f"epochs are counted from 1, got {epoch}")
    if epoch <= uniform_epochs:
        return None
    index = epoch - uniform_epochs - 1
    return values[index] if index < len(values) else final
