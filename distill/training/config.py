"""Experiment configs: YAML (safe loader) -> nested frozen dataclasses, validated on load.

An unknown key or a value of the wrong type is a `ConfigError` that names the key by its dotted
path (`train.lr`); `--set train.lr=3e-4` overrides a key, its value parsed as YAML.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import torch

from distill.data.prompts import TapMix
from search_spaces.common.errors import TraceNASError
from search_spaces.common.files import read_text
from search_spaces.common.limits import MAX_BATCH_SIZE, parse_yaml
from search_spaces.space import UnknownSpaceError, get_space

AMP_MODES = ("auto", "bf16", "fp16", "none")


class ConfigError(TraceNASError, ValueError):
    """A malformed config file, an unknown key or a value of the wrong type."""


@dataclass(frozen=True)
class StudentConfig:
    space: str = "tracenet_tiny"
    arch: str = "smallest"  # smallest | largest | sample:SEED | path to an arch / best_arch.json file
    init: str | None = None  # a student checkpoint to start from
    # ImageNet weights for the backbone: for fixed:NAME, `timm` (timm's hub) or a timm weights file; for
    # tracenet_mbv3, an Once-for-All MobileNetV3 supernet file or OFA model-zoo name (search_spaces.students.pretrained)
    pretrained: str | None = None


@dataclass(frozen=True)
class DataConfig:
    train: str = "synthetic:64:96"  # grabcut:PATH | davis:PATH | sa1b:PATH | coco:... | synthetic:N[:SIZE]
    val: str | None = None
    limit: int | None = None  # at most this many training samples
    workers: int = 2  # DataLoader worker processes that read, decode and resize (0: in the training process)
    instances_per_image: int = 1  # instances a step takes from one read of an image (SA-1B holds many)


@dataclass(frozen=True)
class PromptConfig:
    tap_mix: TapMix = field(default_factory=TapMix)  # first-tap rules, validated by TapMix itself
    max_rounds: int = 2  # corrective rounds per step, drawn uniformly in 0..max_rounds
    click_rule: str = "center"  # center (RITM) | uniform (EdgeSAM)
    hard_mask_weight: float = 0.0  # TinySAM's hard mask weighting strength (0: off)


@dataclass(frozen=True)
class LossConfig:
    bce: float = 1.0
    dice: float = 1.0
    focal: float = 0.0
    iou: float = 1.0
    temperature: float = 1.0
    focal_gamma: float = 2.0
    feature: float = 0.0  # feature distillation: teacher image embedding -> student P3 through a 1x1 adapter
    # (the engine adds the feature term: it needs the student's features)


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 100
    batch_size: int = 4
    lr: float = 1e-3
    weight_decay: float = 0.05
    opt: str = "adamw"  # any timm optimizer name
    sched: str = "cosine"  # any timm scheduler name
    warmup_steps: int = 0
    accumulate: int = 1  # gradient accumulation steps
    ema_decay: float = 0.0  # 0: no EMA
    amp: str = "auto"  # auto (bf16 or fp16 on CUDA, off on CPU) | bf16 | fp16 (CUDA, with a grad scaler) | none
    compile: bool = False  # torch.compile the model
    seed: int = 0
    checkpoint_every: int = 50
    log_every: int = 10
    image_every: int = 50
    device: str = "auto"


@dataclass(frozen=True)
class SupernetConfig:
    random_subnets: int = 2  # sandwich rule: largest + smallest + this many random subnets per step


@dataclass(frozen=True)
class ExperimentConfig:
    student: StudentConfig = field(default_factory=StudentConfig)
    teacher: str = "gt"
    teacher_cache: str | None = None  # directory shared across runs; default RUN_DIR/teacher_cache
    data: DataConfig = field(default_factory=DataConfig)
    prompts: PromptConfig = field(default_factory=PromptConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    supernet: SupernetConfig = field(default_factory=SupernetConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ExperimentConfig:
        config = _build(cls, data)
        _check_values(config)
        return config


def _convert(value: object, hint: object, path: str) -> object:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        hint = next(h for h in options if h is not type(None))
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, path)
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):  # YAML 1.1 reads 3e-4 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if isinstance(value, hint) and not (hint is int and isinstance(value, bool)):
        return value
    raise ConfigError(f"{path}: expected {getattr(hint, '__name__', hint)}, got {value!r}")


def _build(cls: type, data: object, path: str = "") -> object:
    if not isinstance(data, dict):
        raise ConfigError(f"{path or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in data if k not in names]
    if unknown:
        where = f"{path}." if path else ""
        raise ConfigError(f"unknown key '{where}{unknown[0]}'; allowed: {', '.join(names)}")
    values = {k: _convert(v, hints[k], f"{path}.{k}" if path else k) for k, v in data.items()}
    try:
        return cls(**values)
    except ValueError as err:  # a dataclass that validates its own values (e.g. TapMix)
        raise ConfigError(f"{path or 'config'}: {err}") from None


def apply_override(data: dict, assignment: str) -> dict:
    """`a.b=value` set into a nested dict (value parsed as YAML)."""
    key, sep, text = assignment.partition("=")
    if not sep or not key:
        raise ConfigError(f"--set {assignment!r}: expected KEY=VALUE, e.g. train.lr=3e-4")
    node = data
    *parents, leaf = key.split(".")
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {assignment!r}: '{part}' is not a section")
    node[leaf] = parse_yaml(text, f"--set {assignment!r}", ConfigError)
    return data


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> ExperimentConfig:
    data: object = {}
    if path is not None:
        data = parse_yaml(read_text(path, "config file"), str(path), ConfigError)
        if data is None:
            raise ConfigError(f"{path}: the config file is empty")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the config must be a mapping of sections")
    for assignment in overrides:
        apply_override(data, assignment)
    try:
        return ExperimentConfig.from_dict(data)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}" if path else str(err)) from None


def _check_values(config: ExperimentConfig) -> None:
    if config.prompts.click_rule not in ("center", "uniform"):
        raise ConfigError(f"prompts.click_rule: expected center or uniform, got {config.prompts.click_rule!r}")
    for name in ("steps", "batch_size", "accumulate", "checkpoint_every", "log_every", "image_every"):
        if getattr(config.train, name) < 1:
            raise ConfigError(f"train.{name}: must be at least 1")
    if config.prompts.max_rounds < 0 or config.loss.temperature <= 0:
        raise ConfigError("prompts.max_rounds must be >= 0 and loss.temperature > 0")
    if config.train.batch_size > MAX_BATCH_SIZE:
        raise ConfigError(f"train.batch_size: {config.train.batch_size} is more than {MAX_BATCH_SIZE}")
    try:
        get_space(config.student.space)
    except UnknownSpaceError as err:
        raise ConfigError(f"student.space: {err}") from None
    _check_device(config.train.device)
    if config.student.init and config.student.pretrained:
        raise ConfigError("student.init and student.pretrained both set the starting weights; keep one")
    if config.train.amp not in AMP_MODES:
        raise ConfigError(f"train.amp: expected one of {', '.join(AMP_MODES)}, got {config.train.amp!r}")
    if config.data.workers < 0 or config.data.instances_per_image < 1:
        raise ConfigError("data.workers must be >= 0 and data.instances_per_image >= 1")


def resolve_device(device: str) -> torch.device:
    """The device `train.device` names (`auto`: CUDA when there is one)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of `train.amp` on `device` (None: float32)."""
    if amp == "none" or (amp == "auto" and device.type != "cuda"):
        return None
    if amp == "fp16":
        if device.type != "cuda":
            raise ConfigError(f"train.amp=fp16 needs a CUDA device (train.device is {device}); use bf16 or none")
        return torch.float16
    if amp == "auto" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


def _check_device(device: str) -> None:
    """`auto`, `cpu`, `cuda`, `cuda:N` or `mps`, and present on this machine."""
    if device == "auto":
        return
    try:
        parsed = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"train.device: {device!r} is not a device (auto, cpu, cuda, cuda:N, mps)") from None
    if parsed.type == "cuda":
        count = torch.cuda.device_count()
        if (parsed.index or 0) >= count:
            raise ConfigError(f"train.device={device}: this machine has {count} CUDA device(s)")
    elif parsed.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"train.device={device}: MPS is not available on this machine")
    elif parsed.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"train.device: {device!r} is not supported (auto, cpu, cuda, cuda:N, mps)")
