"""Result files of one searched target: best_arch.json, pareto.csv and pareto.png."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from search_spaces.common.files import atomic_write

if TYPE_CHECKING:
    from nas.search.algorithms import Candidate


def pareto_front(candidates: list[Candidate]) -> list[Candidate]:
    """Candidates no other one beats on both score (higher) and latency (lower), fastest first."""
    front: list[Candidate] = []
    for c in sorted(candidates, key=lambda c: (c.latency_ms, -c.score)):
        if not front or c.score > front[-1].score:
            front.append(c)
    return front


def _write_text(path: Path, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text.encode()))


def write_target_result(out: Path, summary: dict, cloud: np.ndarray, front: list[Candidate],
                        budget_ms: float, fixed: list = ()) -> dict[str, Path]:
    """`cloud`: (latency, score) of the evaluated feasible architectures; `fixed`: hand-designed backbones
    (`FixedResult`), drawn apart from the searched subnets."""
    out.mkdir(parents=True, exist_ok=True)
    rows = io.StringIO()
    writer = csv.writer(rows)
    writer.writerow(["rank", "score", "predicted_latency_ms", "arch"])
    for rank, c in enumerate(sorted(front, key=lambda c: (-c.score, c.latency_ms)), 1):
        writer.writerow([rank, f"{c.score:.6g}", f"{c.latency_ms:.6g}", c.arch.to_json()])
    files = {"best_arch": _write_text(out / "best_arch.json", json.dumps(summary, indent=1)),
             "pareto_csv": _write_text(out / "pareto.csv", rows.getvalue()),
             "pareto_png": out / "pareto.png"}
    _plot(files["pareto_png"], summary, cloud, front, budget_ms, fixed)
    return files


def _plot(path: Path, summary: dict, cloud: np.ndarray, front: list[Candidate], budget_ms: float,
          fixed: list) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    ax.scatter(cloud[:, 0], cloud[:, 1], s=12 if len(cloud) < 2000 else 3, c="0.7", label="evaluated",
               rasterized=True)
    ax.plot([c.latency_ms for c in front], [c.score for c in front], "o-", ms=4, c="tab:blue", label="Pareto front")
    ax.scatter([summary["predicted_latency_ms"]], [summary["score"]], s=80, marker="*", c="tab:red", zorder=3,
               label="best")
    drawn = [f for f in fixed if f.score is not None]
    if drawn:
        ax.scatter([f.latency_ms for f in drawn], [f.score for f in drawn], s=40, marker="^", c="black",
                   label="hand-designed backbones", zorder=3)
        for f in drawn:
            ax.annotate(f.backbone.removeprefix("fixed:"), (f.latency_ms, f.score), fontsize=6,
                        xytext=(3, 3), textcoords="offset points")
    ax.axvline(budget_ms, ls="--", c="tab:red", lw=1, label=f"budget {budget_ms:g} ms")
    ax.set_xlabel(f"predicted latency on {summary['target']} (ms, {summary['table']['provenance']} table)")
    ax.set_ylabel(f"{summary['score_name']} ({summary['score_kind']})")
    ax.set_title(f"{summary['algo']} search, {summary['evaluated']} architectures")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png"))
    plt.close(fig)
