"""Hand-designed backbones next to the searched students (`nas search --include-fixed`).

A hand-designed backbone is used the way one usually ships it: at the largest resolution of its
space that fits the budget. Every listed backbone gets the head of the best searched student
(FPN, mask channels, dynamic layers; the closest allowed values), is priced on the same table at
the same latency setting and scored by the same scorer (proxies only: a supernet or predictor
covers its own space). A backbone the table cannot price (ops it never measured: profile them
with `nas profile --space fixed:NAME`) or that fits at no resolution is reported with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass

from nas.latency.table import MissingKeysError
from nas.search.scoring import LatencyModel, ScorePool
from search_spaces.space import FIXED_BACKBONES, ArchConfig, get_space
from search_spaces.students.fixed_report import describe_fixed


@dataclass
class FixedResult:
    backbone: str
    arch: ArchConfig | None = None
    latency_ms: float | None = None
    score: float | None = None
    reason: str | None = None  # why there is no feasible, scored candidate

    def to_dict(self) -> dict:
        return {"backbone": self.backbone, "arch": self.arch.to_dict() if self.arch else None,
                "predicted_latency_ms": self.latency_ms, "score": self.score, "reason": self.reason}


def _closest(value: int, choices: tuple[int, ...]) -> int:
    return min(choices, key=lambda c: (abs(c - value), c))


def fixed_candidate(name: str, head: ArchConfig, latency: LatencyModel, budget_ms: float) -> FixedResult:
    """The backbone at the largest resolution that fits, with the head choices closest to `head`'s."""
    spec = get_space(f"fixed:{name}")
    fastest = None
    for resolution in reversed(spec.resolutions):
        arch = ArchConfig(space=spec.name, resolution=resolution, width_mult=spec.width_mults[0], depths=(),
                          kernels=(), expands=(), se=(),
                          fpn_channels=_closest(head.fpn_channels, spec.fpn_channels),
                          mask_channels=_closest(head.mask_channels, spec.mask_channels),
                          dyn_layers=_closest(head.dyn_layers, spec.dyn_layers))
        try:
            ms = latency(arch)
        except MissingKeysError as err:
            return FixedResult(spec.name, reason=f"not priced: {err} (profile it: nas profile --space {spec.name})")
        if ms <= budget_ms:
            return FixedResult(spec.name, arch, ms)
        fastest = ms
    return FixedResult(spec.name, reason=f"over budget at every resolution (fastest {fastest:.3f} ms)")


def evaluate_fixed(head: ArchConfig, latency: LatencyModel, budget_ms: float, pool: ScorePool) -> list[FixedResult]:
    """One result per listed backbone (scored in one batch)."""
    results = []
    for name in FIXED_BACKBONES:
        status = describe_fixed(name)
        if not status["supported"]:
            results.append(FixedResult(f"fixed:{name}", reason=f"not supported: {status['reason']}"))
            continue
        results.append(fixed_candidate(name, head, latency, budget_ms))
    feasible = [r for r in results if r.arch is not None]
    if pool.scorer.kind != "proxy":
        for r in feasible:
            r.reason = "not scored: the scorer only covers the searched space"
    elif feasible:
        for r, score in zip(feasible, pool.scores([r.arch for r in feasible]), strict=True):
            r.score = score
    return results
