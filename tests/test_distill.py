import json
import math

import numpy as np
import pytest
import torch
import yaml

from distill.data.datasets import SyntheticShapes
from distill.teachers import TeacherError, build_teacher
from distill.teachers.cache import TeacherCache
from distill.teachers.sam import build_tiny_sam
from distill.training.config import ConfigError, LossConfig, load_config
from distill.training.engine import Trainer
from distill.training.losses import distill_losses
from experiments import shipped_configs
from nas.cli.main import main
from nas.search.scores.supernet import SupernetScorer
from search_spaces import ArchConfig, TraceNetSupernet
from search_spaces.students.checkpoint import load_student, load_supernet
from search_spaces.students.student import TraceNetStudent

FAST = ["train.steps=3", "train.batch_size=2", "data.train=synthetic:6:64", "student.space=tracenet_tiny",
        "student.arch=smallest", "train.checkpoint_every=2", "train.log_every=1", "train.image_every=1"]


def test_every_shipped_config_validates():
    assert {"smoke", "tracenet_iphone13", "supernet_tracenet_mbv3", "davis_ground_truth"} <= set(shipped_configs())
    for path in shipped_configs().values():
        load_config(path)


@pytest.mark.parametrize("overrides, needle", [
    (["train.lrr=1"], "unknown key 'train.lrr'"),
    (["train.steps=many"], "train.steps: expected int"),
    (["train.steps=true"], "train.steps: expected int"),
    (["prompts.tap_mix=3"], "prompts.tap_mix: expected a mapping"),
    (["prompts.click_rule=nearest"], "prompts.click_rule"),
    (["train.steps"], "expected KEY=VALUE"),
])
def test_config_errors_name_the_key(overrides, needle):
    with pytest.raises(ConfigError, match=needle):
        load_config(None, overrides)


def test_config_file_errors(tmp_path):
    (tmp_path / "bad.yaml").write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(tmp_path / "list.yaml")
    assert load_config(None, ["train.lr=3e-4"]).train.lr == pytest.approx(3e-4)  # YAML 1.1 reads 3e-4 as text


def test_losses_on_known_inputs():
    zeros = torch.zeros(2, 1, 4, 4)
    losses = distill_losses(zeros, zeros, torch.zeros(2), LossConfig(focal=1.0))
    n = 16
    assert float(losses["bce"]) == pytest.approx(math.log(2))
    assert float(losses["dice"]) == pytest.approx(1 - (0.5 * n + 1) / (n + 1))
    assert float(losses["focal"]) == pytest.approx(0.25 * math.log(2))  # (1 - p_t)^2 with p_t = 0.5
    assert float(losses["iou"]) == pytest.approx(0.25)  # predicted 0.5, both masks empty: IoU 1
    teacher = torch.full((1, 1, 4, 4), -20.0)
    teacher[..., :2, :] = 20.0
    perfect = distill_losses(teacher, teacher, torch.tensor([20.0]), LossConfig())
    assert float(perfect["dice"]) < 1e-3 and float(perfect["bce"]) < 1e-6 and float(perfect["iou"]) < 1e-6
    weighted = distill_losses(torch.cat([teacher, -teacher]), torch.cat([teacher, teacher]), torch.zeros(2),
                              LossConfig(), sample_weights=torch.tensor([0.0, 1.0]))
    assert float(weighted["bce"]) > 5  # only the wrong sample counts


def test_smoke_config_learns(tmp_path, capsys):
    assert main(["distill", "--config", "smoke", "--out", str(tmp_path / "run"), "--quiet", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["loss_last"] < summary["loss_first"] - 0.1
    assert summary["iou_last"] > summary["iou_first"]
    model = load_student(tmp_path / "run" / "student.pt")
    assert model.arch.space == "tracenet_tiny"
    assert (tmp_path / "run" / "config.yaml").is_file() and any((tmp_path / "run" / "tensorboard").iterdir())


def test_resume_gives_the_same_next_step_loss(interrupted_and_resumed):
    straight, resumed = interrupted_and_resumed(load_config(None, FAST))
    assert resumed.history[-1].losses == straight.history[-1].losses


def test_resume_with_more_steps_re_plans_the_schedule_and_trains(tmp_path):
    from timm.optim import create_optimizer_v2
    from timm.scheduler import create_scheduler_v2

    short = load_config(None, FAST + ["train.warmup_steps=0"])
    Trainer(short, tmp_path / "run", progress=False).fit()
    before = load_student(tmp_path / "run" / "student.pt").state_dict()
    longer = load_config(tmp_path / "run" / "config.yaml", ["train.steps=6"])
    resumed = Trainer(longer, tmp_path / "run", resume=True, progress=False)
    lrs = []
    step_losses = resumed._step_losses

    def recording(batch):
        lrs.append(resumed.optimizer.param_groups[0]["lr"])
        return step_losses(batch)

    resumed._step_losses = recording
    summary = resumed.fit()
    # the learning rate of steps 4..6 is the cosine schedule of a 6-step run at those steps, not 0
    reference = create_optimizer_v2(torch.nn.Linear(1, 1), longer.train.opt, lr=longer.train.lr)
    schedule, _ = create_scheduler_v2(reference, longer.train.sched, num_epochs=6, warmup_epochs=0)
    expected = []
    for step in (3, 4, 5):
        schedule.step(step)
        expected.append(reference.param_groups[0]["lr"])
    assert lrs == pytest.approx(expected) and min(lrs) > 0
    after = load_student(tmp_path / "run" / "student.pt").state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before if before[k].is_floating_point())
    # the summary covers the whole run: its first steps are the first run's
    assert summary["steps"] == 6 and len(resumed.history) == 6
    assert summary["loss_first"] == pytest.approx(np.mean([h.losses["total"] for h in resumed.history[:1]]))


def test_cli_errors_exit_2_and_write_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["distill", "--config", "smoke", "--set", "train.nope=1", "--out", str(out)]) == 2
    assert "unknown key 'train.nope'" in capsys.readouterr().err and not out.exists()
    assert main(["distill", "--config", "smoke", "--set", "teacher=sam:vit_q:x", "--out", str(out)]) == 2
    assert "unknown SAM model type" in capsys.readouterr().err and not out.exists()
    assert main(["distill", "--config", "no_such_config"]) == 2
    assert main(["distill", "--resume", str(tmp_path / "nothing")]) == 2


def test_tiny_sam_teacher_end_to_end_with_cache(tmp_path):
    teacher = build_teacher("sam:tiny")
    sample = next(iter(SyntheticShapes(1, 96)))
    cache = TeacherCache(tmp_path / "cache", teacher)
    clicks = [(40.0, 40.0, True), (5.0, 5.0, False)]
    first = cache.logits(sample, clicks)
    again = TeacherCache(tmp_path / "cache", build_teacher("sam:tiny")).logits(sample, clicks)
    assert first.shape == (16, 16) and np.array_equal(first, again)
    assert len(list((tmp_path / "cache").rglob("*.embedding.pt"))) == 1  # the ViT features, cached on disk
    config = load_config(None, FAST + ["teacher=sam:tiny", "train.steps=2"])
    summary = Trainer(config, tmp_path / "run", progress=False).fit()
    assert summary["steps"] == 2 and np.isfinite(summary["loss_last"])


def test_sam_checkpoint_of_another_model_type_fails_clearly(tmp_path):
    torch.save(build_tiny_sam().state_dict(), tmp_path / "tiny_sam.pth")
    with pytest.raises(TeacherError, match="does not match SAM vit_b"):
        build_teacher(f"sam:vit_b:{tmp_path / 'tiny_sam.pth'}")
    with pytest.raises(TeacherError, match="needs a checkpoint"):
        build_teacher("sam:vit_b")
    with pytest.raises(TeacherError, match="no such SAM vit_l checkpoint"):
        build_teacher(f"sam:vit_l:{tmp_path / 'missing.pth'}")


def test_train_supernet_sandwich_feeds_the_search_scorer(tmp_path, tiny_table_path, capsys):
    assert main(["train-supernet", "--config", "smoke", "--set", "train.steps=2", "--set", "train.batch_size=2",
                 "--set", "data.train=synthetic:4:64", "--out", str(tmp_path / "sn"), "--quiet"]) == 0
    supernet = load_supernet(tmp_path / "sn" / "supernet.pt")
    assert supernet.spec.name == "tracenet_tiny"
    seed = yaml.safe_load((tmp_path / "sn" / "config.yaml").read_text())["train"]["seed"]
    torch.manual_seed(seed)
    initial = TraceNetSupernet("tracenet_tiny")
    for arch in (ArchConfig.largest("tracenet_tiny"), ArchConfig.smallest("tracenet_tiny")):  # both ends trained
        trained, untrained = supernet.extract(arch).state_dict(), initial.extract(arch).state_dict()
        assert any(not torch.equal(trained[k], untrained[k]) for k in trained if trained[k].is_floating_point())
    assert main(["search", "--target", str(tiny_table_path), "--budget", "1.7", "--space", "tracenet_tiny",
                 "--population", "4", "--generations", "1", "--supernet", str(tmp_path / "sn" / "supernet.pt"),
                 "--data", "synthetic:2:64", "--out", str(tmp_path / "s"), "--quiet"]) == 0
    best = json.loads((tmp_path / "s" / "best_arch.json").read_text())
    assert best["score_kind"] == "supernet" and best["score_name"] == "supernet"
    scorer = SupernetScorer(str(tmp_path / "sn" / "supernet.pt"), "synthetic:2:64")  # the score is mIoU-T, rescored
    assert best["score"] == pytest.approx(scorer.score(ArchConfig.from_dict(best["arch"])))


def test_two_ray_train_workers_run_the_smoke_config(tmp_path, capsys):
    assert main(["distill", "--config", "smoke", "--set", "train.steps=2", "--set", "train.batch_size=2",
                 "--set", "data.train=synthetic:4:64", "--out", str(tmp_path / "run"), "--workers", "2",
                 "--quiet", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["steps"] == 2 and np.isfinite(summary["loss_last"])
    # each rank drew its own batches; averaged gradients keep the replicas identical
    rank0, rank1 = summary["replica_weights_sha1"]
    assert rank0 == rank1
    student = load_student(tmp_path / "run" / "student.pt")
    torch.manual_seed(0)
    initial = TraceNetStudent(student.arch)
    assert student.arch.space == "tracenet_tiny"
    assert any(not torch.equal(a, b) for a, b in zip(student.parameters(), initial.parameters(), strict=True))


def test_sam2_teacher_when_the_optional_package_is_installed(tmp_path):
    pytest.importorskip("sam2.build_sam", reason="optional extra tracenas[sam2] not installed")
    teacher = build_teacher("sam2:test")
    sample = next(iter(SyntheticShapes(1, 96)))
    first = TeacherCache(tmp_path, teacher).logits(sample, [(40.0, 40.0, True)])
    again = TeacherCache(tmp_path, teacher).logits(sample, [(40.0, 40.0, True)])  # from disk
    assert first.shape == (64, 64) and np.array_equal(first, again)
    torch.save({"model": {"unrelated": torch.zeros(1)}}, tmp_path / "other.pt")
    with pytest.raises(TeacherError, match="does not match SAM 2 tiny"):
        build_teacher(f"sam2:tiny:{tmp_path / 'other.pt'}")


def test_feature_distillation_through_an_adapter(tmp_path):
    from distill.training.losses import feature_loss

    assert float(feature_loss(torch.zeros(3, 4, 4), torch.ones(3, 8, 8))) == pytest.approx(1.0)
    with pytest.raises(ConfigError, match="no image embedding"):
        Trainer(load_config(None, FAST + ["loss.feature=1.0"]), tmp_path / "gt", progress=False)
    config = load_config(None, FAST + ["teacher=sam:tiny", "loss.feature=1.0", "train.steps=2"])
    trainer = Trainer(config, tmp_path / "run", progress=False)
    trainer.fit()
    assert all(np.isfinite(h.losses["feature"]) and h.losses["feature"] > 0 for h in trainer.history)
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert state["adapter"]["weight"].shape[:2] == (32, trainer.arch.fpn_channels)  # tiny SAM's 32-dim embedding


def test_unlabeled_folder_the_teacher_makes_the_targets(tmp_path, capsys):
    from PIL import Image

    from distill.data.datasets import DatasetError, load_dataset

    (tmp_path / "photos" / "sub").mkdir(parents=True)
    for i, sample in enumerate(SyntheticShapes(3, 64)):
        Image.fromarray(sample.image).save(tmp_path / "photos" / ("sub" if i else ".") / f"p{i}.png")
    (tmp_path / "photos" / "broken.jpg").write_bytes(b"nope")
    dataset = load_dataset(f"folder:{tmp_path / 'photos'}")
    with pytest.warns(UserWarning, match="skipping broken.jpg"):
        samples = list(dataset)
    assert len(samples) == 3 and all(s.mask is None for s in samples)
    with pytest.raises(ConfigError, match="teacher gt needs labelled data"):
        Trainer(load_config(None, FAST + [f"data.train=folder:{tmp_path / 'photos'}"]), tmp_path / "gt",
                progress=False)
    assert not (tmp_path / "gt").exists()
    config = load_config(None, FAST + [f"data.train=folder:{tmp_path / 'photos'}", "teacher=sam:tiny",
                                       "train.steps=2"])
    assert np.isfinite(Trainer(config, tmp_path / "run", progress=False).fit()["loss_last"])
    with pytest.raises(DatasetError, match="unlabeled"):
        from distill.data.datasets import labelled

        labelled(load_dataset(f"folder:{tmp_path / 'photos'}"), "folder")


def test_gradient_accumulation_averages_micro_batches(tmp_path):
    config = load_config(None, FAST + ["train.accumulate=2", "train.steps=1", "train.ema_decay=0"])
    trainer = Trainer(config, tmp_path / "run", progress=False)
    params = [p for p in trainer.module.parameters() if p.requires_grad]
    micro_grads, applied = [], []
    step_losses, optimizer_step = trainer._step_losses, trainer.optimizer.step

    def recording_losses(batch):  # each micro-batch's own gradient, taken before the engine accumulates it
        total, log = step_losses(batch)
        micro_grads.append(torch.autograd.grad(total, params, retain_graph=True, allow_unused=True))
        return total, log

    def recording_step(*args, **kwargs):
        applied.append([p.grad.clone() if p.grad is not None else None for p in params])
        return optimizer_step(*args, **kwargs)

    trainer._step_losses, trainer.optimizer.step = recording_losses, recording_step
    summary = trainer.fit()
    assert summary["steps"] == 1 and len(micro_grads) == 2 and len(applied) == 1
    for g1, g2, g in zip(*micro_grads, applied[0], strict=True):
        if g1 is None:
            continue
        assert torch.allclose(g, (g1 + g2) / 2, atol=1e-6)
    assert load_student(tmp_path / "run" / "student.pt").arch == trainer.arch
