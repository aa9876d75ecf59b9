"""Distillation data at scale: SA-1B's layout, lazy map-style datasets read by DataLoader workers,
seeded batches that resume exactly, teachers on the training device, bf16 autocast on CPU."""

import importlib.util
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from distill.data import datasets
from distill.data.datasets import SA1B, load_dataset
from distill.teachers import build_teacher
from distill.teachers.cache import TeacherCache
from distill.training.config import load_config
from distill.training.engine import Trainer
from distill.training.loader import StepBatches

_spec = importlib.util.spec_from_file_location(
    "distill_throughput", Path(__file__).resolve().parents[1] / "benchmarks" / "distill_throughput.py")
throughput = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(throughput)


def write_sa1b(folder, n, size=64):
    """`n` SA-1B-format images (sa_N.jpg + sa_N.json), four RLE masks of a quarter of the image each."""
    throughput.write_folder(folder, n, size)
    return folder


FAST = ["train.steps=4", "train.batch_size=2", "student.space=tracenet_tiny", "student.arch=smallest",
        "train.checkpoint_every=1", "data.workers=2", "data.instances_per_image=2"]


def test_sa1b_folder_trains_and_resumes_to_the_same_next_step_loss(tmp_path, interrupted_and_resumed):
    data = write_sa1b(tmp_path / "sa1b", 6)
    sample = load_dataset(f"sa1b:{data}")[0]
    assert sample.mask.dtype == bool and sample.mask.sum() == 32 * 32  # decoded from COCO RLE

    def two_instances_per_image(trainer, batch):
        assert len(batch.items) == 4  # two images, two instances from each read

    straight, resumed = interrupted_and_resumed(load_config(None, FAST + [f"data.train=sa1b:{data}"]),
                                                two_instances_per_image)
    assert resumed.history[2].losses == straight.history[2].losses  # the next step after the interruption
    assert resumed.history[-1].losses == straight.history[-1].losses


def test_a_dataset_keeps_file_names_until_a_sample_is_read(tmp_path, monkeypatch):
    data = write_sa1b(tmp_path / "sa1b", 200)
    reads = []
    monkeypatch.setattr(datasets, "read_image", lambda *a, **k: reads.append(a) or np.zeros((64, 64, 3), np.uint8))
    dataset = SA1B(data)
    assert len(dataset) == 200 and not reads  # nothing decoded or parsed yet
    assert len(pickle.dumps(dataset)) < 40 * 200  # what a worker receives: names, not pixels
    dataset.read(7, 1, np.random.default_rng(0))
    assert len(reads) == 1


def test_batches_are_a_function_of_the_step_and_each_rank_reads_its_own_shard():
    whole = list(StepBatches(10, 3, 2, seed=0, rank=1, world_size=2, steps=5, start_step=0, resolutions=(64, 96)))
    tail = list(StepBatches(10, 3, 2, seed=0, rank=1, world_size=2, steps=5, start_step=2, resolutions=(64, 96)))
    assert tail == whole[4:]  # resuming at step 2 draws exactly the next batches
    assert {index % 2 for batch in whole for index, _, _ in batch} == {1}  # rank 1's shard: odd images
    assert all(len({r for _, _, r in whole[2 * s]} | {r for _, _, r in whole[2 * s + 1]}) == 1 for s in range(5))


def test_the_teacher_and_its_cache_run_on_the_configured_device_and_encode_once_per_step(tmp_path):
    device = torch.device("cpu")
    teacher = build_teacher("sam:tiny", device)
    assert {p.device for p in teacher.predictor.model.parameters()} == {device}
    encoded = []
    encode = teacher.encode
    teacher.encode = lambda sample: encoded.append(sample.name) or encode(sample)
    cache = TeacherCache(tmp_path, teacher, device)
    a, b = list(load_dataset("synthetic:2:64"))
    cache.begin_step()
    for clicks in ([(30.0, 30.0, True)], [(30.0, 30.0, True), (5.0, 5.0, False)]):  # two click rounds
        for sample in (a, b):
            cache.logits(sample, clicks)
    assert encoded == [a.name, b.name]  # each image once in the step, however many rounds follow
    assert cache.embedding(a).device == device


def test_bf16_autocast_on_cpu(tmp_path, monkeypatch):
    config = load_config(None, ["train.steps=2", "train.batch_size=2", "data.train=synthetic:4:64",
                                "student.space=tracenet_tiny", "data.workers=0", "train.amp=bf16"])
    trainer = Trainer(config, tmp_path / "run", progress=False)
    dtypes = []
    trainer.module.trunk.register_forward_hook(lambda module, args, out: dtypes.append(out[0].dtype))
    assert np.isfinite(trainer.fit()["loss_last"])
    assert dtypes and set(dtypes) == {torch.bfloat16}  # the convs ran in bf16; the losses are float32
    with pytest.raises(Exception, match="fp16 needs a CUDA device"):
        Trainer(load_config(None, ["train.amp=fp16", "train.device=cpu"]), tmp_path / "fp16", progress=False)
    assert not (tmp_path / "fp16").exists()
