"""Download MNIST, unzip it, and load it into PyTorch.

main.py calls `ensure_mnist` when the files are missing; to fetch them ahead:

    python download_mnist.py                        # into data/MNIST/raw/
    python download_mnist.py --mirror ~/mnist-copy  # from a local copy

MNIST is published as four gzip files. This script fetches each one from the
first mirror that answers, decompresses it while it streams in, checks the MD5
of the *uncompressed* bytes against the published value (so it does not matter
how a mirror compressed the file) and stores it under ``ROOT/MNIST/raw/``:

    data/MNIST/raw/train-images-idx3-ubyte   60000 training images
    data/MNIST/raw/train-labels-idx1-ubyte   their labels (0-9)
    data/MNIST/raw/t10k-images-idx3-ubyte    10000 test images
    data/MNIST/raw/t10k-labels-idx1-ubyte    their labels

This is the layout ``torchvision.datasets.MNIST(root="data")`` reads, but the
rest of this project uses ``load_mnist`` below, which needs no torchvision.

A file is first written to a temporary ``NAME.PID.part`` file next to its
final name and renamed only once its MD5 is right, so an interrupted or corrupt
download never leaves a half-written file behind: Ctrl-C, and SIGTERM on the
command line, delete it on the way out, and the ones that a run killed
outright (SIGKILL, a crash) left behind are deleted by the next run. Files that
are already present with the right MD5 are not downloaded again.

A mirror gets ``--timeout`` seconds (default 30) to connect and for each read,
and ``--deadline`` seconds (default 600) per file, from the request to its last
byte: a mirror that sends a byte now and then never times out, but is not
waited for either. A mirror that fails in any way (no answer, an HTTP error,
bad data, a wrong MD5) is left for the next one, after ``--retries`` more
tries if the failure may be temporary.

The idx format
--------------
Each file is a big-endian header followed by the raw data:

    bytes 0-1   always 0
    byte  2     data type, 0x08 = unsigned byte
    byte  3     number of dimensions (3 for images, 1 for labels)
    then        one 4-byte size per dimension: N, 28, 28 for images,
                N for labels
    then        N*28*28 (or N) unsigned bytes, row by row

Read as one 32-bit number the first four bytes are the "magic number": 2051
(0x00000803) for image files, 2049 (0x00000801) for label files.
"""

import argparse
import gzip
import hashlib
import math
import os
import re
import shlex
import signal
import struct
import sys
import threading
import time
import zlib
from contextlib import contextmanager, suppress
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

import requests
import torch
import urllib3
from tqdm import tqdm
from tqdm.utils import CallbackIOWrapper

# Public copies of the original files, tried in this order. The first two are
# the ones torchvision and the TensorFlow tutorials download from; the original
# site is last because it is often slow or refuses downloads.
MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)

# Installed file name -> published MD5 of its uncompressed content.
# Mirrors serve each file as NAME + ".gz".
FILES = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}

SPLITS = {"train": "train", "test": "t10k"}  # split -> file name prefix
IMAGE_MAGIC, LABEL_MAGIC = 2051, 2049
IMAGE_SIZE = 28
CHUNK_SIZE = 1 << 20  # bytes handled at a time while streaming
# The name of a file while it is downloaded: NAME.PID.part (see
# _install_verified), with the NAME and the PID of the process writing it.
PART_NAME = re.compile(r"(?P<name>.+)\.(?P<pid>[0-9]+)\.part")


class MnistDownloadError(RuntimeError):
    """No mirror delivered a file; the message says what each one answered."""


class _MirrorFailure(Exception):
    """One attempt to get one file from one mirror failed.

    ``permanent`` failures (HTTP 4xx, a malformed answer, a missing local
    file) are not retried: asking again would give the same answer.
    """

    def __init__(self, reason, permanent=False):
        super().__init__(reason)
        self.permanent = permanent


# --------------------------------------------------------------------------
# Downloading
# --------------------------------------------------------------------------

def download_mnist(root="data", mirrors=(), files=None, timeout=30,
                   deadline=600, retries=1, progress=True,
                   default_mirrors=True):
    """Install the MNIST files into ROOT/MNIST/raw/ and return their paths.

    mirrors: extra sources tried before ``MIRRORS``; each is an http(s) URL,
        a file:// URL or a local directory holding the ``.gz`` files.
    files: name -> MD5 of the uncompressed file; defaults to ``FILES``.
    timeout: seconds to wait for a mirror to connect and for each read.
    deadline: seconds one file may take from one mirror, from the request to
        its last byte; checked whenever data arrives (a mirror that stops
        sending is caught by ``timeout``).
    retries: extra attempts per mirror after a failure that may be temporary.
    progress: show a progress bar per file, messages and a final summary.
    default_mirrors: also try ``MIRRORS``; set to False to stay offline.

    Raises MnistDownloadError when no mirror delivers a file.
    """
    files = FILES if files is None else files
    sources = list(mirrors) + (list(MIRRORS) if default_mirrors else [])
    target = _raw_folder(root)
    target.mkdir(parents=True, exist_ok=True)
    _remove_stale_parts(target, files, progress)

    installed = []  # (path, mirror it came from, or None if already there)
    for name, md5 in files.items():
        path = target / name
        if path.exists():
            if _md5_of_file(path) == md5:
                installed.append((path, None))
                continue
            _say(progress, f"{path} has the wrong MD5, downloading it again")
        mirror = _fetch_from_mirrors(name, md5, target, sources, root,
                                     timeout, deadline, retries, progress)
        installed.append((path, mirror))

    if progress:
        _print_summary(target, installed)
    return [path for path, _ in installed]


def ensure_mnist(root="data", mirrors=(), **options):
    """Download MNIST only if one of its files is missing; return the paths.

    Takes the same options as ``download_mnist``. Unlike it, this does not
    re-check the MD5 of files that are present, so it is instant once the
    data is installed.
    """
    files = options.get("files") or FILES
    paths = [_raw_folder(root) / name for name in files]
    if all(path.exists() for path in paths):
        # Nothing to download, but a run killed while downloading may have left its .part files.
        _remove_stale_parts(_raw_folder(root), files, options.get("progress", True))
        return paths
    return download_mnist(root, mirrors, **options)


def _remove_stale_parts(folder, names, progress):
    """Delete the .part files that killed runs left in FOLDER.

    Only files named like ours (``PART_NAME``), for one of NAMES, whose PID is
    no running process's: a download running at the same time keeps its file.
    """
    for path in folder.iterdir():
        part = PART_NAME.fullmatch(path.name)
        if (part and part["name"] in names
                and not _is_running(int(part["pid"]))):
            with suppress(OSError):  # someone else's file, or in use (Windows)
                path.unlink()
                _say(progress, f"removed {path}, left by an interrupted run")


def _is_running(pid):
    """Whether a process other than this one has this PID."""
    if pid == os.getpid():
        # This run has written nothing yet, so a killed run that had the same
        # PID wrote it: PIDs come round again, in containers soon.
        return False
    if os.name == "nt":
        # os.kill would end the process; and a file that another process is
        # writing cannot be deleted there anyway.
        return False
    try:
        os.kill(pid, 0)  # signal 0: only checks that the process exists
    except (ProcessLookupError, OverflowError):  # none, or too big to be one
        return False
    except PermissionError:  # it exists, and is another user's
        pass
    return True


def _fetch_from_mirrors(name, md5, target, mirrors, root, timeout, deadline,
                        retries, progress):
    """Try each mirror in turn until one delivers NAME; return that mirror."""
    failures = []
    for mirror in mirrors:
        for attempt in range(1, retries + 2):
            try:
                _fetch(mirror, name, md5, target, timeout, deadline,
                       progress)
                return mirror
            except _MirrorFailure as failure:
                failures.append(f"{mirror} (attempt {attempt}): {failure}")
                _say(progress, f"{name}.gz from {mirror}: {failure}")
                if failure.permanent:
                    break
    raise MnistDownloadError(_failure_message(name, failures, root))


def _fetch(mirror, name, md5, target, timeout, deadline, progress):
    """Stream NAME.gz from MIRROR, unzip it and install it as TARGET/NAME.

    Translates everything that can go wrong into a _MirrorFailure.
    """
    give_up_at = time.monotonic() + deadline
    try:
        with _open_source(mirror, name + ".gz", timeout) as (stream, size):
            _install_verified(_DeadlineReader(stream, give_up_at), size,
                              target / name, md5, progress)
    except _DeadlinePassed:
        raise _MirrorFailure(f"not complete after {deadline} s, the deadline "
                             "for one file") from None
    except (requests.Timeout, urllib3.exceptions.ReadTimeoutError):
        raise _MirrorFailure(f"timed out after {timeout} s") from None
    except (requests.ConnectionError, urllib3.exceptions.HTTPError) as error:
        raise _MirrorFailure(f"connection error: {_brief(error)}") from None
    except requests.RequestException as error:  # invalid URL, redirect loop
        raise _MirrorFailure(f"request failed: {error}",
                             permanent=True) from None
    except (gzip.BadGzipFile, EOFError, zlib.error) as error:
        raise _MirrorFailure(f"bad gzip data: {error}") from None


@contextmanager
def _open_source(mirror, filename, timeout):
    """Yield (binary stream of MIRROR/FILENAME, its size in bytes or None)."""
    if mirror.startswith(("http://", "https://")):
        url = mirror.rstrip("/") + "/" + filename
        with requests.get(url, stream=True, timeout=timeout) as response:
            if response.status_code != 200:
                raise _MirrorFailure(
                    f"HTTP {response.status_code} {response.reason}",
                    permanent=400 <= response.status_code < 500)
            size = _announced_size(response.headers)
            # response.raw gives the bytes exactly as sent. (iter_content()
            # would already unzip them if the server labelled the .gz file
            # "Content-Encoding: gzip", and we would unzip them twice.)
            yield response.raw, size
    elif "://" in mirror and not mirror.startswith("file://"):
        raise _MirrorFailure("unsupported URL, use http(s):// or file://",
                             permanent=True)
    else:
        if mirror.startswith("file://"):
            mirror = url2pathname(urlparse(mirror).path)
        path = Path(mirror) / filename
        try:
            stream = path.open("rb")
        except (FileNotFoundError, NotADirectoryError):
            raise _MirrorFailure(f"missing local file {path}",
                                 permanent=True) from None
        except OSError as error:  # e.g. a folder of that name, no permission
            raise _MirrorFailure(
                f"cannot read local file {path}: {error.strerror}",
                permanent=True) from None
        with stream:
            yield stream, path.stat().st_size


class _DeadlinePassed(Exception):
    """A file took longer than its deadline to arrive."""


class _DeadlineReader:
    """The read() that GzipFile calls, on STREAM, until a deadline.

    A plain read(n) of a network stream waits until all n bytes are there,
    however slowly they come. This one gathers them from the stream's read1,
    which returns what one system call brings, and checks the clock before
    each: _DeadlinePassed once time.monotonic() is past GIVE_UP_AT.
    """

    def __init__(self, stream, give_up_at):
        # Responses of urllib3 1.x have no read1: there the clock is checked
        # only between whole reads.
        self.read_some = getattr(stream, "read1", stream.read)
        self.give_up_at = give_up_at

    def read(self, size):
        """SIZE bytes, fewer only at the end of the stream."""
        data = bytearray()
        while len(data) < size:
            if time.monotonic() > self.give_up_at:
                raise _DeadlinePassed
            if not (chunk := self.read_some(size - len(data))):
                break
            data += chunk
        return bytes(data)


def _announced_size(headers):
    """The body size an HTTP response announces, None if unknown.

    A Content-Length that is not a number leaves the end of the body unknown,
    a broken answer that HTTP says must not be used: a _MirrorFailure.
    """
    length = headers.get("Content-Length", "0")
    if not re.fullmatch("[0-9]+", length):
        raise _MirrorFailure(f"bad Content-Length header {length!r}",
                             permanent=True)
    return int(length) or None


def _install_verified(stream, size, path, md5, progress):
    """Unzip STREAM into a temporary file; rename it to PATH if MD5 matches.

    The temporary file lives next to PATH, so the final rename is atomic; its
    name holds our process id, so two runs at once do not write to the same
    file. It is deleted whatever happens (error, Ctrl-C, SIGTERM in main())
    unless renamed; if the process is killed outright, by the next run.
    """
    part = path.with_name(f"{path.name}.{os.getpid()}.part")  # see PART_NAME
    try:
        with part.open("wb") as out:
            digest = _gunzip(stream, out, size, path.name, progress)
        if digest != md5:
            raise _MirrorFailure(f"MD5 mismatch: got {digest}, expected {md5}")
        part.replace(path)
    finally:
        part.unlink(missing_ok=True)  # no-op once renamed


def _gunzip(stream, out, size, name, progress):
    """Copy the unzipped STREAM to OUT; return the MD5 of what was written."""
    md5 = hashlib.md5()
    # The bar counts compressed bytes, the ones that travel over the network:
    # CallbackIOWrapper reports the length of every read() of STREAM to it.
    with tqdm(total=size, desc=name, unit="B", unit_scale=True,
              disable=not progress) as bar:
        counted = CallbackIOWrapper(bar.update, stream, "read")
        with gzip.GzipFile(fileobj=counted, mode="rb") as unzipped:
            while chunk := unzipped.read(CHUNK_SIZE):
                md5.update(chunk)
                out.write(chunk)
    return md5.hexdigest()


def _md5_of_file(path):
    md5 = hashlib.md5()
    with path.open("rb") as stream:
        while chunk := stream.read(CHUNK_SIZE):
            md5.update(chunk)
    return md5.hexdigest()


def _brief(error):
    """The innermost cause of a network error, e.g. 'Connection refused'."""
    while error.__context__ is not None:
        error = error.__context__
    return str(error) or type(error).__name__


def _failure_message(name, failures, root):
    command = ("python download_mnist.py"
               " --mirror /path/to/folder/with/the/gz/files")
    if str(root) != "data":
        command += f" --root {shlex.quote(str(root))}"
    lines = [f"could not download {name}.gz from any mirror:"]
    lines += [f"  {failure}" for failure in failures or ["(no mirror to try)"]]
    lines += ["If you have a copy of the four .gz files, install from it "
              "with:", f"  {command}"]
    return "\n".join(lines)


def _say(enabled, message):
    if enabled:
        print(message, file=sys.stderr)


def _print_summary(target, installed):
    print(f"MNIST files in {target}:")
    for path, mirror in installed:
        origin = f"downloaded from {mirror}" if mirror else "already present"
        size = _human_size(path.stat().st_size)
        print(f"  {path.name:<25} {size:>9}  {origin}")
    fetched = sum(mirror is not None for _, mirror in installed)
    if fetched == 0:
        print("Nothing downloaded: every file was already present "
              "with the right MD5.")
    else:
        print(f"Downloaded {fetched} of {len(installed)} files, "
              "all MD5s verified.")


def _human_size(n_bytes):
    """47040016 -> '47.0 MB' (powers of 1000, like the progress bars)."""
    if n_bytes < 1000:
        return f"{n_bytes} B"
    for unit in ("KB", "MB", "GB"):
        n_bytes /= 1000
        if n_bytes < 1000 or unit == "GB":
            return f"{n_bytes:.1f} {unit}"


# --------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------

def load_mnist(root="data", split="train"):
    """Return (images, labels) of the "train" or "test" split.

    images: torch.uint8 tensor [N, 28, 28], from 0 (background) to 255 (ink).
    labels: torch.int64 tensor [N], digits 0-9.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; use 'train' or 'test'")
    folder = _raw_folder(root)
    image_path = folder / f"{SPLITS[split]}-images-idx3-ubyte"
    label_path = folder / f"{SPLITS[split]}-labels-idx1-ubyte"
    for path in (image_path, label_path):
        if not path.exists():
            raise FileNotFoundError(
                f"{path} not found; fetch MNIST with: "
                f"python download_mnist.py --root {shlex.quote(str(root))}")

    images = _read_idx(image_path, IMAGE_MAGIC)
    labels = _read_idx(label_path, LABEL_MAGIC)
    if images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise ValueError(f"{image_path}: images are "
                         f"{tuple(images.shape[1:])}, expected "
                         f"{IMAGE_SIZE}x{IMAGE_SIZE}")
    if len(images) != len(labels):
        raise ValueError(f"{folder}: {len(images)} images but "
                         f"{len(labels)} labels")
    return images, labels.long()


def _read_idx(path, magic):
    """Parse an idx file of unsigned bytes into a uint8 tensor.

    MAGIC is the expected magic number; its last byte is the number of
    dimensions (see the module docstring for the format).
    """
    data = path.read_bytes()
    n_dims = magic & 0xFF
    header_size = 4 + 4 * n_dims
    if len(data) < header_size:
        raise ValueError(f"{path}: file too short for an idx header")
    found_magic, *dims = struct.unpack(f">{1 + n_dims}I", data[:header_size])
    if found_magic != magic:
        raise ValueError(f"{path}: magic number {found_magic}, "
                         f"expected {magic}")
    expected_size = header_size + math.prod(dims)
    if len(data) != expected_size:
        raise ValueError(f"{path}: {len(data)} bytes, but the header {dims} "
                         f"announces {expected_size}")
    # bytearray: a writable copy, which torch.frombuffer can share safely.
    values = torch.frombuffer(bytearray(data), dtype=torch.uint8,
                              offset=header_size)
    return values.reshape(dims)


def _raw_folder(root):
    return Path(root) / "MNIST" / "raw"


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------

def _parse_args(argv):
    parser = argparse.ArgumentParser(
        description="Download the four MNIST files, check their MD5s and "
                    "unzip them into ROOT/MNIST/raw/. Files already present "
                    "with the right MD5 are skipped.")
    parser.add_argument(
        "--root", default="data",
        help="folder to install into; the files go to ROOT/MNIST/raw/ "
             "(default: data)")
    parser.add_argument(
        "--mirror", action="append", default=[], metavar="URL_OR_DIR",
        help="extra source of the .gz files, tried before the built-in "
             "mirrors: an http(s):// URL, a file:// URL or a local folder; "
             "repeat to add several")
    parser.add_argument(
        "--no-default-mirrors", action="store_true",
        help="only try the --mirror sources, never the built-in internet "
             "mirrors")
    parser.add_argument(
        "--timeout", type=_seconds, default=30, metavar="SECONDS",
        help="give up on a mirror that does not connect or send data for this "
             "long (default: 30)")
    parser.add_argument(
        "--deadline", type=_seconds, default=600, metavar="SECONDS",
        help="give up on a mirror that has not delivered a whole file this "
             "long after it was asked for it, however slowly data keeps "
             "coming (default: 600)")
    parser.add_argument(
        "--retries", type=_count, default=1,
        help="extra attempts per mirror after a failure that may be "
             "temporary (default: 1)")
    args = parser.parse_args(argv)
    # mkdir can make ROOT/MNIST/raw if the nearest of it and its parents that
    # exists is a folder.
    raw = _raw_folder(args.root)
    nearest = next(path for path in (raw, *raw.parents) if path.exists())
    if not nearest.is_dir():
        parser.error(f"--root {args.root}: {nearest} is a file, not a folder")
    return args


def _seconds(text):
    """argparse type: a finite number of seconds above 0."""
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not 0 < seconds < math.inf:  # also false for nan
        raise argparse.ArgumentTypeError(
            f"expected a finite number of seconds above 0, got {text!r}")
    return seconds


def _count(text):
    """argparse type: a whole number, 0 or more."""
    try:
        count = int(text)
    except ValueError:
        count = -1
    if count < 0:
        raise argparse.ArgumentTypeError(
            f"expected a whole number, 0 or more, got {text!r}")
    return count


def main(argv=None, files=None):
    """Command-line entry point; returns the exit status.

    0: installed, 1: no mirror delivered a file, 130: interrupted by Ctrl-C,
    143: by SIGTERM (128 + the signal's number, as a shell reports it).
    A bad command line exits with status 2 and one line of error (argparse).

    files overrides ``FILES`` (name -> MD5), e.g. for tests with small files.
    """
    args = _parse_args(argv)
    try:
        with _sigterm_raises_terminated():
            download_mnist(args.root, args.mirror, files=files,
                           timeout=args.timeout, deadline=args.deadline,
                           retries=args.retries,
                           default_mirrors=not args.no_default_mirrors)
    except MnistDownloadError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as interrupt:
        signum = (signal.SIGTERM if isinstance(interrupt, _Terminated)
                  else signal.SIGINT)
        print(f"\ninterrupted ({signum.name}); no partial file was kept",
              file=sys.stderr)
        return 128 + signum
    return 0


class _Terminated(KeyboardInterrupt):
    """SIGTERM as a KeyboardInterrupt, so that the same cleanup runs."""


def _raise_terminated(signum, frame):
    raise _Terminated


@contextmanager
def _sigterm_raises_terminated():
    """Make SIGTERM raise _Terminated within the block.

    Left alone, SIGTERM ends Python at once and leaves the .part file behind.
    Python lets only the main thread set a signal handler; called from
    another thread, this leaves SIGTERM as it is.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
