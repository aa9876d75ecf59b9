"""Training engine for `nas distill` (one student) and `nas train-supernet` (sandwich rule).

Each step takes its batch from DataLoader workers (`distill.training.loader`: images read, resized
and given a first tap per instance by `TapMix`), then runs 0..max_rounds corrective rounds
(TinySAM): the model predicts in eval mode without gradients, a click is put on its error against
the teacher (RITM or uniform rule, EdgeSAM's prompt-in-the-loop) and the teacher re-answers for the
longer click set. The model then learns the teacher's logits for the final click set. In supernet
mode the largest subnet learns from the teacher and the smallest and random subnets learn from the
largest's logits (in-place distillation, Once-for-All / BigNAS); all of a step's subnets see one
input resolution, drawn from the space.

Optimiser and cosine schedule come from timm's factories, EMA from timm (`ModelEmaV3`); autocast
follows `train.amp`. Checkpoints (`RUN_DIR/checkpoints/last.pt`) hold the model, optimiser, EMA,
torch random state and the step log; a step's batches and the loop's draws are functions of
(seed, rank, step), so a resumed run continues exactly where it stopped, and one resumed with more
steps re-plans its schedule over them.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import yaml
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from distill.data.datasets import Sample, labelled, load_dataset
from distill.data.prompts import Click, draw_rounds, error_click, hard_mask_weights, tap_interior
from distill.teachers import at_size, build_teacher
from distill.teachers.cache import TeacherCache
from distill.training.batch import Prepared, click_tensor, network_mask, on_grid, prepare, to_image
from distill.training.config import ConfigError, ExperimentConfig, StudentConfig, amp_dtype, resolve_device
from distill.training.loader import Batch, StepBatches, TrainItems, batch_loader
from distill.training.losses import distill_losses, feature_loss, mask_iou
from search_spaces.common.files import atomic_write, read_text
from search_spaces.space import ArchConfig
from search_spaces.students.checkpoint import load_student, read_payload, save_student, save_supernet
from search_spaces.students.pretrained import pretrained_student, pretrained_supernet
from search_spaces.students.segmenter import IMAGENET_MEAN, IMAGENET_STD
from search_spaces.students.student import MASK_STRIDE, TraceNetStudent
from search_spaces.students.supernet import TraceNetSupernet

STATE_FORMAT = "tracenas-distill-state"
CONFIG_FILE = "config.yaml"


def resolve_arch(student: StudentConfig) -> ArchConfig:
    """`smallest`, `largest`, `sample:SEED` or a JSON file (a bare arch or a search's best_arch.json)."""
    spec = student.arch
    if spec == "smallest":
        return ArchConfig.smallest(student.space)
    if spec == "largest":
        return ArchConfig.largest(student.space)
    if spec.startswith("sample:"):
        seed = spec.split(":", 1)[1]
        if not seed.isdigit():
            raise ConfigError(f"student.arch: {spec!r} must be sample:SEED with an integer seed")
        return ArchConfig.sample(int(seed), student.space)
    path = Path(spec)
    if not path.is_file():
        raise ConfigError(f"student.arch: {spec!r} is neither smallest, largest, sample:SEED nor an arch file")
    return ArchConfig.from_json(read_text(path, "architecture file"))


@dataclass
class StepLog:
    losses: dict[str, float]
    iou: float  # mean IoU of the (largest) model's masks with the teacher's, this step
    clicks: float  # mean clicks per sample


class Trainer:
    def __init__(self, config: ExperimentConfig, run_dir: str | Path, supernet: bool = False,
                 resume: bool = False, progress: bool = True, rank: int = 0, world_size: int = 1):
        """`rank`/`world_size`: this process's place in a data-parallel group (see `distill.training.parallel`);
        every rank draws its own batches, rank 0 writes the logs and checkpoints."""
        self.config, self.run_dir, self.supernet_mode = config, Path(run_dir), supernet
        self.rank, self.world_size, self.progress = rank, world_size, progress and rank == 0
        train = config.train
        self.device = resolve_device(train.device)
        torch.manual_seed(train.seed)  # the same initial weights on every rank
        self.rng = self._step_rng(0)
        self.tap_mix = config.prompts.tap_mix
        self.dataset = load_dataset(config.data.train, config.data.limit)  # file names; read by the workers
        if config.teacher == "gt" and not self.dataset.labelled:
            raise ConfigError(f"teacher gt needs labelled data; {config.data.train!r} is unlabeled (use a SAM "
                              "or TraceNAS teacher)")
        self.val = labelled(load_dataset(config.data.val), config.data.val) if config.data.val else []
        self.teacher = TeacherCache(config.teacher_cache or self.run_dir / "teacher_cache",
                                    build_teacher(config.teacher, self.device), self.device,
                                    amp_dtype(train.amp, self.device))
        pretrained = config.student.pretrained if not resume else None  # a resumed run loads its own state
        if supernet:
            self.model: torch.nn.Module = (pretrained_supernet(config.student.space, pretrained) if pretrained
                                           else TraceNetSupernet(config.student.space))
            self.arch = ArchConfig.largest(config.student.space)
        else:
            self.arch = resolve_arch(config.student)
            if config.student.init:
                self.model = load_student(config.student.init)
            else:
                self.model = pretrained_student(self.arch, pretrained) if pretrained else TraceNetStudent(self.arch)
            if self.model.arch != self.arch:
                raise ConfigError(f"student.init holds {self.model.arch}, not the configured student.arch")
        self.model.to(self.device)
        self.module = self.model  # the bare model: what is saved, extracted and evaluated
        if world_size > 1:
            from ray.train.torch import prepare_model

            # subnets of a supernet leave parameters unused; DDP must not wait for their gradients
            self.model = prepare_model(self.model, parallel_strategy_kwargs={"find_unused_parameters": supernet})
        self.adapter = self._feature_adapter() if config.loss.feature else None
        trained = self.module if self.adapter is None else torch.nn.ModuleList([self.module, self.adapter])
        self.optimizer = create_optimizer_v2(trained, train.opt, lr=train.lr, weight_decay=train.weight_decay)
        self.scheduler, _ = create_scheduler_v2(self.optimizer, train.sched, num_epochs=train.steps,
                                                warmup_epochs=train.warmup_steps)
        self.ema = ModelEmaV3(self.module, decay=train.ema_decay) if train.ema_decay and not supernet else None
        self.amp_dtype = amp_dtype(train.amp, self.device)
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None
        if train.compile:
            self.model = torch.compile(self.model)
        self.step = 0
        self.history: list[StepLog] = []
        if resume:
            self._load_state()
        self.writer = None
        if rank == 0:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write(self.run_dir / CONFIG_FILE, lambda f: f.write(yaml.safe_dump(config.to_dict()).encode()))
            self.writer = SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=self.step or None)

    def _feature_adapter(self) -> torch.nn.Module:
        """A 1x1 conv from the student's P3 to the teacher's embedding channels; P3 is read by a hook."""
        if self.supernet_mode or self.world_size > 1:
            raise ConfigError("loss.feature: feature distillation trains one student in one process "
                              "(not train-supernet, not --workers > 1)")
        try:
            first = next(iter(self.dataset), None)
            if first is None:
                raise ConfigError(f"dataset {self.config.data.train!r} has no readable sample")
            channels = self.teacher.embedding(first).shape[0]
        except ValueError as err:
            raise ConfigError(f"loss.feature: {err}") from None
        self.module.trunk.fpn.register_forward_hook(lambda module, args, out: setattr(self, "_p3", out[0]))
        return torch.nn.Conv2d(self.arch.fpn_channels, channels, 1).to(self.device)

    def _feature_loss(self, batch: list[Prepared]) -> torch.Tensor:
        losses = []
        for i, p in enumerate(batch):
            cells = (-(-p.hw[0] // MASK_STRIDE), -(-p.hw[1] // MASK_STRIDE))
            adapted = self.adapter(self._p3[i:i + 1, :, :cells[0], :cells[1]])[0]
            losses.append(feature_loss(adapted, self.teacher.embedding(p.sample).to(self.device)))
        return torch.stack(losses).mean()

    def _step_rng(self, step: int) -> np.random.Generator:
        """The training loop's draws of a step (subnets, click rounds, corrective clicks): a function of
        (seed, rank, step), like the step's batches (`StepBatches`), so resuming is exact."""
        return np.random.default_rng([self.config.train.seed, self.rank, step])

    def _loader(self) -> torch.utils.data.DataLoader:
        """The remaining micro-batches of the run, read by `data.workers` worker processes."""
        cfg = self.config
        resolutions = self.arch.spec.resolutions if self.supernet_mode else (self.arch.resolution,)
        batches = StepBatches(len(self.dataset), cfg.train.batch_size, cfg.train.accumulate, cfg.train.seed,
                              self.rank, self.world_size, cfg.train.steps, self.step, resolutions)
        items = TrainItems(self.dataset, self.tap_mix, cfg.data.instances_per_image)
        return batch_loader(items, batches, cfg.data.workers, pin_memory=self.device.type == "cuda")

    def _instance(self, sample: Sample) -> np.ndarray:
        """The mask first taps are drawn in: the label, or for an unlabeled image the teacher's mask for a
        random point (up to 5 tries; the whole image if the teacher finds nothing)."""
        if sample.mask is not None:
            return sample.mask
        h, w = sample.image.shape[:2]
        for _ in range(5):
            tap = (float(self.rng.integers(w)), float(self.rng.integers(h)), True)
            mask = at_size(self.teacher.logits(sample, [tap]), (h, w)) > 0
            if mask.any():
                return mask
        return np.ones((h, w), bool)

    # ---------------------------------------------------------------- one step
    def _forward(self, x: torch.Tensor, clicks: torch.Tensor, arch: ArchConfig):
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            if self.supernet_mode:
                return self.model(x, clicks, arch)
            return self.model(x, clicks)

    def _simulate_clicks(self, batch: list[Prepared], x: torch.Tensor, clicks: list[list[Click]],
                         teacher: list[np.ndarray]) -> None:
        """Corrective rounds: a click on each sample's error against the teacher, which re-answers."""
        rounds = draw_rounds(self.rng, self.config.prompts.max_rounds)
        if not rounds:
            return
        self.model.eval()
        with torch.no_grad():
            for _ in range(rounds):
                out = self._forward(x, click_tensor(clicks, [p.scale for p in batch]).to(self.device), self.arch)
                for i, p in enumerate(batch):
                    predicted = network_mask(out.logits[i, 0], p)
                    target = network_mask(on_grid(teacher[i], p, out.logits.shape[-1])[0], p)
                    click = error_click(predicted, target, self.rng, self.config.prompts.click_rule)
                    if click is not None:
                        clicks[i].append(to_image(click, p.scale, p.sample.image.shape[:2]))
                        teacher[i] = self.teacher.logits(p.sample, clicks[i])
        self.model.train()

    def _step_losses(self, loaded: Batch) -> tuple[torch.Tensor, StepLog]:
        cfg = self.config
        archs = [self.arch]
        batch = [item.prepared for item in loaded.items]
        resolution = loaded.images.shape[-1]
        if self.supernet_mode:
            spec = self.arch.spec
            archs += [ArchConfig.smallest(spec)] + [ArchConfig.sample(self.rng, spec)
                                                    for _ in range(cfg.supernet.random_subnets)]
        clicks = [[(*(item.tap or self.tap_mix.draw(self._instance(item.prepared.sample), self.rng)), True)]
                  for item in loaded.items]
        teacher = [self.teacher.logits(p.sample, c) for p, c in zip(batch, clicks, strict=True)]
        x = loaded.images.to(self.device, non_blocking=True)
        self._simulate_clicks(batch, x, clicks, teacher)
        grid = resolution // MASK_STRIDE
        targets = torch.stack([on_grid(t, p, grid) for t, p in zip(teacher, batch, strict=True)]).to(self.device)
        click_rows = click_tensor(clicks, [p.scale for p in batch]).to(self.device)
        out = self._forward(x, click_rows, archs[0])
        logits = out.logits.float()  # losses in float32 whatever the autocast dtype
        ious = mask_iou(logits.detach(), targets)
        sample_weights = None
        if cfg.prompts.hard_mask_weight:
            sample_weights = torch.as_tensor(hard_mask_weights(ious.cpu().numpy(), cfg.prompts.hard_mask_weight),
                                             dtype=torch.float32, device=self.device)
        losses = distill_losses(logits, targets, out.iou.float(), self.config.loss, sample_weights)
        if self.adapter is not None:
            losses["feature"] = self._feature_loss(batch)
            losses["total"] = losses["total"] + cfg.loss.feature * losses["feature"]
        total = losses["total"]
        for arch in archs[1:]:  # in-place distillation from the largest subnet
            sub = self._forward(x, click_rows, arch)
            total = total + distill_losses(sub.logits.float(), logits.detach(), sub.iou.float(),
                                           self.config.loss)["total"]
        if self.writer is not None and self.step % cfg.train.image_every == 0:
            self._log_image(batch[0], clicks[0], logits[0, 0].detach(), targets[0, 0])
        log = StepLog({k: float(v.detach()) for k, v in losses.items()}, float(ious.mean()),
                      float(np.mean([len(c) for c in clicks])))
        return total, log

    # ---------------------------------------------------------------- loop
    def fit(self) -> dict:
        cfg = self.config.train
        self.model.train()
        history = self.history  # a resumed run continues the log of the steps before
        validating = self.val and not self.supernet_mode and self.rank == 0
        self.val_before = self.validate(self.module) if validating and self.step == 0 else None
        bar = tqdm(total=cfg.steps, initial=self.step, desc="supernet" if self.supernet_mode else "distill",
                   unit="step", disable=not self.progress, dynamic_ncols=True)
        batches = iter(self._loader())
        while self.step < cfg.steps:
            self.rng = self._step_rng(self.step)
            self.teacher.begin_step()
            self.optimizer.zero_grad(set_to_none=True)
            logs = []
            for _ in range(cfg.accumulate):
                total, log = self._step_losses(next(batches))
                loss = total / cfg.accumulate
                (self.scaler.scale(loss) if self.scaler else loss).backward()
                logs.append(log)
            if self.scaler:
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                self.optimizer.step()
            self.step += 1
            self.scheduler.step(self.step)
            if self.ema is not None:
                self.ema.update(self.module, step=self.step)
            log = StepLog({k: float(np.mean([g.losses[k] for g in logs])) for k in logs[0].losses},
                          float(np.mean([g.iou for g in logs])), float(np.mean([g.clicks for g in logs])))
            history.append(log)
            bar.update()
            bar.set_postfix(loss=f"{log.losses['total']:.4f}", iou=f"{log.iou:.3f}")
            if self.writer is None:
                continue
            if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                for name, value in log.losses.items():
                    self.writer.add_scalar(f"loss/{name}", value, self.step)
                self.writer.add_scalar("iou_vs_teacher/train", log.iou, self.step)
                self.writer.add_scalar("clicks_per_sample", log.clicks, self.step)
                self.writer.add_scalar("lr", self.optimizer.param_groups[0]["lr"], self.step)
            if self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps:
                self._save_state()
        bar.close()
        replicas = self._replica_digests() if self.world_size > 1 else None
        if self.writer is None:
            return {"steps": self.step}
        summary = self._finish(history, replicas)
        self.writer.close()
        return summary

    def _replica_digests(self) -> list[str]:
        """Every rank's SHA-1 of its parameters (BN statistics are per rank), gathered on all ranks."""
        import torch.distributed as dist

        digest = hashlib.sha1(b"".join(p.detach().cpu().numpy().tobytes() for p in self.module.parameters()))
        gathered: list[str | None] = [None] * self.world_size
        dist.all_gather_object(gathered, digest.hexdigest())
        return gathered

    def _finish(self, history: list[StepLog], replicas: list[str] | None) -> dict:
        model = self.ema.module if self.ema is not None else self.module
        if self.supernet_mode:
            path = save_supernet(self.module, self.run_dir / "supernet.pt", steps=self.step)
        else:
            path = save_student(model, self.run_dir / "student.pt", steps=self.step)
        summary = {"steps": self.step, "checkpoint": str(path)}
        if history:
            k = max(1, len(history) // 5)
            summary |= {"loss_first": float(np.mean([h.losses["total"] for h in history[:k]])),
                        "loss_last": float(np.mean([h.losses["total"] for h in history[-k:]])),
                        "iou_first": float(np.mean([h.iou for h in history[:k]])),
                        "iou_last": float(np.mean([h.iou for h in history[-k:]]))}
        if self.val and not self.supernet_mode:
            if self.val_before is not None:
                summary["val_iou_before"] = self.val_before
            summary["val_iou_vs_teacher"] = self.validate(model)
            self.writer.add_scalar("iou_vs_teacher/val", summary["val_iou_vs_teacher"], self.step)
        if replicas is not None:  # data-parallel ranks must end with the same weights
            summary["replica_weights_sha1"] = replicas
        metrics = {f"final/{k}": v for k, v in summary.items() if isinstance(v, float)}
        if metrics:
            flat = {k: v for k, v in json.loads(json.dumps(self.config.to_dict())).get("train", {}).items()
                    if isinstance(v, (int, float, str, bool))}
            self.writer.add_hparams(flat | {"teacher": self.config.teacher, "arch": self.arch.to_json()}, metrics,
                                    run_name="hparams")
        atomic_write(self.run_dir / "summary.json", lambda f: f.write(json.dumps(summary, indent=1).encode()))
        return summary

    @torch.no_grad()
    def validate(self, model: torch.nn.Module) -> float:
        """Mean IoU with the teacher for one fixed interior tap per validation sample."""
        model.eval()
        ious = []
        for i, sample in enumerate(self.val):
            self.teacher.begin_step()  # one image at a time: its encoding is not kept past it
            p = prepare(sample, self.arch.resolution)
            tap = [(*tap_interior(sample.mask, np.random.default_rng([self.config.train.seed, i])), True)]
            out = model(p.image[None].to(self.device), click_tensor([tap], [p.scale]).to(self.device))
            target = on_grid(self.teacher.logits(sample, tap), p, out.logits.shape[-1]).to(self.device)
            ious.append(float(mask_iou(out.logits[:, 0:1], target[None])[0]))
        self.model.train()
        return float(np.mean(ious))

    # ---------------------------------------------------------------- images and state
    def _log_image(self, p: Prepared, clicks: list[Click], logits: torch.Tensor, target: torch.Tensor) -> None:
        """The input with the teacher's mask (green), the model's (red) and the clicks (white +, black -)."""
        nh, nw = p.hw
        mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
        image = (p.image[:, :nh, :nw].permute(1, 2, 0) * std + mean).clamp(0, 1).numpy()
        student, teacher = network_mask(logits.cpu(), p), network_mask(target.cpu(), p)
        image[..., 1] = np.where(teacher, 0.5 * image[..., 1] + 0.5, image[..., 1])
        image[..., 0] = np.where(student, 0.5 * image[..., 0] + 0.5, image[..., 0])
        for x, y, positive in clicks:
            cx, cy = round((x + 0.5) * p.scale - 0.5), round((y + 0.5) * p.scale - 0.5)
            image[max(0, cy - 2):cy + 3, max(0, cx - 2):cx + 3] = 1.0 if positive else 0.0
        self.writer.add_image("masks/teacher_green_model_red", image, self.step, dataformats="HWC")

    def _save_state(self) -> None:
        state = {"format": STATE_FORMAT, "version": 1, "step": self.step, "model": self.module.state_dict(),
                 "optimizer": self.optimizer.state_dict(),
                 "ema": self.ema.state_dict() if self.ema is not None else None,
                 "adapter": self.adapter.state_dict() if self.adapter is not None else None,
                 "torch_rng": torch.get_rng_state(), "history": [asdict(h) for h in self.history],
                 "config": self.config.to_dict()}
        atomic_write(self.run_dir / "checkpoints" / "last.pt", lambda f: torch.save(state, f))

    def _load_state(self) -> None:
        state = read_payload(self.run_dir / "checkpoints" / "last.pt", STATE_FORMAT, "training state")
        stored, current = state["config"], self.config.to_dict()
        stored["train"].pop("steps"), current["train"].pop("steps")  # a resumed run may train longer
        if stored != current:
            raise ConfigError(f"{self.run_dir}: the stored training state was made with another config")
        self.module.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        if self.adapter is not None:
            self.adapter.load_state_dict(state["adapter"])
        torch.set_rng_state(state["torch_rng"])
        self.step = int(state["step"])
        self.history = [StepLog(**h) for h in state.get("history", [])]
        # the schedule is a function of the step and the configured length: training longer re-plans it
        self.scheduler.step(self.step)
