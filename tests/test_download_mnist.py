"""Tests of download_mnist.py, offline: small fake MNIST files (fake_mnist.py) served from a
folder, or by an HTTP server on 127.0.0.1 that the test starts. MIRRORS is emptied, so
nothing else is ever contacted."""
import functools
import os
import socket
import threading
import time
from contextlib import contextmanager, suppress
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from torchvision.datasets import MNIST

import download_mnist
from download_mnist import MnistDownloadError, ensure_mnist, load_mnist, main
from fake_mnist import fake_mnist_arrays, write_fake_mnist_gz, write_fake_mnist_raw

N_TRAIN, N_TEST = 20, 10
TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.fixture(autouse=True)
def no_public_mirrors(monkeypatch):
    monkeypatch.setattr(download_mnist, "MIRRORS", ())
    for variable in ("no_proxy", "NO_PROXY"):  # 127.0.0.1 directly, never through a proxy
        monkeypatch.setenv(variable, "127.0.0.1")


@pytest.fixture
def mirror(tmp_path, monkeypatch):
    """A folder with the four fake .gz files; their MD5s replace the real ones in FILES."""
    folder = tmp_path / "mirror"
    monkeypatch.setattr(download_mnist, "FILES", write_fake_mnist_gz(folder, N_TRAIN, N_TEST))
    return folder


class Handler(SimpleHTTPRequestHandler):
    """Serves a folder quietly, and records each path asked for in server.asked."""

    def do_GET(self):
        self.server.asked.append(self.path)
        self.answer()

    def answer(self):
        super().do_GET()

    def log_message(self, *args):
        pass


@contextmanager
def serve(folder, handler=Handler):
    """Serve FOLDER on 127.0.0.1; yield (its URL, the list of paths asked for)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(folder)))
    server.asked = []
    thread = threading.Thread(target=server.serve_forever, args=(0.01,))
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/", server.asked
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def installed(root):
    """Everything in ROOT/MNIST/raw/, temporary files included."""
    return sorted(path.name for path in (Path(root) / "MNIST" / "raw").iterdir())


def test_http_mirror_installs_files_that_load_and_torchvision_reads(tmp_path, mirror):
    with serve(mirror) as (url, _):
        ensure_mnist(tmp_path, [url])
    assert installed(tmp_path) == sorted(download_mnist.FILES)
    expected = fake_mnist_arrays(N_TRAIN, N_TEST)
    for split, n in (("train", N_TRAIN), ("test", N_TEST)):
        images, labels = load_mnist(tmp_path, split)
        assert images.dtype == torch.uint8 and images.shape == (n, 28, 28)
        assert labels.dtype == torch.int64
        assert torch.equal(images, torch.from_numpy(expected[split][0]))
        assert torch.equal(labels, torch.from_numpy(expected[split][1]).long())
    assert torch.equal(MNIST(tmp_path, train=False).data, load_mnist(tmp_path, "test")[0])


@pytest.mark.parametrize("kind", ["folder", "relative folder", "file URL"])
def test_a_local_folder_is_a_mirror(tmp_path, mirror, monkeypatch, kind):
    monkeypatch.chdir(tmp_path)
    ensure_mnist("data", [{"folder": str(mirror), "relative folder": "mirror", "file URL": mirror.as_uri()}[kind]])
    assert installed("data") == sorted(download_mnist.FILES)


def test_given_mirrors_come_first_then_MIRRORS_until_one_delivers(tmp_path, mirror, monkeypatch):
    (tmp_path / "empty").mkdir()
    with serve(tmp_path / "empty") as (given, asked_given), serve(mirror) as (public, asked_public):
        monkeypatch.setattr(download_mnist, "MIRRORS", (public,))
        ensure_mnist(tmp_path / "data", [given])
    assert asked_given == asked_public == [f"/{name}.gz" for name in download_mnist.FILES]


def test_when_no_mirror_delivers_one_line_says_what_each_answered(tmp_path, mirror):
    write_fake_mnist_gz(tmp_path / "other", N_TRAIN, N_TEST, seed=1)  # other content, other MD5s
    (tmp_path / "not-gzip").mkdir()
    for name in download_mnist.FILES:
        (tmp_path / "not-gzip" / f"{name}.gz").write_bytes(b"not gzip data")
    with socket.socket() as probe:  # a port where nothing listens
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}/"
    (tmp_path / "empty").mkdir()
    with serve(tmp_path / "empty") as (not_found, _), pytest.raises(MnistDownloadError) as failure:
        ensure_mnist(tmp_path / "data", [not_found, closed, tmp_path / "other", tmp_path / "not-gzip"])
    message = str(failure.value)
    assert "\n" not in message
    assert f"{not_found}: HTTP Error 404" in message
    assert f"{closed}: <urlopen error" in message and "Connection refused" in message
    assert f"{tmp_path / 'other'}: wrong MD5" in message
    assert f"{tmp_path / 'not-gzip'}: Error -3 while decompressing" in message
    assert f"python download_mnist.py --data {tmp_path / 'data'} --mirror FOLDER" in message
    assert installed(tmp_path / "data") == []  # no partial file, not even of the wrong content


def test_stalled_and_dripping_mirrors_are_given_up_on(tmp_path, mirror, monkeypatch):
    name = "t10k-labels-idx1-ubyte"
    monkeypatch.setattr(download_mnist, "FILES", {name: download_mnist.FILES[name]})
    done = threading.Event()

    class Stalling(Handler):
        def answer(self):
            done.wait(5)  # says nothing at all

    class Dripping(Handler):
        def answer(self):  # a byte every 0.05 s: always in time for the timeout, never done
            data = Path(self.translate_path(self.path)).read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            with suppress(OSError):  # the client hung up
                for i in range(len(data)):
                    if done.wait(0.05):
                        break
                    self.wfile.write(data[i:i + 1])

    start = time.monotonic()
    try:
        with serve(mirror, Stalling) as (stalled, _), serve(mirror, Dripping) as (dripping, _):
            with pytest.raises(MnistDownloadError) as failure:
                ensure_mnist(tmp_path, [stalled, dripping], timeout=0.2, deadline=0.3)
            done.set()
    finally:
        done.set()
    assert time.monotonic() - start < 1.5
    assert f"{stalled}: timed out" in str(failure.value)
    assert f"{dripping}: not complete after 0.3 s" in str(failure.value)


def test_a_file_corrupted_in_place_is_installed_again_or_refused(tmp_path, mirror):
    ensure_mnist(tmp_path, [mirror])
    path = tmp_path / "MNIST" / "raw" / "t10k-images-idx3-ubyte"
    with path.open("r+b") as file:  # ten bytes flipped, the same size
        file.seek(1000)
        damaged = bytes(255 - byte for byte in file.read(10))
        file.seek(1000)
        file.write(damaged)

    with pytest.raises(MnistDownloadError) as refused:
        ensure_mnist(tmp_path)  # no mirror answers
    assert str(refused.value).startswith(f"{path} is corrupt (wrong MD5)")
    assert "\n" not in str(refused.value)

    with serve(mirror) as (url, asked):
        ensure_mnist(tmp_path, [url])
    assert asked == ["/t10k-images-idx3-ubyte.gz"]
    expected = fake_mnist_arrays(N_TRAIN, N_TEST)["test"][0]
    assert torch.equal(load_mnist(tmp_path, "test")[0], torch.from_numpy(expected))


def test_a_later_run_removes_the_temporary_file_of_a_killed_run(tmp_path, mirror):
    ensure_mnist(tmp_path, [mirror])
    (tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte.part").write_bytes(b"half a file")
    ensure_mnist(tmp_path)  # no mirror: it checks, and has nothing to download
    assert installed(tmp_path) == sorted(download_mnist.FILES)


def test_ctrl_c_leaves_no_partial_file(tmp_path, mirror, monkeypatch, capsys):
    raw = tmp_path / "MNIST" / "raw"

    def ctrl_c(bar, n=1):  # pressed while the first file streams in
        assert [path.name for path in raw.iterdir()] == ["train-images-idx3-ubyte.part"]
        raise KeyboardInterrupt

    monkeypatch.setattr(download_mnist.tqdm, "update", ctrl_c)
    try:
        assert main(["--data", str(tmp_path), "--mirror", str(mirror)]) == 130
    except KeyboardInterrupt:  # would end the whole pytest session
        pytest.fail("Ctrl-C went through main()")
    assert "no partial file was kept" in capsys.readouterr().err
    assert installed(tmp_path) == []


def test_command_line(tmp_path, mirror, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    assert "--data DIR" in capsys.readouterr().out

    arguments = ["--data", str(tmp_path / "data"), "--mirror", str(tmp_path / "nowhere")]
    assert main(arguments) == 1
    error = capsys.readouterr().err
    assert error.startswith("download_mnist.py: error: ") and error.count("\n") == 1
    assert main(arguments + ["--mirror", str(mirror)]) == 0  # --mirror is repeatable, as in main.py
    assert installed(tmp_path / "data") == sorted(download_mnist.FILES)


@pytest.mark.parametrize("damage", ["missing", "truncated", "header cut", "unknown type", "fewer labels"])
def test_load_mnist_names_a_missing_or_corrupt_file_and_the_fix(tmp_path, damage):
    write_fake_mnist_raw(tmp_path, N_TRAIN, N_TEST)
    images = tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte"
    data = images.read_bytes()
    if damage == "missing":
        images.unlink()
    elif damage == "fewer labels":
        (images.parent / "train-labels-idx1-ubyte").write_bytes(b"\0\0\x08\x01\0\0\0\x01\x07")
    else:
        images.write_bytes({"truncated": data[:-1], "header cut": data[:3],
                            "unknown type": b"\0\0\x05" + data[3:]}[damage])
    with pytest.raises((OSError, ValueError)) as error:
        load_mnist(tmp_path, "train")
    message = str(error.value)
    assert "\n" not in message and str(images) in message
    assert f"python download_mnist.py --data {tmp_path}" in message


def test_load_mnist_rejects_an_unknown_split(tmp_path):
    with pytest.raises(ValueError, match="unknown split 'validation'"):
        load_mnist(tmp_path, "validation")


@pytest.mark.skipif(not os.environ.get("MNIST_LOCAL_MIRROR"),
                    reason="set MNIST_LOCAL_MIRROR to a folder with the four real MNIST .gz files")
def test_real_mnist_from_a_local_mirror(tmp_path):
    ensure_mnist(tmp_path, [os.environ["MNIST_LOCAL_MIRROR"]])
    start = time.monotonic()
    ensure_mnist(tmp_path)  # every start checks every MD5: no mirror needed, and quick
    assert time.monotonic() - start < 2
    for split, counts in (("train", TRAIN_COUNTS), ("test", TEST_COUNTS)):
        images, labels = load_mnist(tmp_path, split)
        assert images.shape == (sum(counts), 28, 28) and images.dtype == torch.uint8
        assert torch.bincount(labels, minlength=10).tolist() == counts
