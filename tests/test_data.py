import gzip
import os

import numpy as np
import pytest

from asgd import data


def write_idx(folder, prefix, images, labels, gz=False):
    opener = gzip.open if gz else open
    suffix = ".gz" if gz else ""
    n, rows, cols = images.shape
    with opener(os.path.join(folder, f"{prefix}-images-idx3-ubyte{suffix}"), "wb") as f:
        f.write(np.array([2051, n, rows, cols], ">u4").tobytes() + images.astype(np.uint8).tobytes())
    with opener(os.path.join(folder, f"{prefix}-labels-idx1-ubyte{suffix}"), "wb") as f:
        f.write(np.array([2049, n], ">u4").tobytes() + labels.astype(np.uint8).tobytes())


def random_images(n, seed=0, shape=(28, 28)):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, *shape)), rng.integers(0, 10, n)


@pytest.mark.parametrize("gz", [False, True])
def test_idx_round_trip_with_train_and_test_files(tmp_path, gz):
    train_x, train_y = random_images(30, 1)
    test_x, test_y = random_images(12, 2)
    write_idx(tmp_path, "train", train_x, train_y, gz)
    write_idx(tmp_path, "t10k", test_x, test_y, gz)
    train = data.load("mnist", "train", str(tmp_path))
    evalset = data.load("fashion_mnist", "eval", str(tmp_path))
    assert train.x.shape == (30, 28, 28, 1) and train.x.dtype == np.float32
    assert train.y.dtype == np.int32
    np.testing.assert_array_equal(train.y, train_y)
    np.testing.assert_allclose(evalset.x[..., 0], test_x / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(evalset.y, test_y)


def test_single_split_folder_is_held_out_deterministically(tmp_path):
    x, y = random_images(50)
    write_idx(tmp_path, "t10k", x, y)
    train = data.load("mnist", "train", str(tmp_path), eval_fraction=0.2)
    evalset = data.load("mnist", "eval", str(tmp_path), eval_fraction=0.2)
    assert (len(train.y), len(evalset.y)) == (40, 10)
    again = data.load("mnist", "eval", str(tmp_path), eval_fraction=0.2)
    np.testing.assert_array_equal(evalset.x, again.x)
    # Disjoint and complete: every image lands in exactly one split.
    rows = lambda d: {tuple(r) for r in (d.x.reshape(len(d.y), -1) * 255).round().astype(int)}
    assert rows(train).isdisjoint(rows(evalset))
    assert len(rows(train) | rows(evalset)) == len({tuple(r) for r in x.reshape(50, -1)})


@pytest.mark.parametrize("damage, message", [
    (lambda b: b[:-5], "truncated or corrupt"),
    (lambda b: b[:10], "truncated IDX header"),
    (lambda b: np.array([1234], ">u4").tobytes() + b[4:], "bad magic number 1234"),
])
def test_corrupt_idx_images_are_clear_errors(tmp_path, damage, message):
    x, y = random_images(5)
    write_idx(tmp_path, "t10k", x, y)
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(data.DataError, match=message) as error:
        data.load("mnist", "train", str(tmp_path))
    assert "t10k-images-idx3-ubyte" in str(error.value)


def test_image_and_label_counts_must_agree(tmp_path):
    x, y = random_images(5)
    write_idx(tmp_path, "t10k", x, y)
    write_idx(tmp_path / "..", "ignored", x, y)
    labels = tmp_path / "t10k-labels-idx1-ubyte"
    labels.write_bytes(np.array([2049, 4], ">u4").tobytes() + y[:4].astype(np.uint8).tobytes())
    with pytest.raises(data.DataError, match="5 images but .* 4 labels"):
        data.load("mnist", "train", str(tmp_path))


def test_truncated_gzip_is_a_clear_error(tmp_path):
    x, y = random_images(5)
    write_idx(tmp_path, "t10k", x, y, gz=True)
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-12])
    with pytest.raises(data.DataError, match="t10k-labels-idx1-ubyte.gz"):
        data.load("mnist", "train", str(tmp_path))


def write_cifar(path, labels, seed=0):
    pixels = np.random.default_rng(seed).integers(0, 256, (len(labels), 3072))
    records = np.concatenate([np.asarray(labels)[:, None], pixels], axis=1).astype(np.uint8)
    path.write_bytes(records.tobytes())
    return pixels


def test_cifar_batches(tmp_path):
    pixels = write_cifar(tmp_path / "data_batch_1.bin", [3, 1, 4])
    write_cifar(tmp_path / "data_batch_2.bin", [1, 5])
    write_cifar(tmp_path / "test_batch.bin", [9, 2])
    train = data.load("cifar10", "train", str(tmp_path))
    assert train.x.shape == (5, 32, 32, 3)
    np.testing.assert_array_equal(train.y, [3, 1, 4, 1, 5])
    # CHW records become HWC images.
    np.testing.assert_allclose(train.x[0, 0, 1], pixels[0, [1, 1025, 2049]] / 255.0, rtol=1e-6)
    assert len(data.load("cifar10", "eval", str(tmp_path)).y) == 2


def test_truncated_cifar_is_a_clear_error(tmp_path):
    write_cifar(tmp_path / "test_batch.bin", [1, 2])
    path = tmp_path / "test_batch.bin"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(data.DataError, match="test_batch.bin.*not a whole number"):
        data.load("cifar10", "train", str(tmp_path))


def test_missing_folder_and_files(tmp_path):
    with pytest.raises(data.DataError, match="does not exist"):
        data.load("mnist", "train", str(tmp_path / "nope"))
    with pytest.raises(data.DataError, match="no mnist files"):
        data.load("mnist", "train", str(tmp_path))


def test_real_shared_mnist(shared_mnist):
    train = data.load("mnist", "train", shared_mnist, eval_fraction=0.2)
    evalset = data.load("mnist", "eval", shared_mnist, eval_fraction=0.2)
    assert (len(train.y), len(evalset.y)) == (8000, 2000)
    assert train.x.shape[1:] == (28, 28, 1) and 0.0 <= train.x.min() and train.x.max() == 1.0
    assert np.bincount(train.y, minlength=10).min() > 600  # every class present


def test_digits_is_embedded_and_split():
    train, evalset = data.load("digits", "train"), data.load("digits", "eval")
    assert len(train.y) + len(evalset.y) == 1797
    assert train.x.shape[1:] == (8, 8, 1) and train.x.max() <= 1.0


@pytest.mark.slow
def test_tfds_fails_fast_and_clearly_offline():
    import time
    start = time.perf_counter()
    with pytest.raises(data.DataError, match="data_dir"):
        data.load("mnist", "train", None, download=True)
    assert time.perf_counter() - start < 15


def test_batches_are_deterministic_and_reshuffled_per_epoch():
    ds = data.load("digits", "train")
    a, b = data.Batches(ds, 100, seed=3), data.Batches(ds, 100, seed=3)
    assert a.per_epoch == len(ds.y) // 100
    np.testing.assert_array_equal(a.get(5)[1], b.get(5)[1])
    epoch0 = np.concatenate([a.indices(i) for i in range(a.per_epoch)])
    epoch1 = np.concatenate([a.indices(i) for i in range(a.per_epoch, 2 * a.per_epoch)])
    assert len(set(epoch0)) == len(epoch0) == a.per_epoch * 100  # no repeats within an epoch
    assert not np.array_equal(epoch0, epoch1)
    assert not np.array_equal(data.Batches(ds, 100, seed=4).indices(0), a.indices(0))
    with pytest.raises(ValueError, match="larger than the training set"):
        data.Batches(ds, 10_000, seed=0)


def test_tfds_path_on_mock_data():
    """The real tfds code path, on tfds' mock data (needs the tfds extra with TensorFlow)."""
    tfds = pytest.importorskip("tensorflow_datasets")
    pytest.importorskip("tensorflow")
    with tfds.testing.mock_data(num_examples=20):
        train = data.load("mnist", "train", None)
    assert train.x.shape == (20, 28, 28, 1) and train.x.dtype == np.float32
    assert train.y.dtype == np.int32 and 0.0 <= train.x.min() and train.x.max() <= 1.0
