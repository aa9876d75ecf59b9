"""Accuracy predictor: an MLP from an architecture's one-hot genome encoding to a supernet score (Once-for-All's recipe,
3 hidden layers of 400 by default), fitted on (arch, score) pairs gathered with the supernet scorer.

Pairs live in a JSON-lines file, one `{"arch": {...}, "score": float}` per line (`nas predictor
collect` writes it). `fit_predictor` holds out a random share of the pairs and reports the rank
correlation (Spearman) of its predictions there; the saved file carries that report.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr
from torch import nn

from search_spaces.common.errors import InvalidValueError
from search_spaces.common.files import atomic_write, read_text
from search_spaces.common.limits import parse_json
from search_spaces.space import ArchConfig, ArchConfigError, genome_space
from search_spaces.students.checkpoint import CheckpointError, read_payload

FORMAT = "tracenas-predictor"
VERSION = 1


class AccuracyPredictor(nn.Module):
    def __init__(self, space: str, hidden: tuple[int, ...] = (400, 400, 400)):
        super().__init__()
        self.space, self.hidden = space, tuple(hidden)
        widths = [genome_space(space).encoding_length, *self.hidden]
        layers: list[nn.Module] = []
        for a, b in zip(widths, widths[1:], strict=False):
            layers += [nn.Linear(a, b), nn.ReLU()]
        self.mlp = nn.Sequential(*layers, nn.Linear(widths[-1], 1))
        self.register_buffer("target_mean", torch.zeros(()))
        self.register_buffer("target_std", torch.ones(()))

    def forward(self, encodings: torch.Tensor) -> torch.Tensor:
        return self.mlp(encodings).squeeze(-1) * self.target_std + self.target_mean

    @torch.no_grad()
    def predict(self, archs: list[ArchConfig]) -> np.ndarray:
        wrong = sorted({a.space for a in archs} - {self.space})
        if wrong:
            raise InvalidValueError(f"predictor for space '{self.space}' cannot score architectures of {wrong}")
        return self(torch.from_numpy(genome_space(self.space).features(archs))).numpy()

    @torch.no_grad()
    def predict_genomes(self, genomes: np.ndarray) -> np.ndarray:
        """Scores of a batch of genomes of the predictor's space (the search's vectorised path)."""
        return self(torch.from_numpy(genome_space(self.space).one_hot(genomes))).numpy()


@dataclass(frozen=True)
class FitReport:
    n_train: int
    n_heldout: int
    heldout_spearman: float
    heldout_mae: float
    epochs: int

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def read_pairs(path: str | Path) -> tuple[list[ArchConfig], np.ndarray]:
    archs, scores = [], []
    for number, line in enumerate(read_text(path, "pairs file").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = parse_json(line, f"{path}:{number}")
            archs.append(ArchConfig.from_dict(row["arch"]))
            scores.append(float(row["score"]))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError, ArchConfigError) as err:
            raise InvalidValueError(f"{path}:{number}: not an {{'arch', 'score'}} pair ({err})") from None
    if len({a.space for a in archs}) > 1:
        raise InvalidValueError(f"{path}: pairs from several spaces {sorted({a.space for a in archs})}")
    return archs, np.asarray(scores, dtype=np.float32)


def fit_predictor(archs: list[ArchConfig], scores: np.ndarray, hidden: tuple[int, ...] = (400, 400, 400),
                  heldout: float = 0.2, epochs: int = 500, lr: float = 1e-3, seed: int = 0
                  ) -> tuple[AccuracyPredictor, FitReport]:
    """Fit on a random (1 - heldout) share of the pairs; report Spearman and MAE on the rest."""
    n_test = int(round(len(archs) * heldout))
    if len(archs) - n_test < 4 or n_test < 3:
        raise InvalidValueError(f"{len(archs)} pairs are too few to fit and hold out {heldout:.0%} "
                                "(need >= 3 held out)")
    torch.manual_seed(seed)
    order = np.random.default_rng(seed).permutation(len(archs))
    x = torch.from_numpy(genome_space(archs[0].space).features(archs))
    y = torch.from_numpy(np.asarray(scores, dtype=np.float32))
    test, train = order[:n_test], order[n_test:]
    model = AccuracyPredictor(archs[0].space, hidden)
    model.target_mean.fill_(y[train].mean())
    model.target_std.fill_(y[train].std().clamp_min(1e-8))
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(epochs):  # full batch: pair sets are small (hundreds to thousands)
        optimizer.zero_grad()
        loss = (((model(x[train]) - y[train]) / model.target_std) ** 2).mean()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        predicted = model(x[test]).numpy()
    report = FitReport(len(train), n_test, float(spearmanr(predicted, y[test].numpy()).statistic),
                       float(np.abs(predicted - y[test].numpy()).mean()), epochs)
    return model, report


def save_predictor(model: AccuracyPredictor, path: str | Path, report: FitReport, source: str = "") -> Path:
    payload = {"format": FORMAT, "version": VERSION, "space": model.space, "hidden": list(model.hidden),
               "state_dict": model.state_dict(), "report": report.to_dict(), "source": source}
    return atomic_write(path, lambda f: torch.save(payload, f))


def load_predictor(path: str | Path) -> tuple[AccuracyPredictor, dict]:
    payload = read_payload(path, FORMAT, "predictor", version=VERSION)
    try:
        model = AccuracyPredictor(payload["space"], tuple(payload["hidden"]))
        model.load_state_dict(payload["state_dict"])
    except (KeyError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"{path}: weights do not match the predictor ({err})") from None
    return model.eval(), payload.get("report", {})


class PredictorScorer:
    name = "predictor"
    kind = "predictor"

    def __init__(self, path: str):
        self.path = str(Path(path).resolve())
        self.model, self.report = load_predictor(self.path)
        rho = self.report.get("heldout_spearman")
        self.description = (f"accuracy predictor {Path(path).name} (MLP {list(self.model.hidden)}, held-out "
                            f"Spearman {rho:.3f})" if rho is not None else f"accuracy predictor {Path(path).name}")

    @property
    def space(self) -> str:
        return self.model.space

    def recipe(self) -> dict:
        return {"name": self.name, "path": self.path}

    def scores_of_genomes(self, genomes: np.ndarray) -> np.ndarray:
        return self.model.predict_genomes(genomes).astype(float)

    def scores(self, archs: list[ArchConfig]) -> list[float]:
        return [float(v) for v in self.model.predict(archs)] if archs else []
