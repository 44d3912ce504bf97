"""Square patches cut from images, optionally ZCA-whitened: the data of Olshausen & Field's sparse coding.

Pipeline (every step seeded, so a run's config rebuilds the same rows):

* images: every readable image in a folder (sorted by name), the natural photographs scikit-image ships
  (``images="skimage"``, no network), or a white-noise control (``images="noise"``); each is turned to
  grayscale floats and standardised to mean 0, standard deviation 1 over the whole image.
* ``n_patches`` patch positions drawn uniformly, image by image in proportion to its number of valid positions;
  each patch is ``patch`` x ``patch`` pixels flattened row-major, and its own mean is removed (the DC
  component carries no shape, and sparse coding of natural images conventionally drops it).
* ZCA whitening (``whiten="zca"``): with C the covariance of the *train* patches and C = U diag(l) U^T,
  every patch x becomes U diag(1 / sqrt(l + eps)) U^T x, eps = ``zca_epsilon`` * mean(l). The small
  regulariser keeps the near-zero eigenvalues (the removed DC direction, sensor noise) from being blown up.
* The last ``eval_fraction`` of the patches form the "eval" split.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from ..configs import check_choice, check_float, check_int
from ..errors import ConfigError, DataError
from .base import ActivationBatch, SourceBase, SourceConfigBase, check_split, chunk_ranges

WHITENING = ("none", "zca")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".webp", ".pgm", ".ppm")
SKIMAGE_PHOTOS = ("camera", "astronaut", "coffee", "chelsea", "rocket", "grass", "gravel", "brick", "moon")
"""Natural photographs in ``skimage.data`` that ship inside the scikit-image wheel (no download)."""
NOISE_SIZE = 256
"""Side of each white-noise control image (``images="noise"``); as many as there are skimage photos."""


@dataclass(kw_only=True)
class ImageSourceConfig(SourceConfigBase):
    """Patches of images (see the module docstring for the pipeline)."""

    kind: ClassVar[str] = "images"

    images: str = "skimage"
    """A folder of images, "skimage" (scikit-image's sample photographs) or "noise" (white-noise control)."""
    patch: int = 12
    """Side of each square patch in pixels; rows have patch * patch values."""
    n_patches: int = 100_000
    """Patches drawn in all (train + eval)."""
    whiten: str = "zca"
    """"zca" (whiten with the train patches' covariance) or "none"."""
    zca_epsilon: float = 0.01
    """ZCA regulariser as a fraction of the mean eigenvalue of the patch covariance."""
    eval_fraction: float = 0.05
    """Fraction of the patches held out as the "eval" split."""
    seed: int = 0
    """Seeds the patch positions (and the noise control's pixels)."""
    chunk_rows: int = 16384
    """Rows yielded at a time."""

    def __post_init__(self) -> None:
        if isinstance(self.images, os.PathLike):
            self.images = os.fspath(self.images)
        if not isinstance(self.images, str) or not self.images:
            raise ConfigError(f"source.images must be a folder, 'skimage' or 'noise', got {self.images!r}")
        check_int("source.patch", self.patch, minimum=2)
        check_int("source.n_patches", self.n_patches, minimum=2)
        check_choice("source.whiten", self.whiten, WHITENING)
        self.zca_epsilon = check_float("source.zca_epsilon", self.zca_epsilon, 0.0, low_open=True)
        self.eval_fraction = check_float(
            "source.eval_fraction", self.eval_fraction, 0.0, 1.0, low_open=True, high_open=True
        )
        check_int("source.seed", self.seed, minimum=0)
        check_int("source.chunk_rows", self.chunk_rows, minimum=1)


# --------------------------------------------------------------------------- images


def to_gray(image: np.ndarray, name: str) -> np.ndarray:
    """(H, W) float64 luminance of a gray, RGB or RGBA image, standardised to mean 0 and std 1."""
    img = np.asarray(image, dtype=np.float64)
    if img.ndim == 3 and img.shape[2] in (3, 4):
        img = img[..., :3] @ np.array([0.2125, 0.7154, 0.0721])  # ITU-R BT.709 luma, as skimage.color.rgb2gray
    elif img.ndim == 3 and img.shape[2] == 1:
        img = img[..., 0]
    if img.ndim != 2:
        raise DataError(f"{name}: expected a gray or RGB image, got an array of shape {img.shape}")
    std = img.std()
    if not np.isfinite(std) or std == 0:
        raise DataError(f"{name}: the image is constant (or not finite); it has no patches to learn from")
    return (img - img.mean()) / std


def image_files(folder: Path) -> list[Path]:
    """The image files in ``folder``, sorted by name; DataError for a missing folder or one without images."""
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder of images (or 'skimage' / 'noise')")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"{folder}: no image files ({', '.join(IMAGE_SUFFIXES)})")
    return files


def read_image(path: Path, mode: str = "L") -> np.ndarray:
    """The pixels of one image file converted to PIL ``mode`` ("L": float64; else uint8); one-line DataError for a
    file that is not a readable image."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert(mode), dtype=np.float64 if mode == "L" else np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise DataError(f"{path}: not a readable image ({str(e).strip().splitlines()[0]}); fix or remove it") from None


def _read_folder(folder: Path, mode: str = "L") -> list[tuple[str, np.ndarray]]:
    """(file name, pixels) of every image file in ``folder``, sorted by name, converted to PIL ``mode``."""
    return [(str(p), read_image(p, mode)) for p in image_files(folder)]


def _skimage_photos() -> list[tuple[str, np.ndarray]]:
    try:
        import skimage.data
    except ImportError:  # pragma: no cover - scikit-image is a dependency
        raise ConfigError("images='skimage' needs scikit-image: pip install scikit-image") from None
    return [(f"skimage.data.{n}", getattr(skimage.data, n)()) for n in SKIMAGE_PHOTOS]


def load_images(spec: str, seed: int = 0) -> list[tuple[str, np.ndarray]]:
    """(name, (H, W) standardised gray image) for a folder, "skimage" or "noise"."""
    if spec == "skimage":
        raw = _skimage_photos()
    elif spec == "noise":
        rng = np.random.default_rng([seed, 1])
        raw = [(f"noise{i}", rng.standard_normal((NOISE_SIZE, NOISE_SIZE))) for i in range(len(SKIMAGE_PHOTOS))]
    else:
        raw = _read_folder(Path(spec).expanduser())
    return [(name, to_gray(img, name)) for name, img in raw]


def load_rgb_images(spec: str, seed: int = 0) -> list[tuple[str, np.ndarray]]:
    """(name, (H, W, 3) uint8 RGB image) for a folder, "skimage" (gray photographs repeated over the three
    channels) or "noise" (uniform RGB noise, seeded): what an image model is fed."""
    if spec == "skimage":
        raw = _skimage_photos()
    elif spec == "noise":
        rng = np.random.default_rng([seed, 1])
        shape = (NOISE_SIZE, NOISE_SIZE, 3)
        return [(f"noise{i}", rng.integers(0, 256, shape, dtype=np.uint8)) for i in range(len(SKIMAGE_PHOTOS))]
    else:
        return _read_folder(Path(spec).expanduser(), "RGB")
    out = []
    for name, img in raw:
        img = np.asarray(img)
        rgb = np.repeat(img[..., None], 3, axis=2) if img.ndim == 2 else img[..., :3]  # gray -> RGB; RGBA -> RGB
        out.append((name, np.ascontiguousarray(rgb, dtype=np.uint8)))
    return out


class RGBImages(Sequence):
    """The RGB images of ``spec`` as a sequence of (H, W, 3) uint8 arrays, for an image model. "skimage" and "noise"
    are held in memory; a folder's files are decoded on access (the last ``keep`` kept), so a large folder is never
    in memory whole. Every file's size is read, and the file checked, up front: a bad file is reported before any
    work is done."""

    def __init__(self, spec: str, seed: int = 0, keep: int = 8) -> None:
        self.keep = keep
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        if spec in ("skimage", "noise"):
            named = load_rgb_images(spec, seed)
            self.files: list[Path] | None = None
            self.names = [n for n, _ in named]
            self._arrays = [a for _, a in named]
            self.shapes = [a.shape[:2] for a in self._arrays]
        else:
            self.files = image_files(Path(spec).expanduser())
            self.names = [str(p) for p in self.files]
            self.shapes = [_checked_shape(p) for p in self.files]

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int) -> np.ndarray:  # type: ignore[override]
        if self.files is None:
            return self._arrays[i]
        if i not in self._cache:
            self._cache[i] = read_image(self.files[i], "RGB")
            while len(self._cache) > self.keep:
                self._cache.popitem(last=False)
        self._cache.move_to_end(i)
        return self._cache[i]


def _checked_shape(path: Path) -> tuple[int, int]:
    """(height, width) of an image file from its header, after PIL's integrity check of the file (no decoding)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            width, height = im.size
            im.verify()
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise DataError(f"{path}: not a readable image ({str(e).strip().splitlines()[0]}); fix or remove it") from None
    return height, width


def images_identity(spec: str) -> dict[str, Any]:
    """What the images of ``spec`` are beyond its name: for a folder its image files (name, size, mtime), for
    "skimage" the package version (keys the activation cache of image-model runs)."""
    if spec == "skimage":
        import skimage

        return {"skimage": skimage.__version__}
    if spec == "noise":
        return {"noise": NOISE_SIZE}
    folder = Path(spec).expanduser()
    if not folder.is_dir():
        return {"folder": str(folder)}
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    return {"folder": str(folder.resolve()), "files": [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files]}


# --------------------------------------------------------------------------- patches and whitening


def sample_positions(shapes: list[tuple[int, int]], patch: int, n: int, seed: int) -> np.ndarray:
    """(n, 3) int64 rows (image, top, left), uniform over every valid patch position of every image."""
    valid = np.array([(h - patch + 1) * (w - patch + 1) for h, w in shapes], dtype=np.int64)
    rng = np.random.default_rng([seed, 0])
    flat = rng.integers(0, valid.sum(), size=n)  # one draw over all positions of all images
    img = np.searchsorted(np.cumsum(valid), flat, side="right")
    offset = flat - np.concatenate([[0], np.cumsum(valid)])[img]
    widths = np.array([w - patch + 1 for _, w in shapes], dtype=np.int64)[img]
    return np.stack([img, offset // widths, offset % widths], axis=1)


def cut_patches(images: list[np.ndarray], positions: np.ndarray, patch: int) -> np.ndarray:
    """(n, patch * patch) float64 patches at ``positions`` (image, top, left), each minus its own mean."""
    out = np.empty((len(positions), patch * patch))
    for i, img in enumerate(images):
        sel = np.nonzero(positions[:, 0] == i)[0]
        if len(sel) == 0:
            continue
        windows = np.lib.stride_tricks.sliding_window_view(img, (patch, patch))  # (H-p+1, W-p+1, p, p), a view
        out[sel] = windows[positions[sel, 1], positions[sel, 2]].reshape(len(sel), -1)
    return out - out.mean(axis=1, keepdims=True)


def zca_matrix(x: np.ndarray, epsilon: float) -> np.ndarray:
    """(d, d) symmetric ZCA whitening matrix U diag(1/sqrt(l + eps mean(l))) U^T of the rows of ``x`` (n, d)."""
    centered = x - x.mean(axis=0)
    cov = centered.T @ centered / len(x)  # (d, d)
    evals, evecs = np.linalg.eigh(cov)
    evals = np.clip(evals, 0.0, None)
    scale = 1.0 / np.sqrt(evals + epsilon * evals.mean())
    return (evecs * scale) @ evecs.T


# --------------------------------------------------------------------------- the source


class ImageSource(SourceBase):
    """Image patches as activation rows (``d_in = patch * patch``); ``positions`` says where each came from."""

    def __init__(self, config: ImageSourceConfig):
        self.config = config
        c = config
        named = load_images(c.images, c.seed)
        self.image_names = [n for n, _ in named]
        images = [img for _, img in named]
        shapes = [img.shape for img in images]
        fits = [s for s in shapes if min(s) >= c.patch]
        if not fits:
            smallest = min(shapes, key=min)
            raise DataError(
                f"patch {c.patch} is larger than every image (smallest {smallest[0]}x{smallest[1]}); use a smaller --patch"
            )
        usable = [i for i, s in enumerate(shapes) if min(s) >= c.patch]
        pos = sample_positions([shapes[i] for i in usable], c.patch, c.n_patches, c.seed)
        pos[:, 0] = np.array(usable)[pos[:, 0]]
        self.positions = pos
        """(n_patches, 3) int64 (image index, top, left) of every row, train rows first."""
        patches = cut_patches(images, pos, c.patch)  # (n_patches, patch * patch)
        n_eval = max(1, round(c.n_patches * c.eval_fraction))
        self.n_train = c.n_patches - n_eval
        if self.n_train < 1:
            raise ConfigError(f"source.n_patches {c.n_patches} leaves no training patches; raise it")
        self.whitening = None
        """(d, d) ZCA matrix fitted on the train patches, or None."""
        if c.whiten == "zca":
            self.whitening = zca_matrix(patches[: self.n_train], c.zca_epsilon)
            patches = patches @ self.whitening  # symmetric, so rows times W == (W x)^T
        self._rows = torch.from_numpy(patches.astype(np.float32))

    @property
    def d_in(self) -> int:
        return self.config.patch * self.config.patch

    @property
    def patch_shape(self) -> tuple[int, int]:
        return (self.config.patch, self.config.patch)

    def _range(self, split: str) -> tuple[int, int]:
        check_split(split)
        return (0, self.n_train) if split == "train" else (self.n_train, self.config.n_patches)

    def num_rows(self, split: str = "train") -> int:
        lo, hi = self._range(split)
        return hi - lo

    def iter_batches(self, split: str = "train", start_row: int = 0) -> Iterator[ActivationBatch]:
        """Rows ``start_row..`` of ``split``, ``chunk_rows`` at a time."""
        lo, hi = self._range(split)
        for a, b in chunk_ranges(lo, hi, start_row, self.config.chunk_rows, split):
            yield ActivationBatch(acts=self._rows[a:b].clone())
