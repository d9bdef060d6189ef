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
import command_line
import download_mnist
import main
import models
import pixels
import training
from conditional import DIGITS, ConditionalFlow, ConditionalGaussian, label_context
from fake_mnist import write_fake_mnist_raw
from realnvp import RealNVP

TINY_MODEL = ["--blocks", "1", "--hidden", "16", "--batch-size", "50", "--device", "cpu", "--precision", "fp32",
              "--no-compile"]
# float32 nets on every machine, no timing of bfloat16 at start, and no compiling (but where compiling is tested)
FAKE_MD5S = {}  # data folder -> the MD5s of its fake MNIST files, which main.py checks them against


@pytest.fixture(autouse=True)
def no_public_mirrors(monkeypatch):
    monkeypatch.setattr(download_mnist, "MIRRORS", ())  # nothing but 127.0.0.1 is ever contacted


def fake_data(root, **sizes):
    FAKE_MD5S[str(root)] = write_fake_mnist_raw(root, **sizes)
    return root


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return fake_data(tmp_path_factory.mktemp("data"), n_train=300, n_test=100, seed=0)


@pytest.fixture(scope="module")
def trained(data_root, tmp_path_factory):
    """The folder of one epoch of the tiny model, which tests copy where they change it."""
    out = tmp_path_factory.mktemp("trained")
    assert run(data_root, out, "--epochs", "1") == 0
    return out


def on_fake_data(data_root, *args):
    """main.main(args) on the fake MNIST in `data_root`."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(download_mnist, "FILES", FAKE_MD5S[str(data_root)])
        return main.main(["--data", str(data_root), *args])


def run(data_root, out, *flags):
    return on_fake_data(data_root, "--out", str(out), *TINY_MODEL, *flags)


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
    assert Image.open(out / "curves.png").size == (800, 320)
    assert image.numel() > 28 * 28 and image.std() > 0
    for name in ("latest.pt", "best.pt"):
        state = checkpoints.load(out / name)
        assert all(torch.isfinite(t).all() for t in state["model"].values())
    assert checkpoints.load(out / "latest.pt")["epoch"] == 2
    assert not list(out.glob("*.tmp"))


def test_training_lowers_the_test_bits_per_dim(data_root, tmp_path):
    out = tmp_path / "nice"
    # NICE has no ActNorm: it starts as the identity and has everything to learn, through the same script.
    assert run(data_root, out, "--epochs", "6", "--lr", "3e-3", "--model", "nice") == 0
    metrics = read_metrics(out)
    assert metrics[-1]["test_bpd"] < metrics[0]["test_bpd"] - 0.05, metrics
    assert checkpoints.load(out / "latest.pt")["model_config"]["model"] == "nice"


@pytest.mark.parametrize("flags", [[], ["--model", "spline", "--conv-channels", "4"]], ids=["defaults", "convolutions"])
def test_eval_reproduces_the_logged_test_bits_per_dim(data_root, trained, tmp_path, capsys, flags):
    # With convolutions, this holds only if the checkpoint's flow places its pixels as the trained one did.
    out = tmp_path / "run" if flags else trained
    if flags:
        assert run(data_root, out, "--epochs", "1", *flags) == 0
    logged = read_metrics(out)[-1]["test_bpd"]
    capsys.readouterr()
    assert on_fake_data(data_root, "--eval", str(out / "best.pt"), "--device", "cpu") == 0
    assert last_line(capsys) == f"test bits/dim: {logged:.4f}"


def test_resume_continues_the_epoch_count(data_root, trained, tmp_path):
    out = shutil.copytree(trained, tmp_path / "run")
    assert run(data_root, out, "--epochs", "3", "--resume") == 0
    assert [m["epoch"] for m in read_metrics(out)] == [1, 2, 3]
    assert checkpoints.load(out / "latest.pt")["epoch"] == 3
    assert run(data_root, out, "--epochs", "1") == 0  # a fresh run in the same folder starts a log of its own
    assert [m["epoch"] for m in read_metrics(out)] == [1]


def test_resume_goes_on_with_the_runs_own_flags(data_root, tmp_path, capsys):
    out = tmp_path / "run"
    assert run(data_root, out, "--epochs", "1", "--lr", "3e-3", "--hidden", "12") == 0
    capsys.readouterr()
    # Only the flags that may change are given: the run's --lr and --hidden come from its checkpoint.
    assert on_fake_data(data_root, "--out", str(out), "--resume", "--epochs", "2", "--no-compile", "--device", "cpu",
                        "--precision", "fp32") == 0
    assert "resuming with --epochs 2 (the run had 1)" in capsys.readouterr().out
    state = checkpoints.load(out / "latest.pt")
    assert state["flags"]["lr"] == 3e-3 and state["model_config"]["hidden"] == 12 and state["epoch"] == 2
    assert all(adam["step"] == 2 * 6 for adam in state["optimizer"]["state"].values())  # moments carried on
    # A flag given again that differs from the run's is refused in one line.
    assert on_fake_data(data_root, "--out", str(out), "--resume", "--lr", "1e-3", "--device", "cpu") == 2
    error = capsys.readouterr().err
    assert error.startswith("main.py: error: --lr 0.001 differs from the run's 0.003") and error.count("\n") == 1


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


def test_sample_writes_a_grid(data_root, trained, tmp_path, capsys):
    assert on_fake_data(data_root, "--sample", str(trained / "best.pt"), "--temperature", "1", "0.5",
                        "--out", str(tmp_path / "pictures"), "--device", "cpu") == 0
    for name in ("samples_t1.png", "samples_t0.5.png"):
        image = Image.open(tmp_path / "pictures" / name)
        assert image.size == (2 + 8 * 30, 2 + 8 * 30)  # an 8 x 8 grid of 28-pixel images, 2-pixel padding
    # 8 rows (pairs) of 10 steps
    assert Image.open(tmp_path / "pictures" / "interpolation.png").size == (2 + 10 * 30, 2 + 8 * 30)


# --------------------------------------------------------------------------- conditional


@pytest.fixture(scope="module")
def digit_data_root(tmp_path_factory):
    # Each label's ink in its own rows, so that the digits can be told apart.
    return fake_data(tmp_path_factory.mktemp("digits"), n_train=600, n_test=100, seed=0, ink_by_label=True)


@pytest.fixture(scope="module")
def trained_conditional(digit_data_root, tmp_path_factory):
    """The folder of one epoch of the tiny model under --conditional."""
    out = tmp_path_factory.mktemp("trained_conditional")
    assert run(digit_data_root, out, "--conditional", "--epochs", "1") == 0
    return out


def parsed(*flags):
    return main.parse_args(list(flags))


def test_conditional_names_a_recipe_and_a_flag_given_overrides_it():
    spline = ("--model", "spline")
    prior, nets, plain = parsed(*spline, "--conditional"), parsed(*spline, "--conditional", "nets"), parsed(*spline)
    assert parsed(*spline, "--conditional", "prior").model_config == prior.model_config
    assert [(run.conv_channels, run.translate, run.classifier_weight, run.classifier_margin, run.class_spread)
            for run in (prior, nets, plain)] == [(32, 1, 6, 30, 1.5), (0, 0, 0, 0, 1), (0, 0, 0, 0, 1)]
    assert prior.model_config["conv_channels"] == 32 and plain.model_config["conv_channels"] == 0
    given = parsed(*spline, "--conditional", "--conv-channels", "0", "--classifier-weight", "10")
    assert (given.model_config["conv_channels"], given.classifier_weight, given.translate) == (0, 10, 1)


def test_the_recipe_is_printed_and_its_runs_train_on_moved_images(digit_data_root, tmp_path, monkeypatch, capsys):
    moved_batches, trained_batches = [], []
    real_translate, real_step = main.translate_images, training.TrainingStep.__call__

    def recording_translate(images, pixels):
        assert pixels == 1
        moved_batches.append(real_translate(images, pixels))
        return moved_batches[-1]

    def recording_step(self, batch, *more_inputs):
        trained_batches.append(batch)
        return real_step(self, batch, *more_inputs)

    monkeypatch.setattr(main, "translate_images", recording_translate)
    monkeypatch.setattr(training.TrainingStep, "__call__", recording_step)
    spreads, real_fit = [], ConditionalGaussian.fit_context_means
    monkeypatch.setattr(ConditionalGaussian, "fit_context_means",
                        lambda self, z, context, spread: spreads.append(spread) or real_fit(self, z, context, spread))
    assert run(digit_data_root, tmp_path / "run", "--conditional", "--model", "spline", "--conv-channels", "4",
               "--epochs", "1") == 0
    assert len(moved_batches) == math.ceil(540 / 50)  # every batch of the 540 training images (60 held out)
    assert all(trained is moved for trained, moved in zip(trained_batches, moved_batches, strict=True))
    assert spreads == [1.5]  # the class means start spread
    assert ("conditioned on the digit in the prior (recipe --conditional prior: branches of 4 channels on MLP nets, "
            "images moved by up to 1 pixel, classifier weight 6 with a margin of 30 nats, class means spread 1.5)"
            in capsys.readouterr().out)


@pytest.mark.parametrize("where", ["prior", "nets"])
def test_a_conditional_run_scores_three_figures_and_classifies_by_likelihood(digit_data_root, tmp_path, capsys, where):
    out = tmp_path / "run"
    assert run(digit_data_root, out, "--conditional", where, "--epochs", "2", "--lr", "3e-3") == 0
    metrics = read_metrics(out)
    assert [sorted(set(m) - set(metrics[0])) for m in metrics] == [[], ["test_accuracy", "test_marginal_bpd"]]
    last = metrics[-1]
    # log p(x) = logsumexp_y log p(x | y) - log 10 >= log p(x | true y) - log 10, image by image.
    assert last["test_marginal_bpd"] <= last["test_bpd"] + math.log2(10) / 784 + 1e-9
    assert last["test_accuracy"] >= 0.6, last  # chance is 0.1
    figures = (f"test bits/dim: {last['test_bpd']:.4f} (given the digit), marginal test bits/dim: "
               f"{last['test_marginal_bpd']:.4f}, test accuracy by likelihood: {last['test_accuracy']:.2%}")
    assert last_line(capsys) == f"final {figures}"
    assert on_fake_data(digit_data_root, "--eval", str(out / "best.pt"), "--device", "cpu") == 0
    assert last_line(capsys) == figures
    assert Image.open(out / "samples_002.png").size == (2 + 10 * 30, 2 + 10 * 30)  # a row of 10 per digit
    assert checkpoints.load(out / "latest.pt")["model_config"]["conditional"] == where


@pytest.mark.parametrize("nets_see_context", [False, True], ids=["prior only", "nets and prior"])
def test_classifying_averages_each_digits_log_density_over_draws_of_noise(nets_see_context):
    torch.manual_seed(0)
    flow = ConditionalFlow(RealNVP.build([1, 28, 28], blocks=1, hidden=8,
                                         context_features=DIGITS if nets_see_context else 0), DIGITS, nets_see_context)
    with torch.no_grad():  # random weights and class means: every digit has a density of its own
        for parameter in flow.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    images, labels = torch.randint(0, 256, (40, 1, 28, 28), dtype=torch.uint8), torch.randint(0, DIGITS, (40,))
    figures = main.evaluate(flow, images, labels, 1e-6, torch.device("cpu"), classify=True)

    # The reference: each digit's log p(v | d) one at a time, with the noise the one batch draws.
    generator = torch.Generator().manual_seed(main.EVAL_NOISE_SEED)
    draws = []
    with torch.no_grad():
        for _ in range(main.CLASSIFY_DRAWS):
            noise_state, by_digit = generator.get_state(), []
            for digit in range(DIGITS):
                generator.set_state(noise_state)  # every digit sees this draw's noise
                by_digit.append(pixels.log_density(flow, images, 1e-6, generator, label_context(torch.full((40,), digit))))
            draws.append(torch.stack(by_digit, dim=1))
    log_p = torch.stack(draws)  # [draws, 40, 10]
    assert main.CLASSIFY_DRAWS > 1 and not torch.equal(log_p[0], log_p[1])  # the draws differ
    to_bits = lambda log_p_v: (8 - log_p_v / (784 * math.log(2))).mean().item()
    mean_over_draws = log_p.mean(0)
    assert figures["bpd"] == pytest.approx(to_bits(mean_over_draws[torch.arange(40), labels]), abs=1e-5)
    assert figures["marginal_bpd"] == pytest.approx(to_bits(torch.logsumexp(log_p, 2) - math.log(10)), abs=1e-5)
    assert figures["accuracy"] == (mean_over_draws.argmax(1) == labels).sum().item() / 40


def test_resuming_a_conditional_run_classifies_after_its_new_last_epoch(digit_data_root, trained_conditional,
                                                                       tmp_path):
    out = shutil.copytree(trained_conditional, tmp_path / "run")
    assert run(digit_data_root, out, "--conditional", "--epochs", "2", "--resume") == 0
    assert ["test_accuracy" in m for m in read_metrics(out)] == [True, True]


def test_a_budget_spent_in_the_last_evaluation_still_classifies(digit_data_root, tmp_path, monkeypatch, capsys):
    now = [0.0]  # a training clock that stands still in training and moves 100 s an evaluation
    monkeypatch.setattr(training, "time", SimpleNamespace(monotonic=lambda: now[0], perf_counter=time.perf_counter))
    real_evaluate = main.evaluate

    def slow_evaluate(*args, **kwargs):
        now[0] += 100
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(main, "evaluate", slow_evaluate)
    out = tmp_path / "run"
    assert run(digit_data_root, out, "--conditional", "--epochs", "3", "--time-budget", "150") == 0
    metrics = read_metrics(out)
    assert [m["epoch"] for m in metrics] == [1] and "test_accuracy" in metrics[0]
    printed = capsys.readouterr().out
    assert "time budget of 150 s reached" in printed
    assert printed.strip().splitlines()[-1].endswith(f"test accuracy by likelihood: {metrics[0]['test_accuracy']:.2%}")


def test_sample_draws_the_digits_asked_for(digit_data_root, trained_conditional, trained, tmp_path, capsys):
    pictures = tmp_path / "pictures"
    job = ["--sample", str(trained_conditional / "best.pt"), "--temperature", "0.7", "--device", "cpu"]
    assert on_fake_data(digit_data_root, *job, "--out", str(pictures), "--digit", "3", "--digit", "7", "1") == 0
    written = sorted(p.name for p in pictures.iterdir())
    assert written == ["interpolation.png"] + [f"samples_t0.7_digit{d}.png" for d in (1, 3, 7)]
    assert Image.open(pictures / "samples_t0.7_digit3.png").size == (2 + 8 * 30, 2 + 8 * 30)
    assert Image.open(pictures / "interpolation.png").size == (2 + 10 * 30, 2 + 8 * 30)
    assert on_fake_data(digit_data_root, *job, "--out", str(tmp_path / "rows")) == 0  # no --digit: a row of each digit
    assert Image.open(tmp_path / "rows" / "samples_t0.7.png").size == (2 + 10 * 30, 2 + 10 * 30)

    capsys.readouterr()
    assert on_fake_data(digit_data_root, *job, "--sample", str(trained / "best.pt"), "--digit", "3",
                        "--out", str(pictures)) == 2
    error = capsys.readouterr().err
    assert "--digit needs a conditional checkpoint" in error and len(error.strip().splitlines()) == 1


# --------------------------------------------------------------------------- faults


def test_non_finite_losses_never_reach_the_weights(data_root, tmp_path, monkeypatch):
    calls = {"n": 0}
    real_log_density = pixels.log_density

    def sometimes_nan(model, images, alpha, generator=None, context=None):
        result = real_log_density(model, images, alpha, generator, context)
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
    monkeypatch.setattr(pixels, "log_density", lambda model, images, alpha, generator=None, context=None:
                        real_log_density(model, images, alpha, generator, context) * (math.nan if model.training else 1))
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
    (["--hidden", "0"], "--hidden must be a positive number"),
    (["--lr", "nan"], "--lr must be a positive number"),
    (["--temperature", "0.7", "nan"], "--temperature must be a positive number"),
    (["--time-budget", "inf"], "--time-budget must be a positive number"),
    (["--conv-channels", "-1"], "--conv-channels must be zero or more"),
    (["--eval", "a.pt", "--sample", "b.pt"], "separate jobs"),
    (["--eval", "a.pt", "--resume"], "--resume goes on training"),
    (["--sample", "a.pt", "--digit", "10"], "argument --digit: invalid choice: 10"),
    (["--digit", "3"], "--digit chooses what --sample draws: give --sample CKPT too"),
    (["--conditional", "everywhere"], "argument --conditional: invalid choice: 'everywhere'"),
    (["--classifier-weight", "3"], "--classifier-weight applies to a conditional flow: give --conditional too"),
    (["--conditional", "--classifier-weight", "-1"], "--classifier-weight must be zero or more"),
    (["--mixing"], "unrecognized arguments: --mixing"),
])
def test_bad_flags_exit_with_status_2(flags, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main.main(flags)
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert error.startswith("main.py: error: ") and message in error and len(error.strip().splitlines()) == 1, error


def test_help_lists_about_twenty_flags_the_learners_first_each_default_once(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main.main(["--help"])
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    help_text = " ".join(printed.split())  # argparse wraps lines: undo it
    options = [line.split()[0].rstrip(",") for line in printed.splitlines() if line.startswith("  --")]
    assert len(options) == 22, options
    assert options[:3] == ["--epochs", "--time-budget", "--out"] and options.index("--model") < options.index("--lr")
    assert "default: None" not in help_text and "(default: on) (default" not in help_text
    assert "images per step and process; the MLP models run best at 256 (default: 32)" in help_text


def test_bad_checkpoints_and_output_folders_are_one_line_errors(data_root, tmp_path, capsys):
    torch.save({"format": checkpoints.FORMAT, "model": {}}, tmp_path / "incomplete.pt")
    (tmp_path / "a-file").write_text("not a folder")
    for job in (["--eval", str(tmp_path / "missing.pt")], ["--sample", str(tmp_path / "incomplete.pt")],
                ["--out", str(tmp_path / "a-file"), "--epochs", "1"], ["--out", str(tmp_path / "new"), "--resume"]):
        assert on_fake_data(data_root, *TINY_MODEL, *job) == 2
        error = capsys.readouterr().err
        assert error.startswith("main.py: error: ") and len(error.strip().splitlines()) == 1, error


@pytest.mark.parametrize("damage", ["flipped", "truncated"])
def test_data_corrupted_in_place_is_refused_in_one_line(tmp_path, capsys, damage):
    broken = fake_data(tmp_path / "data", n_train=50, n_test=20, seed=0)
    labels = broken / "MNIST" / "raw" / "t10k-labels-idx1-ubyte"
    data = bytearray(labels.read_bytes())
    if damage == "flipped":  # the same size, ten bytes changed
        data[10:20] = bytes(255 - b for b in data[10:20])
    labels.write_bytes(bytes(data) if damage == "flipped" else bytes(data[:15]))
    assert run(broken, tmp_path / "run", "--epochs", "1") == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]  # below the note that it tries to install it again
    assert error.startswith("main.py: error: ") and "t10k-labels-idx1-ubyte is corrupt (wrong MD5)" in error
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # never trained nor scored on


def test_a_checkpoint_that_cannot_be_saved_stops_the_run_in_one_line(data_root, tmp_path, monkeypatch, capsys):
    saves, real_save = [], torch.save

    def disk_full_at_the_second_epoch(state, file):
        saves.append(state["epoch"])
        if state["epoch"] == 2:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 17")
        real_save(state, file)

    monkeypatch.setattr(checkpoints.torch, "save", disk_full_at_the_second_epoch)
    out = tmp_path / "run"
    assert run(data_root, out, "--epochs", "3") == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]  # below the progress bar
    assert error.startswith(f"main.py: training stopped: could not save {out}")
    assert error.endswith("on disk is the one saved before, intact")
    monkeypatch.undo()
    assert checkpoints.load(out / "latest.pt")["epoch"] == 1  # the last good checkpoint, intact
    assert [m["epoch"] for m in read_metrics(out)] == [1] and not list(out.glob("*.tmp"))


# --------------------------------------------------------------------------- torch.compile


@pytest.mark.skipif(not (shutil.which("c++") or shutil.which("g++")), reason="torch.compile on a CPU needs a C++ compiler")
def test_compiled_training_runs_end_to_end(data_root, tmp_path, capsys):
    """Two epochs with --compile: each has a short last batch, and evaluation switches the
    model to eval mode and back in between, without a second compile."""
    out = tmp_path / "run"
    torch._dynamo.reset()  # test-only switches of torch's compiler: other tests' graphs gone, no second graph
    with torch._dynamo.config.patch(error_on_recompile=True):
        assert run(data_root, out, "--compile", "--epochs", "2", "--model", "nice") == 0  # the smallest graph
    printed = capsys.readouterr().out
    assert "compiles the training loss" in printed and "torch.compile failed" not in printed
    assert [m["epoch"] for m in read_metrics(out)] == [1, 2]
    assert all(math.isfinite(m["test_bpd"]) for m in read_metrics(out))
