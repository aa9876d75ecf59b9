"""Distillation losses on mask logits (B, 1, h, w): the student against the teacher's soft targets.

Teacher logits are softened by a temperature T (targets sigmoid(teacher / T), student logits also
divided by T, as in knowledge distillation). BCE and dice follow SAM/MobileSAM's mask losses,
focal (Lin et al.) is optional; the IoU head regresses the student's actual IoU with the teacher's
mask. Per-sample weights (e.g. `hard_mask_weights`) scale each sample's terms.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from distill.training.config import LossConfig


def mask_iou(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """(B,) IoU of the thresholded masks (1 when both are empty)."""
    s, t = student_logits.flatten(1) > 0, teacher_logits.flatten(1) > 0
    union = (s | t).sum(1)
    return torch.where(union > 0, (s & t).sum(1) / union.clamp_min(1), torch.ones_like(union, dtype=torch.float))


def feature_loss(student_features: torch.Tensor, teacher_embedding: torch.Tensor) -> torch.Tensor:
    """MSE between adapted student features (C, h, w) resized to the teacher's grid and its embedding (C, H, W)."""
    resized = F.interpolate(student_features[None].float(), size=teacher_embedding.shape[-2:], mode="bilinear",
                            align_corners=False)[0]
    return F.mse_loss(resized, teacher_embedding.float())


def distill_losses(student_logits: torch.Tensor, teacher_logits: torch.Tensor, iou_logit: torch.Tensor,
                   weights: LossConfig, sample_weights: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Each term (weighted mean over samples) and their weighted sum under 'total'."""
    t = weights.temperature
    target = torch.sigmoid(teacher_logits.float() / t).flatten(1)
    logits = (student_logits.float() / t).flatten(1)
    prob = torch.sigmoid(logits)
    per_sample = {
        "bce": F.binary_cross_entropy_with_logits(logits, target, reduction="none").mean(1),
        "dice": 1 - (2 * (prob * target).sum(1) + 1) / (prob.sum(1) + target.sum(1) + 1),
        "iou": (torch.sigmoid(iou_logit.float()) - mask_iou(student_logits, teacher_logits).detach()) ** 2,
    }
    if weights.focal:
        p_t = prob * target + (1 - prob) * (1 - target)
        bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        per_sample["focal"] = ((1 - p_t) ** weights.focal_gamma * bce).mean(1)
    w = sample_weights if sample_weights is not None else torch.ones_like(per_sample["bce"])
    losses = {name: (value * w).sum() / w.sum() for name, value in per_sample.items()}
    losses["total"] = sum(getattr(weights, name) * value for name, value in losses.items() if name != "feature")
    return losses
