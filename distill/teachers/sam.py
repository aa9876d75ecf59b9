"""SAM (segment-anything) as the teacher: the ViT image encoder runs once per image, the prompt
encoder and mask decoder once per click set. Checkpoints are read with `weights_only=True` and must
match the chosen model type exactly."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import numpy as np
import torch

from distill.data.datasets import Sample
from distill.data.prompts import Click
from distill.teachers.base import TeacherError, load_weights
from distill.teachers.student import file_digest

MODEL_TYPES = ("vit_b", "vit_l", "vit_h", "tiny")


def build_tiny_sam() -> torch.nn.Module:
    """The real SAM classes at a miniature size (64 px input, 1 block, 32-dim): random weights for tests."""
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    dim, size, patch = 32, 64, 16
    return Sam(
        image_encoder=ImageEncoderViT(img_size=size, patch_size=patch, embed_dim=dim, depth=1, num_heads=2,
                                      mlp_ratio=2, out_chans=dim, qkv_bias=True, use_rel_pos=True, window_size=0,
                                      norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), global_attn_indexes=(0,)),
        prompt_encoder=PromptEncoder(embed_dim=dim, image_embedding_size=(size // patch, size // patch),
                                     input_image_size=(size, size), mask_in_chans=4),
        mask_decoder=MaskDecoder(num_multimask_outputs=3, transformer=TwoWayTransformer(
            depth=1, embedding_dim=dim, mlp_dim=64, num_heads=2), transformer_dim=dim, iou_head_depth=1,
            iou_head_hidden_dim=16),
        pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375]).eval()


@dataclass
class SamEncoded:
    features: torch.Tensor
    original_size: tuple[int, int]
    input_size: tuple[int, int]


class SamTeacher:
    def __init__(self, sam: torch.nn.Module, teacher_id: str):
        from segment_anything import SamPredictor

        self.predictor = SamPredictor(sam.eval())
        self.id = teacher_id

    @classmethod
    def build(cls, model_type: str, checkpoint: str | None) -> SamTeacher:
        if model_type not in MODEL_TYPES:
            raise TeacherError(f"unknown SAM model type {model_type!r}; choose from {', '.join(MODEL_TYPES)}")
        try:
            from segment_anything import sam_model_registry
        except ImportError:
            raise TeacherError("the SAM teacher needs segment-anything: pip install 'tracenas[sam]'") from None
        if model_type == "tiny":
            if checkpoint:
                raise TeacherError("sam:tiny is a random miniature for tests; it takes no checkpoint")
            torch.manual_seed(0)
            return cls(build_tiny_sam(), "sam:tiny")
        if not checkpoint:
            raise TeacherError(f"sam:{model_type} needs a checkpoint path (no weights can be downloaded)")
        sam = sam_model_registry[model_type](checkpoint=None)
        load_weights(sam, checkpoint, f"SAM {model_type}")
        return cls(sam, f"sam:{model_type}:{file_digest(checkpoint)}")

    def to(self, device: str | torch.device) -> SamTeacher:
        self.predictor.model.to(device)
        return self

    @torch.inference_mode()
    def encode(self, sample: Sample) -> SamEncoded:
        self.predictor.set_image(sample.image)
        return SamEncoded(self.predictor.features, self.predictor.original_size, self.predictor.input_size)

    def embedding(self, encoded: SamEncoded) -> torch.Tensor:
        """The ViT features (C, h, w) over the image (SAM pads it to a square: drop the padding)."""
        stride = self.predictor.model.image_encoder.img_size // encoded.features.shape[-1]
        h, w = encoded.input_size
        return encoded.features[0, :, :-(-h // stride), :-(-w // stride)]

    def save_encoded(self, encoded: SamEncoded) -> dict:
        """The ViT features (float16) and sizes, for the on-disk embedding cache."""
        return {"features": encoded.features.half().cpu(), "original_size": list(encoded.original_size),
                "input_size": list(encoded.input_size)}

    def load_encoded(self, saved: dict) -> SamEncoded:
        return SamEncoded(saved["features"].float().to(self.predictor.device), tuple(saved["original_size"]),
                          tuple(saved["input_size"]))

    @torch.inference_mode()
    def predict(self, encoded: SamEncoded, clicks: list[Click]) -> np.ndarray:
        p = self.predictor
        p.features, p.original_size, p.input_size, p.is_image_set = (
            encoded.features, encoded.original_size, encoded.input_size, True)
        coords = np.array([[x, y] for x, y, _ in clicks], dtype=np.float32)
        labels = np.array([int(positive) for _, _, positive in clicks])
        _, _, low_res = p.predict(coords, labels, multimask_output=False, return_logits=True)
        # low-res logits cover the padded square input; keep the part that holds the image
        h, w = encoded.input_size
        side = low_res.shape[-1]
        scale = side / p.model.image_encoder.img_size
        return low_res[0, :max(1, round(h * scale)), :max(1, round(w * scale))].astype(np.float32)
