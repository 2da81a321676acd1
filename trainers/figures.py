"""The token-distribution figure (like the paper's figure 4): a 2-D PCA of audio vs image tokens."""

import torch

__all__ = ["plot_token_distributions"]


def plot_token_distributions(audio_tokens: torch.Tensor, image_tokens: torch.Tensor, path, title: str = "",
                             max_points: int = 4000, seed: int = 0) -> None:
    """Save a PNG with two panels: per-clip mean tokens and individual tokens, projected on the first two principal
    axes of all tokens together. `audio_tokens` [B, N, D], `image_tokens` [B, M, D]."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    audio, image = audio_tokens.detach().float().cpu(), image_tokens.detach().float().cpu()
    everything = torch.cat([audio.flatten(0, 1), image.flatten(0, 1)])
    mean = everything.mean(0)
    _, _, v = torch.linalg.svd(everything - mean, full_matrices=False)
    axes = v[:2].T

    def project(points):
        return ((points - mean) @ axes).numpy()

    generator = torch.Generator().manual_seed(seed)

    def sample(tokens):
        flat = tokens.flatten(0, 1)
        keep = torch.randperm(len(flat), generator=generator)[: max_points // 2]
        return flat[keep]

    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4.5))
    for panel, (a, i), label in ((left, (audio.mean(1), image.mean(1)), "per-clip means"),
                                 (right, (sample(audio), sample(image)), "tokens")):
        pa, pi = project(a), project(i)
        panel.scatter(pi[:, 0], pi[:, 1], s=6, alpha=0.5, label="image tokens", color="tab:orange")
        panel.scatter(pa[:, 0], pa[:, 1], s=6, alpha=0.5, label="audio tokens", color="tab:blue")
        panel.set_title(label)
        panel.legend(loc="best")
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
