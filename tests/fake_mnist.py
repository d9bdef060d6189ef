"""Small fake MNIST files: the real names and idx format (see download_mnist.py), a few
hundred random images, the same for a given seed."""
import gzip
import hashlib
import struct
from pathlib import Path

import numpy as np


def fake_mnist_arrays(n_train=300, n_test=100, seed=0, ink_by_label=False):
    """Return {"train": (images, labels), "test": (images, labels)} as uint8.

    Each image is dark with a random bright scribble inside the central
    20x20 box, roughly where MNIST draws its digits. With `ink_by_label`, the
    scribble of label k keeps to rows 4 + 2k to 7 + 2k, so the label shows.
    """
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in (("train", n_train), ("test", n_test)):
        images = np.zeros((n, 28, 28), dtype=np.uint8)
        ink = rng.random((n, 20, 20)) < 0.2
        images[:, 4:24, 4:24] = ink * rng.integers(128, 256, (n, 20, 20))
        labels = rng.integers(0, 10, n).astype(np.uint8)
        if ink_by_label:
            first_row = 4 + 2 * labels.astype(int)  # [n]
            rows = np.arange(28)
            outside = (rows[None, :] < first_row[:, None]) | (rows[None, :] > first_row[:, None] + 3)  # [n, 28]
            images[outside] = 0  # every column of the rows outside the label's band
        arrays[split] = (images, labels)
    return arrays


def fake_mnist_files(n_train=300, n_test=100, seed=0, ink_by_label=False):
    """{MNIST file name: its idx content}: magic number (2051 images, 2049 labels), sizes, bytes."""
    arrays = fake_mnist_arrays(n_train, n_test, seed, ink_by_label)
    files = {}
    for prefix, split in (("train", "train"), ("t10k", "test")):
        for kind, magic, array in zip(("images-idx3", "labels-idx1"), (2051, 2049), arrays[split]):
            header = struct.pack(f">{1 + array.ndim}I", magic, *array.shape)
            files[f"{prefix}-{kind}-ubyte"] = header + array.tobytes()
    return files


def write_fake_mnist_raw(root, n_train=300, n_test=100, seed=0, ink_by_label=False):
    """Install the fake files in ROOT/MNIST/raw/ like download_mnist.py; return {name: MD5}."""
    folder = Path(root) / "MNIST" / "raw"
    folder.mkdir(parents=True, exist_ok=True)
    checksums = {}
    for name, data in fake_mnist_files(n_train, n_test, seed, ink_by_label).items():
        (folder / name).write_bytes(data)
        checksums[name] = hashlib.md5(data).hexdigest()
    return checksums


def write_fake_mnist_gz(folder, n_train=300, n_test=100, seed=0):
    """Write the four NAME.gz files into FOLDER, like a mirror; return {name: MD5 of the unzipped content}."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    checksums = {}
    for name, data in fake_mnist_files(n_train, n_test, seed).items():
        (folder / f"{name}.gz").write_bytes(gzip.compress(data, mtime=0))
        checksums[name] = hashlib.md5(data).hexdigest()
    return checksums
