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
from conditional import DIGITS, label_context
from fake_mnist import write_fake_mnist_raw
from realnvp import RealNVP

TINY_MODEL = ["--blocks", "1", "--hidden", "16", "--depth", "1", "--batch-size", "50", "--device", "cpu",
              "--precision", "fp32", "--no-compile"]
# float32 nets on every machine, no timing of bfloat16 at start, and no compiling (but where compiling is tested)


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
    assert Image.open(out / "curves.png").size == (800, 320)
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


@pytest.mark.parametrize("flags", [[], ["--mixing", "--dropout", "0.3"], ["--conv-channels", "4"]],
                         ids=["defaults", "mixing-dropout", "convolutions"])
def test_eval_reproduces_the_logged_test_bits_per_dim(data_root, tmp_path, capsys, flags):
    # With dropout, this holds only if evaluation runs the nets in eval mode; with convolutions,
    # only if the checkpoint's flow places its pixels as the trained one did.
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
    assert run(data_root, out, "--epochs", "1") == 0  # a fresh run in the same folder starts a log of its own
    assert [m["epoch"] for m in read_metrics(out)] == [1]


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


# --------------------------------------------------------------------------- conditional


@pytest.fixture(scope="module")
def digit_data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("digits")
    write_fake_mnist_raw(root, n_train=600, n_test=200, seed=0, ink_by_label=True)  # each label's ink in its rows
    return root


def parsed(*flags):
    return main.parse_args(list(flags))


def test_the_classifiers_weight_and_margin_in_the_loss_default_to_6_and_30_where_only_the_prior_sees_the_digit():
    assert parsed("--conditional").classifier_weight == parsed("--conditional", "prior").classifier_weight == 6
    assert command_line.CLASSIFIER_WEIGHT == 6
    # in the nets it would cost ten flow passes an image
    assert parsed().classifier_weight == parsed("--conditional", "nets").classifier_weight == 0
    assert parsed("--conditional", "nets", "--classifier-weight", "2").classifier_weight == 2
    assert parsed("--conditional").classifier_margin == command_line.CLASSIFIER_MARGIN == 30
    assert parsed().classifier_margin == parsed("--conditional", "nets").classifier_margin == 0
    # Without the classifier the default margin has nothing to shape, and is no error.
    assert parsed("--conditional", "--classifier-weight", "0").classifier_weight == 0


def test_the_coupling_nets_default_to_convolutional_branches_where_only_the_prior_sees_the_digit():
    branches = [parsed(*flags).model_config.get("conv_channels", 0) for flags in (
        ["--conditional"], [], ["--conditional", "nets"], ["--conditional", "--conv-channels", "0"],
        ["--conditional", "--mixing"],  # the branches cannot take a learned mixing
        ["--conditional", "--conv-channels", "8"])]
    assert branches == [models.CONDITIONAL_CONV_CHANNELS, 0, 0, 0, 0, 8] and models.CONDITIONAL_CONV_CHANNELS == 32


def test_training_images_move_by_a_pixel_by_default_where_only_the_prior_sees_the_digit():
    moves = [parsed(*flags).translate for flags in (
        ["--conditional"], [], ["--conditional", "nets"], ["--conditional", "--translate", "0"], ["--translate", "2"])]
    assert moves == [command_line.TRANSLATE, 0, 0, 0, 2] and command_line.TRANSLATE == 1


def test_the_class_means_start_spread_where_only_the_prior_sees_the_digit():
    assert parsed("--conditional").class_spread == parsed("--conditional", "prior").class_spread == 1.5
    assert command_line.CLASS_SPREAD == 1.5
    assert parsed().class_spread == parsed("--conditional", "nets").class_spread == 1  # the nets' runs were measured without it
    assert parsed("--conditional", "nets", "--class-spread", "2").class_spread == 2


def test_a_run_with_translate_trains_on_moved_images(data_root, tmp_path, monkeypatch, capsys):
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
    assert run(data_root, tmp_path / "run", "--translate", "1", "--epochs", "1") == 0
    assert len(moved_batches) == math.ceil(270 / 50)  # every batch of the 270 training images (30 held out)
    assert all(trained is moved for trained, moved in zip(trained_batches, moved_batches, strict=True))
    assert "each moved by up to 1 pixel along each axis" in capsys.readouterr().out


def test_a_conditional_run_starts_its_class_means_spread(digit_data_root, tmp_path, monkeypatch):
    spreads, real_init = [], main.data_dependent_init

    def recording_init(flow, x, context=None, class_spread=1.0):
        spreads.append(class_spread)
        return real_init(flow, x, context, class_spread)

    monkeypatch.setattr(main, "data_dependent_init", recording_init)
    assert run(digit_data_root, tmp_path / "run", "--conditional", "--class-spread", "2", "--epochs", "1") == 0
    assert spreads == [2.0]


@pytest.mark.parametrize("where", ["prior", "nets"])
def test_a_conditional_run_scores_three_figures_and_classifies_by_likelihood(digit_data_root, tmp_path, capsys, where):
    out = tmp_path / "run"
    assert run(digit_data_root, out, "--conditional", where, "--epochs", "3", "--lr", "3e-3") == 0
    metrics = read_metrics(out)
    assert [sorted(set(m) - set(metrics[0])) for m in metrics] == [[], [], ["test_accuracy", "test_marginal_bpd"]]
    last = metrics[-1]
    # log p(x) = logsumexp_y log p(x | y) - log 10 >= log p(x | true y) - log 10, image by image.
    assert last["test_marginal_bpd"] <= last["test_bpd"] + math.log2(10) / 784 + 1e-9
    assert last["test_accuracy"] >= 0.6, last  # chance is 0.1
    figures = (f"test bits/dim: {last['test_bpd']:.4f} (given the digit), marginal test bits/dim: "
               f"{last['test_marginal_bpd']:.4f}, test accuracy by likelihood: {last['test_accuracy']:.2%}")
    assert last_line(capsys) == f"final {figures}"
    assert main.main(["--data", str(digit_data_root), "--eval", str(out / "latest.pt"), "--device", "cpu"]) == 0
    assert last_line(capsys) == figures
    assert Image.open(out / "samples_003.png").size == (2 + 10 * 30, 2 + 10 * 30)  # a row of 10 per digit
    assert checkpoints.load(out / "latest.pt")["model_config"]["conditional"] == where


@pytest.mark.parametrize("nets_see_context", [False, True], ids=["prior only", "nets and prior"])
def test_classifying_averages_each_digits_log_density_over_draws_of_noise(nets_see_context):
    torch.manual_seed(0)
    flow = RealNVP.build([1, 28, 28], blocks=1, hidden=8, context_features=DIGITS, nets_see_context=nets_see_context)
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


def test_resuming_a_conditional_run_classifies_after_its_new_last_epoch(digit_data_root, tmp_path):
    out = tmp_path / "run"
    assert run(digit_data_root, out, "--conditional", "--epochs", "1") == 0
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


def test_sample_draws_the_digits_asked_for(digit_data_root, tmp_path, capsys):
    out, pictures = tmp_path / "run", tmp_path / "pictures"
    assert run(digit_data_root, out, "--conditional", "--epochs", "1") == 0
    job = ["--sample", str(out / "latest.pt"), "--n", "16", "--temperature", "0.7", "--pairs", "3",
           "--data", str(digit_data_root), "--device", "cpu"]
    assert main.main([*job, "--out", str(pictures), "--digit", "3", "--digit", "7", "1"]) == 0
    written = sorted(p.name for p in pictures.iterdir())
    assert written == ["interpolation.png"] + [f"samples_t0.7_digit{d}.png" for d in (1, 3, 7)]
    assert Image.open(pictures / "samples_t0.7_digit3.png").size == (2 + 4 * 30, 2 + 4 * 30)
    assert Image.open(pictures / "interpolation.png").size == (2 + 10 * 30, 2 + 3 * 30)
    assert main.main([*job, "--out", str(tmp_path / "rows")]) == 0  # no --digit: a row of each digit
    assert Image.open(tmp_path / "rows" / "samples_t0.7.png").size == (2 + 10 * 30, 2 + 10 * 30)

    unconditional = tmp_path / "unconditional"
    assert run(digit_data_root, unconditional, "--epochs", "1") == 0
    capsys.readouterr()
    assert main.main([*job, "--sample", str(unconditional / "latest.pt"), "--digit", "3", "--out", str(pictures)]) == 2
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
    (["--hidden", "0"], "--hidden must be positive"),
    (["--weight-decay", "-1"], "--weight-decay must be zero or more"),
    (["--weight-decay", "nan"], "--weight-decay must be zero or more"),
    (["--temperature", "0.7", "nan"], "--temperature must be a positive number"),
    (["--temperature", "inf"], "--temperature must be a positive number"),
    (["--time-budget", "nan"], "--time-budget must be a positive number"),
    (["--model", "nice", "--mixing"], "--mixing applies to --model realnvp or spline, not --model nice"),
    (["--eval", "a.pt", "--sample", "b.pt"], "separate jobs"),
    (["--sample", "a.pt", "--digit", "10"], "argument --digit: invalid choice: 10"),
    (["--sample", "a.pt", "--digit", "-1"], "argument --digit: invalid choice: -1"),
    (["--digit", "3"], "--digit chooses what --sample draws: give --sample CKPT too"),
    (["--conditional", "everywhere"], "argument --conditional: invalid choice: 'everywhere'"),
    (["--classifier-weight", "3"], "--classifier-weight applies to a conditional flow: give --conditional too"),
    (["--conditional", "--classifier-weight", "-1"], "--classifier-weight must be zero or more"),
    (["--class-spread", "2"], "--class-spread applies to a conditional flow: give --conditional too"),
    (["--conditional", "--class-spread", "0"], "--class-spread must be a positive number"),
    (["--conditional", "--classifier-margin", "-1"], "--classifier-margin must be zero or more"),
    (["--conditional", "--classifier-margin", "nan"], "--classifier-margin must be zero or more"),
    (["--classifier-margin", "5"], "--classifier-margin applies to a conditional flow: give --conditional too"),
    (["--conditional", "nets", "--classifier-margin", "5"],
     "--classifier-margin shapes the classifier's cross-entropy: give a --classifier-weight above 0 too"),
    (["--conditional", "--class-spread", "inf"], "--class-spread must be a positive number"),
    (["--translate", "-1"], "--translate must lie in 0..27 pixels, got -1"),
    (["--translate", "28"], "--translate must lie in 0..27 pixels, got 28"),
])
def test_bad_flags_exit_with_status_2(flags, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main.main(flags)
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert error.startswith("main.py: error: ") and message in error and len(error.strip().splitlines()) == 1, error


def test_help_states_each_default_once_and_never_as_none(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main.main(["--help"])
    assert exit_info.value.code == 0
    help_text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines: undo it
    assert "default: None" not in help_text
    assert "images per gradient step (per process; default: 256)" in help_text
    assert "number of blocks F = f0 o f1, two couplings each (default: 4 for spline, else 8)" in help_text
    assert "training goes on uncompiled; default: on)" in help_text
    assert "(default: on) (default" not in help_text


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
