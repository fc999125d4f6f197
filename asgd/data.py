"""Datasets: ``load(name, split, ...)`` and a deterministic minibatch sequence.

Sources, chosen by ``name`` and ``data_dir``:
  * ``digits``: scikit-learn's bundled 8x8 handwritten digits (1797 images).
    Embedded and offline: the default.
  * ``mnist`` / ``fashion_mnist`` / ``cifar10`` with ``data_dir``: raw files in
    that folder, parsed with numpy (IDX ``*-idx3-ubyte``/``*-idx1-ubyte``,
    optionally ``.gz``; CIFAR-10 ``data_batch_*.bin``/``test_batch.bin``).
  * the same names without ``data_dir``: tensorflow-datasets (extra ``tfds``).

Every loader returns a ``Dataset`` of float32 NHWC inputs scaled to [0, 1]
and int32 labels. The ``eval`` split is the source's test split when it has
one; a source with a single split (the sklearn digits, or a folder holding
only MNIST's t10k files) is split into train/eval deterministically by
``eval_fraction`` and ``split_seed``.
"""

from __future__ import annotations

import glob
import gzip
import os
import socket
import threading
from typing import NamedTuple

import numpy as np

SPLITS = ("train", "eval")
DATASETS = ("digits", "mnist", "fashion_mnist", "cifar10")


class DataError(ValueError):
    """A dataset cannot be found or parsed; the message says what to do."""


class Dataset(NamedTuple):
    x: np.ndarray  # float32 [n, h, w, c] in [0, 1]
    y: np.ndarray  # int32 [n]

    @property
    def num_classes(self) -> int:
        return int(self.y.max()) + 1

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])


def load(name: str, split: str, data_dir: str | None = None, eval_fraction: float = 0.2,
         split_seed: int = 0, download: bool = False) -> Dataset:
    """Load one split of a dataset as normalised float32 inputs and int32 labels.

    Args:
      name: one of ``DATASETS``.
      split: ``"train"`` or ``"eval"``.
      data_dir: folder of raw files; empty or None means tensorflow-datasets
        (ignored for ``digits``).
      eval_fraction: share of a single-split source held out for ``eval``.
      split_seed: seed of that hold-out permutation.
      download: allow tensorflow-datasets to download (it cannot offline).
    Returns:
      A ``Dataset``.
    Raises:
      DataError: unknown name or split, missing folder, corrupt files, or tfds
        unavailable, with a message that says what to do.
    """
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; choose one of {SPLITS}")
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose one of {DATASETS}")
    if not 0.0 < eval_fraction < 1.0:
        raise DataError(f"eval_fraction must be in (0, 1), got {eval_fraction}")
    if name == "digits":
        return _hold_out(_digits(), split, eval_fraction, split_seed)
    if data_dir:
        splits = _raw_folder(name, data_dir)
    else:
        splits = {s: _tfds(name, s, download) for s in ("train", "test")}
    if "train" in splits and "test" in splits:
        return splits["train" if split == "train" else "test"]
    ((which, only),) = splits.items()
    if len(only.y) < 2:
        raise DataError(f"{name} in {data_dir or 'tensorflow-datasets'}: its only split ({which}) "
                        f"holds {len(only.y)} image(s), too few to hold out an eval split")
    return _hold_out(only, split, eval_fraction, split_seed)


def _hold_out(data: Dataset, split: str, eval_fraction: float, seed: int) -> Dataset:
    """Deterministic train/eval partition of a single-split source (of >= 2 examples)."""
    order = np.random.default_rng(seed).permutation(len(data.y))
    n_eval = min(len(order) - 1, max(1, int(round(eval_fraction * len(order)))))
    index = order[:n_eval] if split == "eval" else order[n_eval:]
    index = np.sort(index)
    return Dataset(data.x[index], data.y[index])


def _digits() -> Dataset:
    from sklearn.datasets import load_digits
    bunch = load_digits()
    x = (bunch.images.astype(np.float32) / 16.0)[..., None]
    return Dataset(x, bunch.target.astype(np.int32))


# ------------------------------------------------------------- raw files ----

IDX_IMAGES_MAGIC = 2051
IDX_LABELS_MAGIC = 2049
CIFAR_RECORD = 1 + 32 * 32 * 3


def _read_bytes(path: str) -> bytes:
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            return f.read()
    except (OSError, EOFError) as e:  # gzip raises these on truncated/corrupt streams
        raise DataError(f"{path}: cannot read ({e})") from None


def read_idx_images(path: str) -> np.ndarray:
    """Parse an IDX3 image file into uint8 [n, rows, cols]."""
    raw = _read_bytes(path)
    if len(raw) < 16:
        raise DataError(f"{path}: truncated IDX header ({len(raw)} bytes, need 16)")
    magic, n, rows, cols = np.frombuffer(raw[:16], ">u4")
    if magic != IDX_IMAGES_MAGIC:
        raise DataError(f"{path}: bad magic number {magic}, expected {IDX_IMAGES_MAGIC} (IDX3 images)")
    if rows == 0 or cols == 0:
        raise DataError(f"{path}: bad image dimensions {rows}x{cols}")
    expected = 16 + int(n) * int(rows) * int(cols)
    if len(raw) != expected:
        raise DataError(f"{path}: {len(raw)} bytes but the header promises {n} images of "
                        f"{rows}x{cols} ({expected} bytes); the file is truncated or corrupt")
    return np.frombuffer(raw, np.uint8, offset=16).reshape(int(n), int(rows), int(cols))


def read_idx_labels(path: str) -> np.ndarray:
    """Parse an IDX1 label file into uint8 [n]."""
    raw = _read_bytes(path)
    if len(raw) < 8:
        raise DataError(f"{path}: truncated IDX header ({len(raw)} bytes, need 8)")
    magic, n = np.frombuffer(raw[:8], ">u4")
    if magic != IDX_LABELS_MAGIC:
        raise DataError(f"{path}: bad magic number {magic}, expected {IDX_LABELS_MAGIC} (IDX1 labels)")
    if len(raw) != 8 + int(n):
        raise DataError(f"{path}: {len(raw)} bytes but the header promises {n} labels "
                        f"({8 + int(n)} bytes); the file is truncated or corrupt")
    return np.frombuffer(raw, np.uint8, offset=8)


def read_idx_pair(images_path: str, labels_path: str) -> Dataset:
    """Images and labels of one IDX split, checked against each other."""
    images, labels = read_idx_images(images_path), read_idx_labels(labels_path)
    if len(images) != len(labels):
        raise DataError(f"{images_path} has {len(images)} images but {labels_path} has "
                        f"{len(labels)} labels")
    if len(images) == 0:
        raise DataError(f"{images_path} holds no images")
    if labels.size and labels.max() > 9:
        raise DataError(f"{labels_path}: label {labels.max()} out of range 0-9")
    x = (images.astype(np.float32) / 255.0)[..., None]
    return Dataset(x, labels.astype(np.int32))


def read_cifar_batches(paths: list[str]) -> Dataset:
    """Parse CIFAR-10 binary batches (records of 1 label byte + 3072 CHW pixels)."""
    xs, ys = [], []
    for path in paths:
        raw = _read_bytes(path)
        if len(raw) == 0 or len(raw) % CIFAR_RECORD:
            raise DataError(f"{path}: {len(raw)} bytes is not a whole number of "
                            f"{CIFAR_RECORD}-byte CIFAR-10 records; truncated or corrupt")
        records = np.frombuffer(raw, np.uint8).reshape(-1, CIFAR_RECORD)
        if records[:, 0].max() > 9:
            raise DataError(f"{path}: label {records[:, 0].max()} out of range 0-9")
        ys.append(records[:, 0])
        xs.append(records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    x = np.concatenate(xs).astype(np.float32) / 255.0
    return Dataset(x, np.concatenate(ys).astype(np.int32))


def _find(data_dir: str, stem: str) -> str | None:
    for candidate in (stem, stem + ".gz"):
        path = os.path.join(data_dir, candidate)
        if os.path.exists(path):
            return path
    return None


def _raw_folder(name: str, data_dir: str) -> dict[str, Dataset]:
    """Parse every split found in a folder of raw files: {'train'?, 'test'?}."""
    if not os.path.isdir(data_dir):
        raise DataError(f"data folder {data_dir!r} does not exist")
    splits = {}
    if name == "cifar10":
        nested = os.path.join(data_dir, "cifar-10-batches-bin")
        folder = nested if os.path.isdir(nested) else data_dir
        train = sorted(glob.glob(os.path.join(folder, "data_batch_*.bin")))
        test = os.path.join(folder, "test_batch.bin")
        if train:
            splits["train"] = read_cifar_batches(train)
        if os.path.exists(test):
            splits["test"] = read_cifar_batches([test])
        wanted = "data_batch_*.bin / test_batch.bin"
    else:
        for split, prefix in (("train", "train"), ("test", "t10k")):
            images = _find(data_dir, f"{prefix}-images-idx3-ubyte")
            labels = _find(data_dir, f"{prefix}-labels-idx1-ubyte")
            if images and labels:
                splits[split] = read_idx_pair(images, labels)
            elif images or labels:
                raise DataError(f"{data_dir}: found {images or labels} but not its "
                                f"{'labels' if images else 'images'} file")
        wanted = "train-/t10k-images-idx3-ubyte[.gz] and -labels-idx1-ubyte[.gz]"
    if not splits:
        raise DataError(f"no {name} files in {data_dir!r}; expected {wanted}")
    return splits


# ------------------------------------------------------------------ tfds ----

TFDS_HOST = ("storage.googleapis.com", 443)


def _online(timeout_s: float = 3.0) -> bool:
    try:
        with socket.create_connection(TFDS_HOST, timeout=timeout_s):
            return True
    except OSError:
        return False


def _tfds(name: str, split: str, download: bool) -> Dataset:
    """One split through tensorflow-datasets; fails fast and clearly offline."""
    hint = (f"or use raw files instead: --config.data_dir=/path/to/{name} "
            f"(e.g. --config.data_dir=../shared/data/mnist for MNIST)")
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise DataError(f"tensorflow-datasets is not installed (pip install -e '.[tfds]'), {hint}") from None
    if download and not _online():
        raise DataError(f"cannot reach {TFDS_HOST[0]} to download {name} (offline?); {hint}")
    try:
        # Fixed-size batches, not batch_size=-1 (which crashed under tfds' mock data).
        batches = list(tfds.as_numpy(tfds.load(name, split=split, batch_size=4096,
                                               as_supervised=True, download=download)))
    except AssertionError as e:  # tfds' way of saying "not prepared" when download=False
        raise DataError(f"{name} is not prepared in the tfds data dir ({e}); pass "
                        f"--config.tfds_download=True to download it, {hint}") from None
    images = np.concatenate([b[0] for b in batches]).astype(np.float32) / 255.0
    labels = np.concatenate([b[1] for b in batches]).astype(np.int32)
    return Dataset(images, labels)


# ----------------------------------------------------------- minibatches ----

class Batches:
    """A shared, seeded sequence of minibatches; batch ``i`` is always the same.

    Batch ``i`` is slice ``i % per_epoch`` of epoch ``i // per_epoch``'s
    permutation, drawn from ``default_rng([seed, epoch])``, so the sequence
    does not depend on which thread asks or when. Each epoch's last partial
    batch is dropped (``per_epoch = n // batch_size``), so every minibatch has
    the same shape and the jitted gradient compiles once; the dropped examples
    differ per epoch, since each epoch reshuffles. Thread-safe.
    """

    def __init__(self, data: Dataset, batch_size: int, seed: int):
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if batch_size > len(data.y):
            raise ValueError(f"batch_size {batch_size} is larger than the training set "
                             f"({len(data.y)} examples)")
        self.data, self.batch_size, self.seed = data, batch_size, seed
        self.per_epoch = len(data.y) // batch_size
        self._lock = threading.Lock()
        self._orders: dict[int, np.ndarray] = {}  # the two most recent epochs

    def indices(self, i: int) -> np.ndarray:
        epoch, k = divmod(i, self.per_epoch)
        with self._lock:
            order = self._orders.get(epoch)
            if order is None:
                order = np.random.default_rng([self.seed, epoch]).permutation(len(self.data.y))
                self._orders = {e: o for e, o in self._orders.items() if e > epoch - 2}
                self._orders[epoch] = order
        return order[k * self.batch_size:(k + 1) * self.batch_size]

    def get(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Minibatch number ``i`` as (x, y)."""
        index = self.indices(i)
        return self.data.x[index], self.data.y[index]
