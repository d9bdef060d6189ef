"""Step 10: download MNIST, check it, and load it into PyTorch.

    python download_mnist.py                          # into data/MNIST/raw/
    python download_mnist.py --mirror ~/mnist-copy    # from a folder with the four .gz files
    python download_mnist.py --data /tmp/data         # into /tmp/data/MNIST/raw/

MNIST is four gzip files. For each one this script tries the `--mirror`s, then the
public `MIRRORS`, until one delivers it; it unzips the file as it streams in, into a
temporary file next to its final place, and renames it there once the MD5 of the
unzipped bytes is the published one (`FILES`). So a failed or interrupted download
never leaves a partial file in place: Ctrl-C removes the temporary file, and the next
run removes one that a killed run left. A mirror gets `timeout` seconds to connect and
for each read, and `deadline` seconds per file, so a mirror that stalls, or sends a
byte now and then, is given up on. `main.py` calls `ensure_mnist` at every start: it
checks the MD5 of every installed file (a fraction of a second) and installs again a
file that is missing or corrupt, so a damaged file is never trained or scored on.

The files land where `torchvision.datasets.MNIST(root="data")` looks for them:

    data/MNIST/raw/train-images-idx3-ubyte   60000 training images, 28x28
    data/MNIST/raw/train-labels-idx1-ubyte   their labels, 0-9
    data/MNIST/raw/t10k-images-idx3-ubyte    10000 test images
    data/MNIST/raw/t10k-labels-idx1-ubyte    their labels

The idx format: a big-endian header, then the values, one unsigned byte each.

    bytes 0-3   the "magic number": 0, 0, the type (0x08 = unsigned byte), the
                number of dimensions (3 for images, 1 for labels)
    then        4 bytes per dimension: N, 28, 28 for images; N for labels
    then        N*28*28 (or N) bytes, image after image, row after row

`load_mnist` reads them with torchvision's `read_image_file` and `read_label_file`.
"""
import argparse
import shlex
import sys
import time
import zlib
from http.client import HTTPException
from pathlib import Path
from urllib.request import Request, urlopen

from torchvision.datasets.mnist import read_image_file, read_label_file
from torchvision.datasets.utils import USER_AGENT, check_integrity, check_md5
from tqdm import tqdm

# Public copies of the original files, tried in this order after --mirror: the ones
# torchvision and TensorFlow download from, then the original site, often slow.
MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)

# Installed file name -> published MD5 of its unzipped content; mirrors serve NAME.gz.
FILES = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
SPLITS = {"train": "train", "test": "t10k"}  # split -> file name prefix
CHUNK = 1 << 16  # the most bytes read at a time


class MnistDownloadError(RuntimeError):
    """No mirror delivered a file; the one-line message says what each answered."""


def ensure_mnist(root, mirrors=(), timeout=30, deadline=600):
    """Install into ROOT/MNIST/raw/ each file of FILES that is missing or corrupt.

    mirrors: tried before MIRRORS; each an http(s):// or file:// URL, or a folder
    (relative or absolute) holding the four .gz files.
    timeout: seconds a mirror may take to connect, and then for each read.
    deadline: seconds a mirror may take to send a whole file.
    Returns the folder; raises MnistDownloadError when no mirror delivers a file.
    """
    raw = Path(root) / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for name, md5 in FILES.items():
        path, part = raw / name, raw / f"{name}.part"
        part.unlink(missing_ok=True)  # left by a run that was killed
        if check_integrity(path, md5):
            continue
        state = "corrupt (wrong MD5)" if path.exists() else "missing"
        if path.exists():
            print(f"{path} is {state}: installing it again", file=sys.stderr)
        answers = []
        for mirror in (*mirrors, *MIRRORS):
            try:
                _download(mirror, name, part, timeout, deadline)
                if not check_md5(part, md5):
                    raise ValueError("wrong MD5")
                part.replace(path)  # atomic: the same folder
                break
            except (OSError, ValueError, HTTPException, zlib.error) as error:
                answers.append(f"{mirror}: {error}")
            finally:
                part.unlink(missing_ok=True)  # gone once renamed
        else:
            raise MnistDownloadError(
                f"{path} is {state} and no mirror delivered {name}.gz "
                f"({'; '.join(answers) or 'no mirror to try'}); install it from a folder "
                f"with the four .gz files: {_command(root)} --mirror FOLDER")
    return raw


def _download(mirror, name, part, timeout, deadline):
    """Stream MIRROR/NAME.gz, unzipped, into the file PART."""
    url = str(mirror) if "://" in str(mirror) else Path(mirror).resolve().as_uri()
    request = Request(f"{url.rstrip('/')}/{name}.gz", headers={"User-Agent": USER_AGENT})
    give_up_at = time.monotonic() + deadline
    unzip = zlib.decompressobj(16 + zlib.MAX_WBITS)  # 16 +: gzip, not bare zlib
    with urlopen(request, timeout=timeout) as response, open(part, "wb") as out:
        size = response.headers.get("Content-Length", "")
        with tqdm(total=int(size) if size.isdigit() else None, desc=name,
                  unit="B", unit_scale=True) as bar:
            # read1 returns what has arrived, so the clock is checked as bytes drip in.
            while chunk := response.read1(CHUNK):
                if time.monotonic() > give_up_at:
                    raise TimeoutError(f"not complete after {deadline} s")
                out.write(unzip.decompress(chunk))
                bar.update(len(chunk))


def load_mnist(root, split):
    """(images, labels) of the "train" or "test" split, as installed by ensure_mnist.

    images: uint8 [N, 28, 28], 0 (background) to 255 (ink); labels: int64 [N], 0-9.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: use 'train' or 'test'")
    images_path, labels_path = (Path(root) / "MNIST" / "raw" / f"{SPLITS[split]}-{kind}-ubyte"
                                for kind in ("images-idx3", "labels-idx1"))
    images = _read(read_image_file, images_path, root)
    labels = _read(read_label_file, labels_path, root)
    if images.shape[1:] != (28, 28) or len(images) != len(labels):
        raise ValueError(f"{images_path}: {tuple(images.shape)} images for {len(labels)} labels; "
                         f"install MNIST again with: {_command(root)}")
    return images, labels


def _read(reader, path, root):
    """READER(PATH), or a one-line error that names the file and the command that fixes it."""
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; install MNIST with: {_command(root)}")
    try:
        return reader(str(path))
    except (AssertionError, KeyError, RuntimeError, TypeError, ValueError):  # torchvision's
        raise ValueError(f"{path} is not a valid idx file; install it again with: "
                         f"{_command(root)}") from None


def _command(root):
    return f"python download_mnist.py --data {shlex.quote(str(root))}"


def main(argv=None):
    """The command line; returns the exit status: 0 done, 1 failed, 130 Ctrl-C."""
    parser = argparse.ArgumentParser(
        description="Download the four MNIST files, check their MD5s and unzip them into "
                    "DIR/MNIST/raw/. Files already there with the right MD5 are kept.")
    parser.add_argument("--data", default="data", metavar="DIR",
                        help="install into DIR/MNIST/raw/ (default: data)")
    parser.add_argument("--mirror", action="append", default=[], metavar="URL_OR_DIR",
                        help="where to find the .gz files before the public mirrors (repeatable): an "
                             "http(s):// or file:// URL, or a folder")
    args = parser.parse_args(argv)
    try:
        raw = ensure_mnist(args.data, args.mirror)
    except MnistDownloadError as error:
        print(f"download_mnist.py: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted; no partial file was kept", file=sys.stderr)
        return 130
    print(f"MNIST is in {raw}, every MD5 checked")
    return 0


if __name__ == "__main__":
    sys.exit(main())
