"""Small fake MNIST files and a local HTTP server, for offline tests.

The fake files have the real names and the real idx format (see
download_mnist.py) but only a few hundred random images, so tests run fast and
never need the network. Everything is deterministic for a given seed.
"""

import functools
import gzip
import hashlib
import struct
import threading
from contextlib import contextmanager
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np

IMAGE_MAGIC, LABEL_MAGIC = 2051, 2049


def write_idx_images(path, images):
    """Write a uint8 array [N, 28, 28] as an uncompressed idx image file."""
    Path(path).write_bytes(_idx_bytes(images, IMAGE_MAGIC))


def write_idx_labels(path, labels):
    """Write a uint8 array [N] as an uncompressed idx label file."""
    Path(path).write_bytes(_idx_bytes(labels, LABEL_MAGIC))


def _idx_bytes(array, magic):
    """Big-endian header (magic number, then each dimension) + the bytes."""
    array = np.asarray(array, dtype=np.uint8)
    header = struct.pack(f">{1 + array.ndim}I", magic, *array.shape)
    return header + array.tobytes()


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


def _fake_files(n_train, n_test, seed, ink_by_label=False):
    """{MNIST file name: its uncompressed idx content}."""
    arrays = fake_mnist_arrays(n_train, n_test, seed, ink_by_label)
    files = {}
    for prefix, split in (("train", "train"), ("t10k", "test")):
        images, labels = arrays[split]
        files[f"{prefix}-images-idx3-ubyte"] = _idx_bytes(images, IMAGE_MAGIC)
        files[f"{prefix}-labels-idx1-ubyte"] = _idx_bytes(labels, LABEL_MAGIC)
    return files


def write_fake_mnist_raw(root, n_train=300, n_test=100, seed=0, ink_by_label=False):
    """Install unpacked fake files in ROOT/MNIST/raw/ like download_mnist.py.

    Returns {name: MD5 of the file}, usable as download_mnist's ``files``.
    """
    folder = Path(root) / "MNIST" / "raw"
    folder.mkdir(parents=True, exist_ok=True)
    checksums = {}
    for name, data in _fake_files(n_train, n_test, seed, ink_by_label).items():
        (folder / name).write_bytes(data)
        checksums[name] = _md5(data)
    return checksums


def write_fake_mnist_gz(folder, n_train=300, n_test=100, seed=0):
    """Write the four MNIST-named .gz files into FOLDER, like a mirror.

    Returns {name without .gz: MD5 of the uncompressed content}, which is the
    shape of download_mnist.FILES, so it can be passed as ``files``.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    checksums = {}
    for name, data in _fake_files(n_train, n_test, seed).items():
        (folder / f"{name}.gz").write_bytes(gzip.compress(data, mtime=0))
        checksums[name] = _md5(data)
    return checksums


def _md5(data):
    return hashlib.md5(data).hexdigest()


class QuietHandler(SimpleHTTPRequestHandler):
    """Serves a folder quietly; records each GET path in server.request_log."""

    def do_GET(self):
        self.record_request()
        super().do_GET()

    def record_request(self):
        self.server.request_log.append(self.path)

    def log_message(self, format, *args):
        pass


@contextmanager
def serve_folder(folder, handler_class=QuietHandler, request_log=None):
    """Serve FOLDER over HTTP on 127.0.0.1; yield "http://127.0.0.1:PORT/".

    handler_class: a QuietHandler subclass, to misbehave on purpose.
    request_log: a list that receives the path of every GET request.
    """
    handler = functools.partial(handler_class, directory=str(folder))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.request_log = [] if request_log is None else request_log
    # A short poll interval makes shutdown() return quickly (default: 0.5 s).
    thread = threading.Thread(target=server.serve_forever, args=(0.01,),
                              daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
