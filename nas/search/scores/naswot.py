"""NASWOT (Mellor et al., "Neural Architecture Search without Training", ICML 2021): a training-free proxy.

At initialisation, each image of a batch switches every ReLU-like unit on or off; two images that
networks separate well have different binary codes. The score is log|K| with
K[i, j] = number of units on which images i and j agree. We compute it on real photos (bundled
with scikit-image) at a quarter of the architecture's resolution, with a centre tap: it ranks
architectures without training, and it is a proxy, not an accuracy.
"""

from __future__ import annotations

from functools import cached_property

import torch
from torch import nn

from distill.data.photos import photo_batch
from search_spaces.modules.head import POSITIVE
from search_spaces.space import ArchConfig
from search_spaces.students.student import SIZE_MULTIPLE, TraceNetStudent

RELU_LIKE = (nn.ReLU, nn.ReLU6, nn.Hardswish, nn.SiLU, nn.GELU)  # "on" means output > 0 for all of them
DOWNSCALE = 4


class NaswotScorer:
    name = "naswot"
    kind = "proxy"
    description = "NASWOT training-free proxy (Mellor et al. 2021) on scikit-image photos; a proxy, not accuracy"

    def __init__(self, seed: int = 0, crops_per_photo: int = 2):
        self.seed = seed
        self.crops_per_photo = crops_per_photo

    def recipe(self) -> dict:
        return {"name": self.name, "seed": self.seed, "crops_per_photo": self.crops_per_photo}

    @cached_property
    def _batches(self) -> dict[tuple[int, int], torch.Tensor]:
        return {}

    def _images(self, arch: ArchConfig) -> torch.Tensor:
        w = max(SIZE_MULTIPLE, arch.resolution // DOWNSCALE // SIZE_MULTIPLE * SIZE_MULTIPLE)
        h = max(SIZE_MULTIPLE, round(0.75 * w / SIZE_MULTIPLE) * SIZE_MULTIPLE)
        if (h, w) not in self._batches:
            self._batches[(h, w)] = photo_batch((h, w), self.crops_per_photo, self.seed)
        return self._batches[(h, w)]

    def scores(self, archs: list[ArchConfig]) -> list[float]:
        return [self.score(arch) for arch in archs]

    @torch.no_grad()
    def score(self, arch: ArchConfig) -> float:
        images = self._images(arch)
        n, _, h, w = images.shape
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)  # the same initialisation wherever (and whenever) it runs
            model = TraceNetStudent(arch).train()  # batch statistics, as at initialisation
        agreement = torch.zeros(n, n, dtype=torch.float64)

        def accumulate(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
            codes = (out.reshape(n, -1) > 0).double()
            agreement.add_(codes @ codes.T + (1 - codes) @ (1 - codes).T)

        hooks = [m.register_forward_hook(accumulate) for m in model.modules() if isinstance(m, RELU_LIKE)]
        try:
            clicks = torch.tensor([[[w / 2, h / 2, POSITIVE]]]).expand(n, 1, 3)
            model(images, clicks)
        finally:
            for hook in hooks:
                hook.remove()
        return float(torch.linalg.slogdet(agreement).logabsdet)
