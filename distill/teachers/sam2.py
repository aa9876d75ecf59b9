"""SAM 2 (the `sam2` package, optional extra `tracenas[sam2]`) as the teacher, image mode.

`sam2:tiny|small|base_plus|large:CHECKPOINT` builds the SAM 2.1 Hiera model of that size and loads
the official checkpoint (`{"model": state_dict}`) with `weights_only=True`; a checkpoint of
another size fails with a clear message. `sam2:test` is a random Hiera-tiny at 256 px for tests.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from distill.data.datasets import Sample
from distill.data.prompts import Click
from distill.teachers.base import TeacherError, load_weights
from distill.teachers.student import file_digest

CONFIGS = {"tiny": "sam2.1_hiera_t", "small": "sam2.1_hiera_s", "base_plus": "sam2.1_hiera_b+",
           "large": "sam2.1_hiera_l"}
TEST_IMAGE_SIZE = 256


@dataclass
class Sam2Encoded:
    image_embed: torch.Tensor
    high_res_feats: list[torch.Tensor]
    orig_hw: tuple[int, int]


class Sam2Teacher:
    def __init__(self, model: torch.nn.Module, teacher_id: str):
        from sam2.sam2_image_predictor import SAM2ImagePredictor

        self.predictor = SAM2ImagePredictor(model.eval())
        size = model.image_size  # the predictor assumes 1024 px; follow the model's own size
        self.predictor._bb_feat_sizes = [(size // 4, size // 4), (size // 8, size // 8), (size // 16, size // 16)]
        self.id = teacher_id

    @classmethod
    def build(cls, size: str, checkpoint: str | None) -> Sam2Teacher:
        try:
            from sam2.build_sam import build_sam2
        except ImportError:
            raise TeacherError("the SAM 2 teacher needs the sam2 package: pip install 'tracenas[sam2]'") from None
        if size == "test":
            torch.manual_seed(0)
            model = build_sam2(f"configs/sam2.1/{CONFIGS['tiny']}.yaml", None, device="cpu",
                               hydra_overrides_extra=[f"++model.image_size={TEST_IMAGE_SIZE}"])
            return cls(model, "sam2:test")
        if size not in CONFIGS:
            raise TeacherError(f"unknown SAM 2 size {size!r}; choose from {', '.join(CONFIGS)} (or test)")
        if not checkpoint:
            raise TeacherError(f"sam2:{size} needs a checkpoint path (no weights can be downloaded)")
        model = build_sam2(f"configs/sam2.1/{CONFIGS[size]}.yaml", None, device="cpu")
        load_weights(model, checkpoint, f"SAM 2 {size}", key="model")  # official files: {"model": state_dict}
        return cls(model, f"sam2:{size}:{file_digest(checkpoint)}")

    def to(self, device: str | torch.device) -> Sam2Teacher:
        self.predictor.model.to(device)
        self.predictor.device = torch.device(device)
        return self

    @torch.inference_mode()
    def encode(self, sample: Sample) -> Sam2Encoded:
        self.predictor.set_image(sample.image)
        features = self.predictor._features
        return Sam2Encoded(features["image_embed"], list(features["high_res_feats"]), self.predictor._orig_hw[0])

    def embedding(self, encoded: Sam2Encoded) -> torch.Tensor:
        """The image embedding (C, h, w); SAM 2 resizes the image to a square, so it covers the image."""
        return encoded.image_embed[0]

    def save_encoded(self, encoded: Sam2Encoded) -> dict:
        return {"image_embed": encoded.image_embed.half().cpu(),
                "high_res_feats": [f.half().cpu() for f in encoded.high_res_feats], "orig_hw": list(encoded.orig_hw)}

    def load_encoded(self, saved: dict) -> Sam2Encoded:
        device = self.predictor.device
        return Sam2Encoded(saved["image_embed"].float().to(device),
                           [f.float().to(device) for f in saved["high_res_feats"]], tuple(saved["orig_hw"]))

    @torch.inference_mode()
    def predict(self, encoded: Sam2Encoded, clicks: list[Click]) -> np.ndarray:
        p = self.predictor
        p._features = {"image_embed": encoded.image_embed, "high_res_feats": encoded.high_res_feats}
        p._orig_hw, p._is_image_set = [tuple(encoded.orig_hw)], True
        coords = np.array([[x, y] for x, y, _ in clicks], dtype=np.float32)
        labels = np.array([int(positive) for _, _, positive in clicks])
        _, _, low_res = p.predict(coords, labels, multimask_output=False, return_logits=True)
        return np.asarray(low_res[0], dtype=np.float32)  # SAM 2 resizes to a square: low-res covers the image
