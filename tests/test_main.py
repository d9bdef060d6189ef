"""main.py end to end on a tiny synthetic MNIST: training, resuming, evaluating, sampling, faults."""
import json
import math
import shutil
import time
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

import checkpoints
import download_mnist
import main
import pixels
import training
from fake_mnist import write_fake_mnist_raw

TINY_MODEL = ["--blocks", "1", "--hidden", "16", "--depth", "1", "--batch-size", "50", "--device", "cpu",
              "--precision", "fp32"]  # float32 nets on every machine, and no timing of bfloat16 at start


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_fake_mnist_raw(root, n_train=300, n_test=100, seed=0)
    return root


def run(data_root, out, *flags):
    return main.main(["--data", str(data_root), "--out", str(out), *TINY_MODEL, *flags])


def read_metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def last_line(capsys):
    return capsys.readouterr().out.strip().splitlines()[-1]


# --------------------------------------------------------------------------- end to end


def test_train_writes_checkpoints_metrics_and_samples(data_root, tmp_path, capsys):
    out = tmp_path / "run"
    assert run(data_root, out, "--epochs", "2") == 0
    metrics = read_metrics(out)
    assert [m["epoch"] for m in metrics] == [1, 2]
    assert set(metrics[0]) >= {"epoch", "train_bpd", "test_bpd", "seconds", "samples_per_s"}
    assert all(0 < m["test_bpd"] < 16 and m["samples_per_s"] > 0 for m in metrics)
    assert last_line(capsys) == f"final test bits/dim: {metrics[-1]['test_bpd']:.4f}"
    image = torch.frombuffer(bytearray(Image.open(out / "samples_002.png").convert("L").tobytes()), dtype=torch.uint8).float()
    assert image.numel() > 28 * 28 and image.std() > 0
    for name in ("latest.pt", "best.pt"):
        state = checkpoints.load(out / name)
        assert all(torch.isfinite(t).all() for t in state["model"].values())
    assert checkpoints.load(out / "latest.pt")["epoch"] == 2
    assert not list(out.glob("*.tmp"))


def test_training_lowers_the_test_bits_per_dim(data_root, tmp_path):
    out = tmp_path / "run"
    # Without ActNorm the flow starts as the identity and has everything to learn.
    assert run(data_root, out, "--epochs", "6", "--lr", "3e-3", "--no-actnorm") == 0
    metrics = read_metrics(out)
    assert metrics[-1]["test_bpd"] < metrics[0]["test_bpd"] - 0.05, metrics


@pytest.mark.parametrize("flags", [[], ["--mixing", "--dropout", "0.3"]], ids=["defaults", "mixing-dropout"])
def test_eval_reproduces_the_logged_test_bits_per_dim(data_root, tmp_path, capsys, flags):
    # With dropout, this holds only if evaluation runs the nets in eval mode.
    out = tmp_path / "run"
    assert run(data_root, out, "--epochs", "1", *flags) == 0
    logged = read_metrics(out)[-1]["test_bpd"]
    capsys.readouterr()
    assert main.main(["--data", str(data_root), "--eval", str(out / "latest.pt"), "--device", "cpu"]) == 0
    assert last_line(capsys) == f"test bits/dim: {logged:.4f}"


def test_resume_continues_the_epoch_count(data_root, tmp_path):
    out = tmp_path / "run"
    assert run(data_root, out, "--epochs", "1") == 0
    assert run(data_root, out, "--epochs", "3", "--resume") == 0
    assert [m["epoch"] for m in read_metrics(out)] == [1, 2, 3]
    assert checkpoints.load(out / "latest.pt")["epoch"] == 3


def test_resume_takes_the_optimizer_settings_from_this_runs_flags(data_root, tmp_path):
    out = tmp_path / "run"
    assert run(data_root, out, "--epochs", "1", "--weight-decay", "0.5") == 0
    assert checkpoints.load(out / "latest.pt")["optimizer"]["param_groups"][0]["weight_decay"] == 0.5
    assert run(data_root, out, "--epochs", "2", "--resume") == 0
    state = checkpoints.load(out / "latest.pt")
    assert state["optimizer"]["param_groups"][0]["weight_decay"] == 0.0
    assert all(adam["step"] == 2 * 6 for adam in state["optimizer"]["state"].values())  # moments carried on


def test_time_budget_stops_mid_epoch_then_evaluates_and_saves(data_root, tmp_path, monkeypatch, capsys):
    clock = iter(range(10_000))  # a training clock that moves one second each time it is read
    monkeypatch.setattr(training, "time", SimpleNamespace(monotonic=lambda: next(clock), perf_counter=time.perf_counter))
    monkeypatch.setattr(main, "LOG_INTERVAL", 1)  # the budget is checked every LOG_INTERVAL steps
    out = tmp_path / "run"
    assert run(data_root, out, "--epochs", "3", "--time-budget", "5") == 0
    metrics = read_metrics(out)
    assert [m["epoch"] for m in metrics] == [1]
    images_per_epoch = 300 - 30  # the fixture's training images, less the held-out tenth
    assert metrics[0]["images"] < images_per_epoch  # stopped mid-epoch
    printed = capsys.readouterr().out
    assert printed.count("time budget of 5 s reached") == 1
    assert printed.strip().splitlines()[-1] == f"final test bits/dim: {metrics[0]['test_bpd']:.4f}"
    assert checkpoints.load(out / "latest.pt")["train_seconds"] >= 5
    # Resuming a run whose budget is spent trains no more.
    assert run(data_root, out, "--epochs", "3", "--time-budget", "5", "--resume") == 0
    assert len(read_metrics(out)) == 1


def test_same_seed_gives_identical_metrics(data_root, tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    assert run(data_root, first, "--epochs", "2", "--seed", "7") == 0
    assert run(data_root, second, "--epochs", "2", "--seed", "7") == 0
    drop_timing = lambda rows: [{k: v for k, v in row.items() if k not in ("seconds", "samples_per_s")} for row in rows]
    assert drop_timing(read_metrics(first)) == drop_timing(read_metrics(second))


def test_nice_trains_through_the_same_script(data_root, tmp_path, capsys):
    out = tmp_path / "nice"
    assert run(data_root, out, "--epochs", "1", "--model", "nice") == 0
    assert checkpoints.load(out / "latest.pt")["model_config"]["model"] == "nice"
    assert last_line(capsys).startswith("final test bits/dim: ")


def test_sample_writes_a_grid(data_root, tmp_path, capsys):
    out = tmp_path / "run"
    assert run(data_root, out, "--epochs", "1") == 0
    assert main.main(["--sample", str(out / "best.pt"), "--n", "16", "--temperature", "1", "0.5", "--pairs", "3",
                      "--data", str(data_root), "--out", str(tmp_path / "pictures"), "--device", "cpu"]) == 0
    for name in ("samples_t1.png", "samples_t0.5.png"):
        image = Image.open(tmp_path / "pictures" / name)
        assert image.size == (2 + 4 * 30, 2 + 4 * 30)  # a 4 x 4 grid of 28-pixel images, 2-pixel padding
    # 3 rows (pairs) of 10 steps
    assert Image.open(tmp_path / "pictures" / "interpolation.png").size == (2 + 10 * 30, 2 + 3 * 30)


# --------------------------------------------------------------------------- faults


def test_non_finite_losses_never_reach_the_weights(data_root, tmp_path, monkeypatch):
    calls = {"n": 0}
    real_log_density = pixels.log_density

    def sometimes_nan(model, images, alpha, generator=None):
        result = real_log_density(model, images, alpha, generator)
        calls["n"] += 1
        return result * math.nan if model.training and calls["n"] % 2 == 0 else result

    monkeypatch.setattr(pixels, "log_density", sometimes_nan)
    out = tmp_path / "run"
    assert run(data_root, out, "--epochs", "2") == 0
    state = checkpoints.load(out / "latest.pt")
    assert all(torch.isfinite(t).all() for t in state["model"].values())
    assert all(math.isfinite(m["test_bpd"]) for m in read_metrics(out))


def test_a_run_that_keeps_diverging_stops_with_a_message(data_root, tmp_path, monkeypatch, capsys):
    real_log_density = pixels.log_density
    monkeypatch.setattr(pixels, "log_density", lambda model, images, alpha, generator=None:
                        real_log_density(model, images, alpha, generator) * (math.nan if model.training else 1))
    out = tmp_path / "run"
    assert run(data_root, out, "--epochs", "30") == 1
    assert "steps in a row had a non-finite loss or gradients" in capsys.readouterr().err
    # Epochs that ended before the run gave up saved weights that no optimizer step touched.
    state = checkpoints.load(out / "latest.pt")
    assert all(adam["step"] == 0 and not adam["exp_avg"].any() for adam in state["optimizer"]["state"].values())
    assert all(torch.isfinite(t).all() for t in state["model"].values())


def test_ctrl_c_saves_a_loadable_checkpoint(data_root, tmp_path, monkeypatch):
    calls = {"n": 0}
    real_log_density = pixels.log_density

    def interrupt_on_third_step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_log_density(*args, **kwargs)

    monkeypatch.setattr(pixels, "log_density", interrupt_on_third_step)
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        run(data_root, out, "--epochs", "2")
    assert exit_info.value.code == 130
    state = checkpoints.load(out / "latest.pt")
    assert state["epoch"] == 0 and "optimizer" in state
    monkeypatch.setattr(pixels, "log_density", real_log_density)
    assert run(data_root, out, "--epochs", "1", "--resume") == 0
    assert checkpoints.load(out / "latest.pt")["epoch"] == 1


def test_an_interrupt_after_an_epochs_checkpoint_keeps_that_epoch(data_root, tmp_path, monkeypatch):
    """Ctrl-C or SIGTERM while the epoch's sample grid is written, after latest.pt for that
    epoch is in place: the saved state stays that epoch's, and resuming writes each
    epoch's metrics line once."""
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    out = tmp_path / "run"
    with monkeypatch.context() as patch:
        patch.setattr(main, "save_samples", interrupt)
        with pytest.raises(SystemExit) as exit_info:
            run(data_root, out, "--epochs", "3")
    assert exit_info.value.code == 130
    assert checkpoints.load(out / "latest.pt")["epoch"] == 1
    assert run(data_root, out, "--epochs", "2", "--resume") == 0
    assert [m["epoch"] for m in read_metrics(out)] == [1, 2]


@pytest.mark.parametrize("flags, message", [
    (["--epochs", "-1"], "--epochs must be zero or more"),
    (["--device", "tpu"], "invalid choice"),
    (["--hidden", "0"], "--hidden must be positive"),
    (["--weight-decay", "-1"], "--weight-decay must be zero or more"),
    (["--weight-decay", "nan"], "--weight-decay must be zero or more"),
    (["--temperature", "0.7", "nan"], "--temperature must be a positive number"),
    (["--temperature", "inf"], "--temperature must be a positive number"),
    (["--time-budget", "nan"], "--time-budget must be a positive number"),
    (["--model", "nice", "--mixing"], "--mixing applies to --model realnvp or spline, not --model nice"),
    (["--eval", "a.pt", "--sample", "b.pt"], "separate jobs"),
])
def test_bad_flags_exit_with_status_2(flags, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main.main(flags)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_bad_checkpoints_and_output_folders_are_one_line_errors(data_root, tmp_path, capsys):
    torch.save({"format": checkpoints.FORMAT, "model": {}}, tmp_path / "incomplete.pt")
    (tmp_path / "a-file").write_text("not a folder")
    for job in (["--eval", str(tmp_path / "missing.pt")], ["--sample", str(tmp_path / "incomplete.pt")],
                ["--out", str(tmp_path / "a-file"), "--epochs", "1"]):
        assert main.main(["--data", str(data_root), *TINY_MODEL, *job]) == 2
        error = capsys.readouterr().err
        assert error.startswith("main.py: error: ") and len(error.strip().splitlines()) == 1, error


def test_no_default_mirrors_tries_only_the_given_mirror(tmp_path, monkeypatch, capsys):
    dead = "http://127.0.0.1:9/built-in-mirror/"  # the discard port: nothing answers there
    monkeypatch.setattr(download_mnist, "MIRRORS", (dead,))
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as exit_info:
        run(tmp_path / "data", tmp_path / "run", "--mirror", str(tmp_path / "empty"), "--no-default-mirrors")
    assert exit_info.value.code == 1
    error = capsys.readouterr().err
    assert str(tmp_path / "empty") in error and "built-in-mirror" not in error


def test_a_corrupt_data_file_gives_a_one_line_error(tmp_path, capsys):
    broken = tmp_path / "data"
    write_fake_mnist_raw(broken, n_train=50, n_test=20, seed=0)
    images = broken / "MNIST" / "raw" / "t10k-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:1000])  # truncated
    with pytest.raises(SystemExit) as exit_info:
        run(broken, tmp_path / "run", "--epochs", "1")
    assert exit_info.value.code == 1
    error = capsys.readouterr().err
    assert "t10k-images-idx3-ubyte" in error and len(error.strip().splitlines()) == 1


# --------------------------------------------------------------------------- torch.compile


@pytest.mark.skipif(not (shutil.which("c++") or shutil.which("g++")), reason="torch.compile on a CPU needs a C++ compiler")
def test_compiled_training_runs_end_to_end(data_root, tmp_path, capsys):
    """Two epochs with --compile: each has a short last batch, and evaluation switches the
    model to eval mode and back in between, without a second compile."""
    out = tmp_path / "run"
    torch._dynamo.reset()  # test-only switches of torch's compiler: other tests' graphs gone, no second graph
    with torch._dynamo.config.patch(error_on_recompile=True):
        assert run(data_root, out, "--compile", "--epochs", "2") == 0
    printed = capsys.readouterr().out
    assert "compiles the training loss" in printed and "torch.compile failed" not in printed
    assert [m["epoch"] for m in read_metrics(out)] == [1, 2]
    assert all(math.isfinite(m["test_bpd"]) for m in read_metrics(out))
