"""Evaluation outputs: per-image CSV, summary JSON and a plot, written atomically."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from nas.evaluation.noc import NocResult
from nas.evaluation.tracenet import DEPTH_BINS, TapResult
from search_spaces.common.files import atomic_write


def _text(path: Path, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text.encode()))


def write_report(out: Path, result: NocResult | TapResult, summary: dict) -> dict[str, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = io.StringIO()
    writer = csv.writer(rows)
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    if isinstance(result, NocResult):
        noc85, noc90 = result.noc(0.85), result.noc(0.90)
        writer.writerow(["image", "noc85", "noc90", *[f"iou@{k + 1}" for k in range(result.ious.shape[1])]])
        for name, a, b, ious in zip(result.names, noc85, noc90, result.ious, strict=True):
            writer.writerow([name, int(a), int(b), *[f"{v:.4f}" for v in ious]])
        clicks = range(1, result.ious.shape[1] + 1)
        ax.plot(clicks, summary["miou_at_k"], "o-", ms=3)
        ax.set_xlabel("clicks")
        ax.set_ylabel("mIoU")
        ax.set_title(f"NoC@85 {summary['noc85']:.2f}, NoC@90 {summary['noc90']:.2f}")
        plot = out / "miou_vs_clicks.png"
    else:
        writer.writerow(["instance", "miou_t", "tap_accuracy"])
        for name, ious in zip(result.names, result.ious, strict=True):
            writer.writerow([name, f"{ious.mean():.4f}", f"{(ious >= summary['mta_iou_threshold']).mean():.4f}"])
        edges = summary["robustness"]["depth_bin_edges"]
        centres = [(edges[b] + edges[b + 1]) / 2 for b in range(DEPTH_BINS)]
        points = [(c, v) for c, v in zip(centres, summary["robustness"]["miou"], strict=True) if v is not None]
        ax.plot([c for c, _ in points], [v for _, v in points], "o-")
        ax.set_xlabel("tap depth (0 = instance boundary, 1 = most interior point)")
        ax.set_ylabel("mean IoU of one tap")
        ax.set_title(f"mIoU-T {summary['miou_t']:.3f}, mTA {summary['mta']:.3f}")
        plot = out / "robustness.png"
    ax.grid(alpha=0.3)
    fig.tight_layout()
    files = {"per_image": _text(out / "per_image.csv", rows.getvalue()),
             "summary": _text(out / "summary.json", json.dumps(summary, indent=1))}
    atomic_write(plot, lambda f: fig.savefig(f, format="png"))
    plt.close(fig)
    return files | {"plot": plot}
