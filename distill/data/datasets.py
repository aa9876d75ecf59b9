"""Single-instance segmentation samples: interactive benchmark folders and synthetic shapes.

A dataset is named by a spec string, the same everywhere (`nas search --data`, `nas eval`):

- `grabcut:PATH` — RITM's GrabCut layout: `data_GT/<name>.jpg|.bmp` images and `boundary_GT/<name>.bmp`
  masks (255 object, 0 background, 128 an uncertain band that scoring ignores);
- `davis:PATH` — RITM's DAVIS layout: `img/<id>.jpg` and `gt/<id>.png` (1 object, 0 background);
- `coco:ANNOTATIONS.json:IMAGE_DIR` / `lvis:ANNOTATIONS.json:IMAGE_DIR` — COCO or LVIS instance
  annotations (pycocotools reads both formats); every instance is one sample. Crowd regions are
  skipped, and so are tiny instances: area below `MIN_INSTANCE_PX` pixels or below
  `MIN_INSTANCE_FRACTION` of the image (a tap on them is not a meaningful one-tap selection);
- `folder:PATH` — unlabeled images (any of IMAGE_SUFFIXES, recursively): no masks, the teacher makes
  the targets (`nas distill` only);
- `synthetic:N[:SIZE]` — N generated images of SIZE px (default 96) with one filled shape each.

An unreadable image or mask is skipped with a counted warning, never a crash mid-epoch.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from search_spaces.common.errors import TraceNASError
from search_spaces.common.limits import read_image

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


class FolderDataset:
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
        self.skipped = 0

    def __len__(self) -> int:
        return len(self.pairs)

    def __iter__(self) -> Iterator[Sample]:
        for image_path, mask_path in self.pairs:
            try:
                image = read_image(image_path)
                raw = read_image(mask_path, "mask", scale_bit_depth=False)  # palette and grey made colour
                if image.shape[:2] != raw.shape[:2]:
                    raise DatasetError(f"mask {raw.shape[:2]} and image {image.shape[:2]} differ in size")
            except (OSError, ValueError) as err:
                self.skipped += 1
                _skip(image_path.name, err, self.skipped)
                continue
            yield Sample(image_path.stem, image, *decode_mask(self.kind, raw))


def _skip(name: str, err: Exception, count: int) -> None:
    warnings.warn(f"skipping {name} ({count} skipped so far): {err}", stacklevel=3)


class InstanceAnnotations:
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
        self.instances = []
        for image_id in sorted(self.coco.imgs):
            info = self.coco.imgs[image_id]
            min_area = max(MIN_INSTANCE_PX, MIN_INSTANCE_FRACTION * info["height"] * info["width"])
            for ann in self.coco.loadAnns(self.coco.getAnnIds(imgIds=[image_id])):
                if not ann.get("iscrowd", 0) and ann.get("area", 0) >= min_area:
                    self.instances.append(ann)
        self.instances = self.instances[:limit]
        if not self.instances:
            raise DatasetError(f"{annotations}: no instance passes the size rule")
        self.skipped = 0

    def __len__(self) -> int:
        return len(self.instances)

    def __iter__(self) -> Iterator[Sample]:
        for ann in self.instances:
            info = self.coco.imgs[ann["image_id"]]
            name = info.get("file_name") or Path(info.get("coco_url", "")).name  # LVIS names images by URL
            try:
                image = read_image(self.image_dir / name)
                if image.shape[:2] != (info["height"], info["width"]):
                    raise DatasetError(f"image is {image.shape[:2]}, annotations say {(info['height'], info['width'])}")
            except (OSError, ValueError) as err:
                self.skipped += 1
                _skip(name, err, self.skipped)
                continue
            yield Sample(f"{Path(name).stem}#{ann['id']}", image, self.coco.annToMask(ann).astype(bool))


class ImageFolder:
    """Unlabeled images under a folder (recursively, sorted): samples without masks."""

    def __init__(self, root: str | Path, limit: int | None = None):
        self.root = Path(root)
        if not self.root.is_dir():
            raise DatasetError(f"{root}: no such image folder")
        self.paths = sorted(p for p in self.root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)[:limit]
        if not self.paths:
            raise DatasetError(f"{root}: no image ({', '.join(IMAGE_SUFFIXES)}) in the folder")
        self.skipped = 0

    def __len__(self) -> int:
        return len(self.paths)

    def __iter__(self) -> Iterator[Sample]:
        for path in self.paths:
            try:
                image = read_image(path)
            except (OSError, ValueError) as err:
                self.skipped += 1
                _skip(path.name, err, self.skipped)
                continue
            yield Sample(str(path.relative_to(self.root)), image, None)


class SyntheticShapes:
    """Textured backgrounds with one filled ellipse or rectangle each; deterministic for a seed."""

    def __init__(self, n: int, size: int = 96, seed: int = 0):
        self.n, self.size, self.seed = n, size, seed
        self.skipped = 0

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[Sample]:
        for i in range(self.n):
            rng = np.random.default_rng([self.seed, i])
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
            yield Sample(f"synthetic{i:05d}", image.astype(np.uint8), mask)


def load_dataset(spec: str, limit: int | None = None
                 ) -> FolderDataset | InstanceAnnotations | ImageFolder | SyntheticShapes:
    """The dataset a spec names (see the module docstring)."""
    kind, _, rest = spec.partition(":")
    if kind == "folder" and rest:
        return ImageFolder(rest, limit)
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
                       "lvis:ANN.json:IMAGES, folder:PATH or synthetic:N[:SIZE]")


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
