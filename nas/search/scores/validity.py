"""What the ranking signals are worth: their rank correlation with trained quality, as measured by
`benchmarks/score_validity.py` and shipped beside this module (`validity.json`), so that
`nas search` can say how far its score is to be trusted."""

from __future__ import annotations

import json
import math
from pathlib import Path

EVIDENCE_FILE = Path(__file__).with_name("validity.json")
BASELINE = "flops"


def load_evidence(path: Path = EVIDENCE_FILE) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def evidence_line(score_name: str, evidence: dict | None = None) -> str | None:
    """One line on how `score_name` ranked trained students against FLOPs, or None without evidence."""
    evidence = evidence if evidence is not None else load_evidence()
    if not evidence or score_name not in evidence["kendall_tau_miou_at_1"]:
        return None
    tau = evidence["kendall_tau_miou_at_1"]
    scale = evidence["scale"]
    n = scale["architectures"]
    chance = 2 * math.sqrt(2 * (2 * n + 5) / (9 * n * (n - 1)))  # two standard errors of tau without correlation
    if max(tau.values()) <= tau[BASELINE]:
        verdict = "no signal ranks trained students better than FLOPs at this scale"
    elif max(abs(t) for t in tau.values()) < chance:
        verdict = f"no signal is distinguishable from chance at this scale (|tau| < {chance:.2f})"
    else:
        verdict = f"the best signal is {max(tau, key=tau.get)}"
    return (f"Kendall tau with trained mIoU@1: {score_name} {tau[score_name]:+.2f}, FLOPs {tau[BASELINE]:+.2f}; "
            f"{verdict} ({scale['architectures']} {scale['space']} students, {scale['steps']} steps at "
            f"{scale['train_resolution']} px, {scale['machine']}, {evidence['date']}; benchmarks/score_validity.py)")
