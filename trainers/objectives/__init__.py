"""DALI's alignment objectives. Each takes audio tokens x [B, N, D] and image tokens y [B, M, D] and returns the
per-clip losses [B]; token counts may differ (512 audio vs 576 image tokens in the paper)."""

from .attentive_ot import AttentiveMarginals, entropy, lambda_schedule
from .contrastive import contrastive_loss
from .mmd import mmd_loss
from .optimal_transport import PendingOTLoss, ot_loss, pairwise_sq_distances, start_ot_loss

__all__ = [
    "AttentiveMarginals",
    "PendingOTLoss",
    "contrastive_loss",
    "entropy",
    "lambda_schedule",
    "mmd_loss",
    "ot_loss",
    "pairwise_sq_distances",
    "start_ot_loss",
]
