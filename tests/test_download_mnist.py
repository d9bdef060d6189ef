"""Tests of download_mnist.py, all offline.

A real HTTP server on 127.0.0.1 serves small fake MNIST files (fake_mnist.py)
whose MD5s the tests pass in as ``files``. The built-in internet mirrors are
replaced by a dead 127.0.0.1 address, so no test can go online by mistake.
"""

import gzip
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import urllib3

import download_mnist
from download_mnist import (FILES, MnistDownloadError, download_mnist as download,
                            ensure_mnist, load_mnist, main)
from fake_mnist import (QuietHandler, fake_mnist_arrays, serve_folder,
                        write_fake_mnist_gz, write_fake_mnist_raw)

SCRIPT = Path(download_mnist.__file__)
TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.fixture(autouse=True)
def dead_default_mirror(monkeypatch):
    """Replace the internet mirrors by a closed port on 127.0.0.1; return its URL."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/dead-default-mirror/"
    monkeypatch.setattr(download_mnist, "MIRRORS", (url,))
    for variable in ("no_proxy", "NO_PROXY"):  # never send 127.0.0.1 via a proxy
        monkeypatch.setenv(variable, "127.0.0.1,localhost")
    return url


@pytest.fixture
def mirror(tmp_path):
    """A folder with the four fake .gz files; returns (folder, checksums)."""
    folder = tmp_path / "mirror"
    folder.mkdir()
    return folder, write_fake_mnist_gz(folder, n_train=300, n_test=100, seed=0)


def raw_files(root):
    """Names of everything in ROOT/MNIST/raw, temporary files included."""
    return sorted(path.name for path in (Path(root) / "MNIST" / "raw").iterdir())


def offline(**options):
    return dict(default_mirrors=False, progress=False, **options)


def test_http_download_installs_and_loads(tmp_path, mirror):
    folder, checksums = mirror
    root = tmp_path / "data"
    with serve_folder(folder) as url:
        paths = download(root, [url], files=checksums, **offline())

    raw = root / "MNIST" / "raw"
    assert paths == [raw / name for name in checksums]
    assert raw_files(root) == sorted(checksums)
    for path in paths:
        assert download_mnist._md5_of_file(path) == checksums[path.name]
    # Installed files get the usual permissions, like any new file.
    reference = tmp_path / "reference"
    reference.write_bytes(b"")
    assert {path.stat().st_mode for path in paths} == {reference.stat().st_mode}

    expected = fake_mnist_arrays(n_train=300, n_test=100, seed=0)
    for split, n in (("train", 300), ("test", 100)):
        images, labels = load_mnist(root, split)
        assert images.dtype == torch.uint8 and images.shape == (n, 28, 28)
        assert labels.dtype == torch.int64 and labels.shape == (n,)
        assert torch.equal(images, torch.from_numpy(expected[split][0]))
        assert torch.equal(labels, torch.from_numpy(expected[split][1]).long())


def test_404_on_first_mirror_then_second_mirror_succeeds(tmp_path, mirror):
    folder, checksums = mirror
    empty = tmp_path / "empty"
    empty.mkdir()
    first_log, second_log = [], []
    with serve_folder(empty, request_log=first_log) as first, \
            serve_folder(folder, request_log=second_log) as second:
        download(tmp_path / "data", [first, second], files=checksums, **offline())

    # One request per file on each server: a 404 is final, so not retried.
    assert first_log == second_log == [f"/{name}.gz" for name in checksums]
    assert raw_files(tmp_path / "data") == sorted(checksums)

    with serve_folder(empty) as first:
        with pytest.raises(MnistDownloadError) as failure:
            download(tmp_path / "data2", [first], files=checksums, **offline())
    assert f"{first} (attempt 1): HTTP 404 File not found" in str(failure.value)


def test_wrong_content_fails_md5_and_leaves_nothing(tmp_path, mirror, capsys):
    folder, _ = mirror
    other_checksums = write_fake_mnist_gz(tmp_path / "other", seed=1)
    root = tmp_path / "data"
    with serve_folder(folder) as url:
        status = main(["--root", str(root), "--mirror", url, "--no-default-mirrors"],
                      files=other_checksums)

    assert status == 1
    error = capsys.readouterr().err
    assert url in error and "MD5 mismatch" in error
    assert "python download_mnist.py --mirror /path/to/folder/with/the/gz/files" in error
    assert raw_files(root) == []  # neither the file nor its .part file


class AnsweringHandler(QuietHandler):
    """Base of the handlers below, which misbehave once the headers are sent."""

    def start_answer(self, length=None):
        """Send "200 OK" and a Content-Length; return the requested file's bytes.

        length: the header's value; by default the true size of the file.
        """
        self.record_request()
        data = Path(self.translate_path(self.path)).read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)) if length is None else length)
        self.end_headers()
        return data


class DroppingHandler(AnsweringHandler):
    """Announces the whole file but sends only half of it, then hangs up."""

    def do_GET(self):
        data = self.start_answer()
        self.wfile.write(data[:len(data) // 2])
        self.close_connection = True


def stalling_halfway(raw, then, release):
    """A handler class that sends half of a file and then stalls.

    Once the downloader's .part file is in RAW it calls THEN(), and it sends
    nothing more until RELEASE is set.
    """

    class StallingHalfwayHandler(AnsweringHandler):
        def do_GET(self):
            data = self.start_answer()
            self.wfile.write(data[:len(data) // 2])
            give_up = time.monotonic() + 60
            while not any(raw.glob("*.part")):
                assert time.monotonic() < give_up, "no .part file appeared"
                time.sleep(0.01)
            then()
            release.wait(60)

    return StallingHalfwayHandler


class BadLengthHandler(AnsweringHandler):
    """Sends the whole file under a Content-Length that is not a number."""

    def do_GET(self):
        self.wfile.write(self.start_answer(length="many"))
        self.close_connection = True


@pytest.mark.parametrize("retries", [0, 1, 2])
def test_dropped_connection_is_retried_then_fails_cleanly(tmp_path, mirror, retries):
    folder, checksums = mirror
    log = []
    with serve_folder(folder, DroppingHandler, log) as url:
        with pytest.raises(MnistDownloadError) as failure:
            download(tmp_path / "data", [url], files=checksums,
                     **offline(retries=retries))

    first_file = next(iter(checksums))
    assert log == [f"/{first_file}.gz"] * (1 + retries)
    message = str(failure.value)
    assert f"{url} (attempt {1 + retries}): connection error" in message
    assert raw_files(tmp_path / "data") == []


def test_bad_content_length_moves_on_to_the_next_mirror(tmp_path, mirror):
    folder, checksums = mirror
    bad_log, good_log = [], []
    with serve_folder(folder, BadLengthHandler, bad_log) as bad, \
            serve_folder(folder, request_log=good_log) as good:
        download(tmp_path / "data", [bad, good], files=checksums, **offline())

    # A server's malformed answer is not retried: it would answer the same.
    assert bad_log == good_log == [f"/{name}.gz" for name in checksums]
    assert raw_files(tmp_path / "data") == sorted(checksums)

    with serve_folder(folder, BadLengthHandler) as bad:
        with pytest.raises(MnistDownloadError) as failure:
            download(tmp_path / "data2", [bad], files=checksums, **offline())
    assert f"{bad} (attempt 1): bad Content-Length header 'many'" in str(failure.value)
    assert raw_files(tmp_path / "data2") == []


def test_invalid_url_moves_on_to_the_next_mirror(tmp_path, mirror):
    folder, checksums = mirror
    invalid = "http://127.0.0.1:99999/"  # no such port: requests refuses the URL
    with pytest.raises(MnistDownloadError) as failure:
        download(tmp_path / "data", [invalid], files=checksums, **offline())
    assert f"{invalid} (attempt 1): request failed: Failed to parse" in str(failure.value)

    download(tmp_path / "data", [invalid, str(folder)], files=checksums, **offline())
    assert raw_files(tmp_path / "data") == sorted(checksums)


def test_timeout_is_reported_after_one_retry(tmp_path, mirror):
    folder, checksums = mirror
    release = threading.Event()

    class StallingHandler(QuietHandler):
        def do_GET(self):
            self.record_request()
            release.wait(10)  # answer nothing until the test is over

    log = []
    with serve_folder(folder, StallingHandler, log) as url:
        try:
            with pytest.raises(MnistDownloadError) as failure:
                download(tmp_path / "data", [url], files=checksums,
                         **offline(timeout=0.2))
        finally:
            release.set()

    assert len(log) == 2
    assert "timed out after 0.2 s" in str(failure.value)
    assert raw_files(tmp_path / "data") == []


def test_deadline_gives_up_on_a_dripping_mirror(tmp_path, mirror, capsys):
    folder, checksums = mirror
    name = next(iter(checksums))
    stop = threading.Event()

    class DrippingHandler(AnsweringHandler):
        """Sends a byte every 0.1 s: always in time for --timeout, never done."""

        def do_GET(self):
            data = self.start_answer()
            for start in range(len(data)):
                if stop.wait(0.1):
                    return
                try:
                    self.wfile.write(data[start:start + 1])
                except (BrokenPipeError, ConnectionResetError):
                    return  # the downloader gave up

    root = tmp_path / "data"
    with serve_folder(folder, DrippingHandler) as dripping, serve_folder(folder) as good:
        started = time.monotonic()
        try:
            status = main(["--root", str(root), "--mirror", dripping, "--mirror", good,
                           "--no-default-mirrors", "--timeout", "5", "--deadline", "1",
                           "--retries", "0"], files={name: checksums[name]})
        finally:
            stop.set()
        seconds = time.monotonic() - started

    assert status == 0 and raw_files(root) == [name]
    output = capsys.readouterr()
    assert f"{name}.gz from {dripping}: not complete after 1.0 s" in output.err
    assert f"downloaded from {good}" in output.out
    assert 1 <= seconds < 3


def test_http_download_works_without_read1(tmp_path, mirror, monkeypatch):
    for response_class in (urllib3.response.HTTPResponse, urllib3.response.BaseHTTPResponse):
        monkeypatch.delattr(response_class, "read1")  # as in urllib3 1.x
    folder, checksums = mirror
    with serve_folder(folder) as url:
        download(tmp_path / "data", [url], files=checksums, **offline())
    assert raw_files(tmp_path / "data") == sorted(checksums)


@pytest.mark.parametrize("kind", ["directory", "relative directory", "file URL"])
def test_local_mirror(tmp_path, mirror, monkeypatch, kind):
    folder, checksums = mirror
    monkeypatch.chdir(tmp_path)
    source = {"directory": str(folder),
              "relative directory": "mirror",
              "file URL": folder.as_uri()}[kind]
    download("data", [source], files=checksums, **offline())

    assert raw_files("data") == sorted(checksums)
    images, _ = load_mnist("data", "test")
    expected_images = fake_mnist_arrays(n_train=300, n_test=100, seed=0)["test"][0]
    assert torch.equal(images, torch.from_numpy(expected_images))


def test_missing_local_file_is_reported(tmp_path, mirror):
    folder, checksums = mirror
    missing = next(iter(checksums))
    (folder / f"{missing}.gz").unlink()
    with pytest.raises(MnistDownloadError) as failure:
        download(tmp_path / "data", [str(folder)], files=checksums, **offline())
    assert f"missing local file {folder / missing}.gz" in str(failure.value)


def test_folder_named_like_a_gz_file_moves_on_to_the_next_mirror(tmp_path, mirror):
    folder, checksums = mirror
    odd = tmp_path / "odd"
    for name in checksums:
        (odd / f"{name}.gz").mkdir(parents=True)
    with pytest.raises(MnistDownloadError) as failure:
        download(tmp_path / "data", [str(odd)], files=checksums, **offline())
    first = next(iter(checksums))
    message = str(failure.value)
    assert f"{odd} (attempt 1): cannot read local file {odd / first}.gz" in message
    assert "attempt 2" not in message  # a folder stays a folder: not retried

    download(tmp_path / "data", [str(odd), str(folder)], files=checksums, **offline())
    assert raw_files(tmp_path / "data") == sorted(checksums)


def test_unsupported_url_is_reported(tmp_path, mirror):
    _, checksums = mirror
    with pytest.raises(MnistDownloadError, match="unsupported URL"):
        download(tmp_path / "data", ["ftp://127.0.0.1/mnist/"], files=checksums,
                 **offline())


def test_bad_gzip_is_reported(tmp_path, mirror):
    folder, checksums = mirror
    name = next(iter(checksums))
    (folder / f"{name}.gz").write_bytes(b"this is not gzip data")
    with pytest.raises(MnistDownloadError) as failure:
        download(tmp_path / "data", [str(folder)], files=checksums, **offline())
    assert "bad gzip data" in str(failure.value)
    assert raw_files(tmp_path / "data") == []


def test_any_compression_passes_because_md5_is_of_uncompressed_data(tmp_path, mirror):
    folder, checksums = mirror
    for name in checksums:
        gz = folder / f"{name}.gz"
        gz.write_bytes(gzip.compress(gzip.decompress(gz.read_bytes()), compresslevel=1))
    download(tmp_path / "data", [str(folder)], files=checksums, **offline())
    assert raw_files(tmp_path / "data") == sorted(checksums)


def test_rerun_downloads_nothing(tmp_path, mirror, capsys):
    folder, checksums = mirror
    root = str(tmp_path / "data")
    first_log, second_log = [], []
    with serve_folder(folder, request_log=first_log) as url:
        assert main(["--root", root, "--mirror", url], files=checksums) == 0
    assert "Downloaded 4 of 4 files" in capsys.readouterr().out

    with serve_folder(folder, request_log=second_log) as url:
        assert main(["--root", root, "--mirror", url], files=checksums) == 0
    assert len(first_log) == 4 and second_log == []
    assert "Nothing downloaded" in capsys.readouterr().out


def test_corrupt_existing_file_is_downloaded_again(tmp_path, mirror):
    folder, checksums = mirror
    root = tmp_path / "data"
    download(root, [str(folder)], files=checksums, **offline())
    name = "t10k-labels-idx1-ubyte"
    (root / "MNIST" / "raw" / name).write_bytes(b"corrupt")

    log = []
    with serve_folder(folder, request_log=log) as url:
        download(root, [url], files=checksums, **offline())
    assert log == [f"/{name}.gz"]
    assert download_mnist._md5_of_file(root / "MNIST" / "raw" / name) == checksums[name]


def test_ensure_mnist_downloads_only_when_missing(tmp_path, mirror):
    folder, checksums = mirror
    root = tmp_path / "data"
    log = []
    with serve_folder(folder, request_log=log) as url:
        ensure_mnist(root, [url], files=checksums, **offline())
        paths = ensure_mnist(root, [url], files=checksums, **offline())
    assert len(log) == 4
    assert sorted(path.name for path in paths) == sorted(checksums)


def test_interrupted_download_leaves_nothing(tmp_path, mirror, monkeypatch, capsys):
    folder, checksums = mirror

    def interrupt(self, size=-1):
        raise KeyboardInterrupt  # as if Ctrl-C was pressed while unzipping

    monkeypatch.setattr(gzip.GzipFile, "read", interrupt)
    with pytest.raises(KeyboardInterrupt):
        download(tmp_path / "data", [str(folder)], files=checksums, **offline())
    assert raw_files(tmp_path / "data") == []

    status = main(["--root", str(tmp_path / "data"), "--mirror", str(folder),
                   "--no-default-mirrors"], files=checksums)
    assert status == 130 and "interrupted" in capsys.readouterr().err
    assert raw_files(tmp_path / "data") == []


posix_signals = pytest.mark.skipif(sys.platform == "win32",
                                   reason="Windows cannot send SIGTERM to be caught")


@posix_signals
def test_sigterm_stops_the_script_like_ctrl_c(tmp_path, mirror):
    folder, _ = mirror  # the real file names; the download never gets to the MD5
    stalled, release = threading.Event(), threading.Event()
    handler = stalling_halfway(tmp_path / "data" / "MNIST" / "raw", stalled.set, release)
    with serve_folder(folder, handler) as url:
        process = subprocess.Popen(
            [sys.executable, str(SCRIPT), "--root", "data", "--mirror", url,
             "--no-default-mirrors"],
            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert stalled.wait(60)  # its .part file is there
            process.terminate()
            _, error = process.communicate(timeout=60)
        finally:
            process.kill()  # no-op once it has ended
            release.set()

    assert process.returncode == 143  # 128 + SIGTERM, as 130 is 128 + SIGINT for Ctrl-C
    assert error.splitlines()[-1] == "interrupted (SIGTERM); no partial file was kept"
    assert raw_files(tmp_path / "data") == []


@posix_signals
def test_sigterm_turned_into_keyboard_interrupt_by_a_caller_leaves_nothing(tmp_path, mirror):
    """main.py makes SIGTERM raise KeyboardInterrupt, here inside a read of the download."""
    folder, checksums = mirror
    root = tmp_path / "data"
    release = threading.Event()
    handler = stalling_halfway(
        root / "MNIST" / "raw",
        lambda: signal.pthread_kill(threading.main_thread().ident, signal.SIGTERM), release)
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        with serve_folder(folder, handler) as url, pytest.raises(KeyboardInterrupt):
            ensure_mnist(root, [url], files=checksums, **offline())
    finally:
        signal.signal(signal.SIGTERM, previous)
        release.set()
    assert raw_files(root) == []


def test_main_restores_sigterm_and_runs_outside_the_main_thread(tmp_path, mirror):
    folder, checksums = mirror
    arguments = ["--mirror", str(folder), "--no-default-mirrors"]
    before = signal.getsignal(signal.SIGTERM)
    assert main(["--root", str(tmp_path / "data"), *arguments], files=checksums) == 0
    assert signal.getsignal(signal.SIGTERM) is before

    statuses = []  # only the main thread may set a signal handler
    thread = threading.Thread(target=lambda: statuses.append(
        main(["--root", str(tmp_path / "data2"), *arguments], files=checksums)))
    thread.start()
    thread.join(60)
    assert statuses == [0]


def test_a_later_run_removes_part_files_of_killed_runs_only(tmp_path, mirror):
    folder, checksums = mirror
    raw = tmp_path / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    ended = subprocess.Popen([sys.executable, "-c", ""])
    ended.wait()  # its PID is now no process's
    name = next(iter(checksums))
    stale = [f"{name}.{ended.pid}.part",
             f"{name}.{os.getpid()}.part"]  # ours, from a killed run with the same PID
    kept = [f"{name}.{os.getppid()}.part",  # as if that process were downloading too
            f"{name}.part", f"{name}.x{ended.pid}.part", f"other.{ended.pid}.part", "notes.txt"]
    for filename in stale + kept:
        (raw / filename).write_bytes(b"partial")

    download(tmp_path / "data", [str(folder)], files=checksums, **offline())
    assert raw_files(tmp_path / "data") == sorted([*checksums, *kept])


def test_ensure_mnist_removes_part_files_of_killed_runs_when_nothing_is_missing(tmp_path, mirror):
    folder, checksums = mirror
    ensure_mnist(tmp_path / "data", [str(folder)], files=checksums, **offline())
    ended = subprocess.Popen([sys.executable, "-c", ""])
    ended.wait()  # its PID is now no process's
    raw, name = tmp_path / "data" / "MNIST" / "raw", next(iter(checksums))
    (raw / f"{name}.{ended.pid}.part").write_bytes(b"partial")

    ensure_mnist(tmp_path / "data", [], files=checksums, **offline())
    assert raw_files(tmp_path / "data") == sorted(checksums)


def test_default_mirrors_are_tried_after_given_ones(tmp_path, dead_default_mirror, capsys):
    given = str(tmp_path / "nowhere")
    assert main(["--root", str(tmp_path / "data"), "--mirror", given, "--retries", "0"]) == 1
    error = capsys.readouterr().err
    assert error.index(given) < error.index(dead_default_mirror)
    assert f"{dead_default_mirror} (attempt 1): connection error" in error

    assert main(["--root", str(tmp_path / "data"), "--mirror", given,
                 "--no-default-mirrors"]) == 1
    assert dead_default_mirror not in capsys.readouterr().err


def test_script_exits_with_status_1(tmp_path, mirror):
    folder, _ = mirror  # fake files, so the real MD5s cannot match
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--root", "data", "--mirror", str(folder),
         "--no-default-mirrors"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "MD5 mismatch" in result.stderr
    assert raw_files(tmp_path / "data") == []


def test_help_describes_every_option(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    for option in ("--root", "--mirror", "--no-default-mirrors", "--timeout", "--deadline",
                   "--retries"):
        assert option in help_text


def command_line_error(arguments, capsys):
    """Run main(ARGUMENTS) offline; check it exits with status 2; return its last line."""
    with pytest.raises(SystemExit) as exit_info:
        main(arguments + ["--mirror", "nowhere", "--no-default-mirrors"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert "Traceback" not in error
    return error.splitlines()[-1]


SECONDS = "a finite number of seconds above 0"


@pytest.mark.parametrize("option, value, expected", [
    ("--timeout", "0", SECONDS),
    ("--timeout", "-1", SECONDS),
    ("--timeout", "nan", SECONDS),
    ("--timeout", "inf", SECONDS),
    ("--deadline", "0", SECONDS),
    ("--retries", "-1", "a whole number, 0 or more"),
    ("--retries", "1.5", "a whole number, 0 or more"),
])
def test_bad_number_is_one_clear_error(capsys, option, value, expected):
    last_line = command_line_error([option, value], capsys)
    assert last_line.endswith(f"error: argument {option}: expected {expected}, got {value!r}")


@pytest.mark.parametrize("under", ["", "/sub"])
def test_root_that_is_a_file_is_one_clear_error(tmp_path, capsys, under):
    file = tmp_path / "file"
    file.write_bytes(b"")
    root = f"{file}{under}"
    last_line = command_line_error(["--root", root], capsys)
    assert last_line.endswith(f"error: --root {root}: {file} is a file, not a folder")


def test_load_mnist_missing_file_names_file_and_command(tmp_path):
    with pytest.raises(FileNotFoundError) as failure:
        load_mnist(tmp_path, "train")
    message = str(failure.value)
    assert "train-images-idx3-ubyte" in message
    assert f"python download_mnist.py --root {tmp_path}" in message


@pytest.mark.parametrize("damage", ["magic", "truncated", "too long", "no header"])
def test_load_mnist_rejects_corrupt_file(tmp_path, damage):
    write_fake_mnist_raw(tmp_path, n_train=20, n_test=10, seed=0)
    path = tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte"
    data = path.read_bytes()
    path.write_bytes({"magic": b"\x00\x00\x08\x01" + data[4:],
                      "truncated": data[:-1],
                      "too long": data + b"\x00",
                      "no header": data[:10]}[damage])
    with pytest.raises(ValueError, match="train-images-idx3-ubyte"):
        load_mnist(tmp_path, "train")


def test_load_mnist_rejects_unknown_split(tmp_path):
    write_fake_mnist_raw(tmp_path, n_train=20, n_test=10, seed=0)
    with pytest.raises(ValueError, match="unknown split"):
        load_mnist(tmp_path, "validation")


def test_torchvision_reads_the_installed_layout(tmp_path, mirror):
    datasets = pytest.importorskip("torchvision.datasets")
    folder, checksums = mirror
    download(tmp_path, [str(folder)], files=checksums, **offline())

    dataset = datasets.MNIST(str(tmp_path), train=True, download=False)
    images, labels = load_mnist(tmp_path, "train")
    assert len(dataset) == 300
    assert torch.equal(dataset.data, images)
    assert torch.equal(dataset.targets, labels)


@pytest.mark.skipif(not os.environ.get("MNIST_LOCAL_MIRROR"),
                    reason="set MNIST_LOCAL_MIRROR to a folder with the four real "
                           "MNIST .gz files to test the real data")
def test_real_mnist_from_local_mirror(tmp_path):
    paths = download(tmp_path, [os.environ["MNIST_LOCAL_MIRROR"]], **offline())
    assert [path.name for path in paths] == list(FILES)

    for split, n, counts in (("train", 60000, TRAIN_COUNTS), ("test", 10000, TEST_COUNTS)):
        images, labels = load_mnist(tmp_path, split)
        assert images.shape == (n, 28, 28) and images.dtype == torch.uint8
        assert torch.bincount(labels, minlength=10).tolist() == counts
