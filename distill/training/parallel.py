"""Data-parallel training through Ray Train: N workers (CPU processes or GPUs) each run a `Trainer`
on its own batches; gradients are averaged by DDP, rank 0 writes the run directory."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from distill.training.config import ExperimentConfig
from search_spaces.common.resources import ray_session


def _worker_loop(loop_config: dict) -> None:
    import ray.train

    from distill.training.engine import Trainer

    context = ray.train.get_context()
    trainer = Trainer(ExperimentConfig.from_dict(loop_config["config"]), loop_config["run_dir"],
                      supernet=loop_config["supernet"], resume=loop_config["resume"],
                      progress=loop_config["progress"], rank=context.get_world_rank(),
                      world_size=context.get_world_size())
    trainer.fit()


def train_with_ray(config: ExperimentConfig, run_dir: str | Path, workers: int, supernet: bool = False,
                   resume: bool = False, progress: bool = True, ray_address: str | None = None) -> dict:
    """Run `Trainer.fit` on `workers` Ray Train workers; returns rank 0's summary."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    run_dir = Path(run_dir).resolve()
    with ray_session(ray_address, configure_logging=False, log_to_driver=progress):
        TorchTrainer(_worker_loop,
                     train_loop_config={"config": config.to_dict(), "run_dir": str(run_dir), "supernet": supernet,
                                        "resume": resume, "progress": progress},
                     scaling_config=ScalingConfig(num_workers=workers, use_gpu=torch.cuda.is_available()),
                     run_config=RunConfig(storage_path=str(run_dir / "ray"), name="train")).fit()
    return json.loads((run_dir / "summary.json").read_text())
