"""Single-instance segmentation samples: interactive benchmark folders and synthetic shapes.

A dataset is named by a spec string, the same everywhere (`nas search --data`, `nas eval`):

- `grabcut:PATH` — RITM's GrabCut layout: `data_GT/<name>.jpg|.bmp` images and `boundary_GT/<name>.bmp`
  masks (255 object, 0 background, 128 an uncertain band that scoring ignores);
- `davis:PATH` — RITM's DAVIS layout: `img/<id>.jpg` and `gt/<id>.png` (1 object, 0 background);
- `coco:ANNOTATIONS.json:IMAGE_DIR` / `lvis:ANNOTATIONS.json:IMAGE_DIR` — COCO or LVIS instance
  annotations (pycocotools reads both formats); every instance is one sample. Crowd regions are
  skipped, and so are tiny instances: area below `MIN_INSTANCE_PX` pixels or below
  `MIN_INSTANCE_FRACTION` of the image (a tap on them is not a meaningful one-tap selection);
- `sa1b:PATH` — SA-1B's own layout: `sa_N.jpg` beside `sa_N.json` (the image's record and its
  masks as COCO RLE); one image is one sample, its instance drawn among the masks that pass the same
  size rule as COCO's (`instances(i, k, rng)` draws several from one decoding of the image);
- `folder:PATH` — unlabeled images (any of IMAGE_SUFFIXES, recursively): no masks, the teacher makes
  the targets (`nas distill` only);
- `synthetic:N[:SIZE]` — N generated images of SIZE px (default 96) with one filled shape each.

Every dataset is a map-style `torch.utils.data.Dataset` that keeps only file names and annotation
records: `dataset[i]` reads and decodes sample i when it is asked for (in a `DataLoader` worker
during training), and is None, with a counted warning, when that image or mask cannot be read.
Iterating yields the readable samples in order.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from search_spaces.common.errors import TraceNASError
from search_spaces.common.files import read_text
from search_spaces.common.limits import parse_json, read_image

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
MIN_INSTANCE_PX = 32 * 32
MIN_INSTANCE_FRACTION = 0.005


class DatasetError(TraceNASError, ValueError):
    """A malformed dataset spec or a folder without the expected layout."""


@dataclass(frozen=True)
class Sample:
    name: str
    image: np.ndarray  # (H, W, 3) uint8 RGB
    mask: np.ndarray | None  # (H, W) bool, the instance; None for unlabeled images
    ignore: np.ndarray | None = None  # (H, W) bool, pixels left out of IoU (GrabCut's uncertain band)


def decode_mask(kind: str, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """RITM's decoding of a benchmark mask (H, W, 3 RGB) into (object, ignored pixels).

    GrabCut (`GrabCutDataset`): the first channel read by OpenCV (blue), 128 is the ignored band,
    values above 128 are the object, and a value of 1 is kept as the object label too. DAVIS
    (`DavisDataset`): the object is every pixel whose largest channel is above 0."""
    if kind == "grabcut":
        value = raw[..., 2]
        return (value > 128) | (value == 1), value == 128
    return raw.max(axis=2) > 0, None


class SampleDataset(Dataset):
    """A map-style dataset of `Sample`s that decodes on access; subclasses implement `load`."""

    skipped = 0  # unreadable samples met so far (in this process)
    labelled = True  # samples carry instance masks

    def load(self, index: int, rng: np.random.Generator | None = None) -> Sample:
        raise NotImplementedError

    def name(self, index: int) -> str:
        raise NotImplementedError

    def instances(self, index: int, k: int, rng: np.random.Generator) -> list[Sample]:
        """Up to `k` instances of image `index` from one read of it (one, except where an image holds many)."""
        return [self.load(index, rng)]

    def read(self, index: int, k: int = 1, rng: np.random.Generator | None = None) -> list[Sample]:
        """`instances`, or [] with a counted warning when the files cannot be read."""
        try:
            return self.instances(index, k, rng) if rng is not None else [self.load(index)]
        except (OSError, ValueError) as err:
            self.skipped += 1
            _skip(self.name(index), err, self.skipped)
            return []

    def __getitem__(self, index: int) -> Sample | None:
        samples = self.read(index)
        return samples[0] if samples else None

    def __iter__(self) -> Iterator[Sample]:
        for index in range(len(self)):
            yield from self.read(index)


class FolderDataset(SampleDataset):
    """Image/mask pairs of an interactive benchmark folder (GrabCut or DAVIS layout)."""

    LAYOUTS = {"grabcut": ("data_GT", "boundary_GT", ".bmp"), "davis": ("img", "gt", ".png")}

    def __init__(self, kind: str, root: str | Path, limit: int | None = None):
        self.kind, self.root = kind, Path(root)
        images, masks, mask_suffix = self.LAYOUTS[kind]
        if not (self.root / images).is_dir() or not (self.root / masks).is_dir():
            raise DatasetError(f"{root}: not a {kind} folder (expected {images}/ and {masks}/)")
        self.pairs = [(p, self.root / masks / (p.stem + mask_suffix))
                      for p in sorted((self.root / images).iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES]
        self.pairs = [(i, m) for i, m in self.pairs if m.is_file()][:limit]
        if not self.pairs:
            raise DatasetError(f"{root}: no image with a matching mask in {images}/ and {masks}/")

    def __len__(self) -> int:
        return len(self.pairs)

    def name(self, index: int) -> str:
        return self.pairs[index][0].name

    def load(self, index: int, rng: np.random.Generator | None = None) -> Sample:
        image_path, mask_path = self.pairs[index]
        image = read_image(image_path)
        raw = read_image(mask_path, "mask", scale_bit_depth=False)  # palette and grey made colour
        if image.shape[:2] != raw.shape[:2]:
            raise DatasetError(f"mask {raw.shape[:2]} and image {image.shape[:2]} differ in size")
        return Sample(image_path.stem, image, *decode_mask(self.kind, raw))


def _skip(name: str, err: Exception, count: int) -> None:
    warnings.warn(f"skipping {name} ({count} skipped so far): {err}", stacklevel=3)


class InstanceAnnotations(SampleDataset):
    """COCO / LVIS instance annotations: each kept instance of each image is one sample."""

    def __init__(self, annotations: str | Path, image_dir: str | Path, limit: int | None = None):
        import contextlib
        import io

        from pycocotools.coco import COCO

        self.image_dir = Path(image_dir)
        if not self.image_dir.is_dir():
            raise DatasetError(f"{image_dir}: no such image folder")
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
                self.coco = COCO(str(annotations))
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise DatasetError(f"{annotations}: not readable COCO/LVIS instance annotations ({err})") from None
        self.kept: list[dict] = []  # the instance annotations that pass the size rules
        for image_id in sorted(self.coco.imgs):
            info = self.coco.imgs[image_id]
            min_area = max(MIN_INSTANCE_PX, MIN_INSTANCE_FRACTION * info["height"] * info["width"])
            for ann in self.coco.loadAnns(self.coco.getAnnIds(imgIds=[image_id])):
                if not ann.get("iscrowd", 0) and ann.get("area", 0) >= min_area:
                    self.kept.append(ann)
        self.kept = self.kept[:limit]
        self.by_image: dict[int, list[dict]] = {}
        for ann in self.kept:
            self.by_image.setdefault(ann["image_id"], []).append(ann)
        if not self.kept:
            raise DatasetError(f"{annotations}: no instance passes the size rule")

    def __len__(self) -> int:
        return len(self.kept)

    def name(self, index: int) -> str:
        info = self.coco.imgs[self.kept[index]["image_id"]]
        return info.get("file_name") or Path(info.get("coco_url", "")).name  # LVIS names images by URL

    def load(self, index: int, rng: np.random.Generator | None = None) -> Sample:
        return self.instances_of(index, [self.kept[index]])[0]

    def instances(self, index: int, k: int, rng: np.random.Generator) -> list[Sample]:
        """Instance `index` and up to k - 1 others of its image, from one read of the image."""
        ann = self.kept[index]
        others = [a for a in self.by_image[ann["image_id"]] if a is not ann]
        picks = rng.choice(len(others), size=min(k - 1, len(others)), replace=False) if k > 1 and others else []
        return self.instances_of(index, [ann] + [others[i] for i in picks])

    def instances_of(self, index: int, anns: list[dict]) -> list[Sample]:
        info, name = self.coco.imgs[anns[0]["image_id"]], self.name(index)
        image = read_image(self.image_dir / name)
        if image.shape[:2] != (info["height"], info["width"]):
            raise DatasetError(f"image is {image.shape[:2]}, annotations say {(info['height'], info['width'])}")
        return [Sample(f"{Path(name).stem}#{a['id']}", image, self.coco.annToMask(a).astype(bool)) for a in anns]


class ImageFolder(SampleDataset):
    """Unlabeled images under a folder (recursively, sorted): samples without masks."""

    labelled = False

    def __init__(self, root: str | Path, limit: int | None = None):
        self.root = Path(root)
        if not self.root.is_dir():
            raise DatasetError(f"{root}: no such image folder")
        self.paths = sorted(p for p in self.root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)[:limit]
        if not self.paths:
            raise DatasetError(f"{root}: no image ({', '.join(IMAGE_SUFFIXES)}) in the folder")

    def __len__(self) -> int:
        return len(self.paths)

    def name(self, index: int) -> str:
        return self.paths[index].name

    def load(self, index: int, rng: np.random.Generator | None = None) -> Sample:
        path = self.paths[index]
        return Sample(str(path.relative_to(self.root)), read_image(path), None)


class SyntheticShapes(SampleDataset):
    """Textured backgrounds with one filled ellipse or rectangle each; deterministic for a seed."""

    def __init__(self, n: int, size: int = 96, seed: int = 0):
        self.n, self.size, self.seed = n, size, seed

    def __len__(self) -> int:
        return self.n

    def name(self, index: int) -> str:
        return f"synthetic{index:05d}"

    def load(self, index: int, rng: np.random.Generator | None = None) -> Sample:
        rng = np.random.default_rng([self.seed, index])  # the image is a function of its index alone
        s = self.size
        yy, xx = np.mgrid[:s, :s]
        cy, cx = rng.uniform(0.3, 0.7, 2) * s
        ry, rx = rng.uniform(0.12, 0.3, 2) * s
        if rng.random() < 0.5:
            mask = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        else:
            mask = (abs(yy - cy) <= ry) & (abs(xx - cx) <= rx)
        background = rng.integers(0, 256, 3)
        image = np.clip(background + rng.normal(0, 20, (s, s, 3)), 0, 255)
        image[mask] = np.clip(rng.integers(0, 256, 3) + rng.normal(0, 20, (int(mask.sum()), 3)), 0, 255)
        return Sample(self.name(index), image.astype(np.uint8), mask)


class SA1B(SampleDataset):
    """SA-1B's folder layout: `sa_N.jpg` and `sa_N.json` (`{"image": {...}, "annotations": [{"segmentation":
    COCO RLE, "area", "id", ...}]}`). Only the file names are kept; a sample's JSON is parsed and its
    masks decoded (pycocotools) when it is read."""

    def __init__(self, root: str | Path, limit: int | None = None):
        self.root = Path(root)
        if not self.root.is_dir():
            raise DatasetError(f"{root}: no such SA-1B folder")
        self.stems = sorted(p.stem for p in self.root.glob("sa_*.json") if (self.root / f"{p.stem}.jpg").is_file())
        self.stems = self.stems[:limit]
        if not self.stems:
            raise DatasetError(f"{root}: no sa_N.jpg with its sa_N.json (SA-1B's layout)")

    def __len__(self) -> int:
        return len(self.stems)

    def name(self, index: int) -> str:
        return f"{self.stems[index]}.jpg"

    def _records(self, index: int) -> tuple[np.ndarray, list[dict]]:
        stem = self.stems[index]
        record = parse_json(read_text(self.root / f"{stem}.json", "SA-1B annotation"), f"{stem}.json", DatasetError)
        image = read_image(self.root / f"{stem}.jpg")
        h, w = image.shape[:2]
        try:
            min_area = max(MIN_INSTANCE_PX, MIN_INSTANCE_FRACTION * h * w)
            kept = [a for a in record["annotations"] if a.get("area", 0) >= min_area
                    and list(a["segmentation"]["size"]) == [h, w]]
        except (KeyError, TypeError) as err:
            raise DatasetError(f"{stem}.json: not an SA-1B annotation record ({err})") from None
        if not kept:
            raise DatasetError(f"{stem}.json: no mask passes the size rule")
        return image, kept

    def instances(self, index: int, k: int, rng: np.random.Generator) -> list[Sample]:
        from pycocotools import mask as rle

        image, kept = self._records(index)
        picks = rng.choice(len(kept), size=min(k, len(kept)), replace=False)
        return [Sample(f"{self.stems[index]}#{kept[i].get('id', i)}", image,
                       rle.decode(_rle(kept[i]["segmentation"])).astype(bool)) for i in picks]

    def load(self, index: int, rng: np.random.Generator | None = None) -> Sample:
        return self.instances(index, 1, rng or np.random.default_rng(index))[0]


def _rle(segmentation: dict) -> dict:
    counts = segmentation["counts"]
    return {"size": segmentation["size"], "counts": counts.encode() if isinstance(counts, str) else counts}


def load_dataset(spec: str, limit: int | None = None
                 ) -> SampleDataset:
    """The dataset a spec names (see the module docstring)."""
    kind, _, rest = spec.partition(":")
    if kind == "folder" and rest:
        return ImageFolder(rest, limit)
    if kind == "sa1b" and rest:
        return SA1B(rest, limit)
    if kind in ("coco", "lvis"):
        annotations, sep, image_dir = rest.rpartition(":")
        if not sep or not annotations:
            raise DatasetError(f"dataset spec {spec!r}: expected {kind}:ANNOTATIONS.json:IMAGE_DIR")
        return InstanceAnnotations(annotations, image_dir, limit)
    if kind in FolderDataset.LAYOUTS and rest:
        return FolderDataset(kind, rest, limit)
    if kind == "synthetic":
        try:
            n, size = (int(v) for v in (rest.split(":") + ["96"])[:2])
        except ValueError:
            raise DatasetError(f"dataset spec {spec!r}: expected synthetic:N[:SIZE]") from None
        if n < 1 or size < 32:
            raise DatasetError(f"dataset spec {spec!r}: need N >= 1 images of SIZE >= 32 px")
        return SyntheticShapes(min(n, limit or n), size)
    raise DatasetError(f"unknown dataset spec {spec!r}; use grabcut:PATH, davis:PATH, coco:ANN.json:IMAGES, "
                       "lvis:ANN.json:IMAGES, sa1b:PATH, folder:PATH or synthetic:N[:SIZE]")


def labelled(samples: Iterable[Sample], spec: str) -> list[Sample]:
    """The samples with a non-empty instance mask; an error when `spec` holds unlabeled images."""
    kept = []
    for sample in samples:
        if sample.mask is None:
            raise DatasetError(f"dataset {spec!r} is unlabeled; this needs instance masks")
        if sample.mask.any():
            kept.append(sample)
    if not kept:
        raise DatasetError(f"dataset {spec!r} has no sample with a non-empty instance mask")
    return kept
