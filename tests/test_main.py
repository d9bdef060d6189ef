"""main.py end to end on a tiny synthetic MNIST, and the bits/dim formula against references."""
import itertools
import json
import math
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

import main
from fake_mnist import write_fake_mnist_raw
from realnvp import RealNVP

TINY_MODEL = ["--couplings", "1", "--hidden", "16", "--depth", "1", "--batch-size", "50", "--device", "cpu"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_fake_mnist_raw(root, n_train=300, n_test=100, seed=0)
    return root


def run(data_root, out, *flags):
    return main.main(["--data", str(data_root), "--out", str(out), *TINY_MODEL, *flags])


def read_metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def tiny_flow():
    return main.build_model({"model": "realnvp", "shape": [1, 28, 28], "couplings": 1, "hidden": 16, "depth": 1,
                             "alpha": 1e-6, "actnorm": True, "shuffle": True})


def last_line(capsys):
    return capsys.readouterr().out.strip().splitlines()[-1]


# --------------------------------------------------------------------------- bits/dim


def test_uniform_density_scores_exactly_eight_bits():
    """If v is uniform on [0,1)^D, p(v) = 1 and bits/dim must be 8 whatever the data."""

    class UniformInLogitSpace:
        # Density of y = logit(a + (1 - 2a) v) for uniform v: dv/dy = sigmoid(y) sigmoid(-y) / (1 - 2a).
        def __init__(self, alpha):
            self.alpha = alpha

        def logProbability(self, y):
            log_dv_dy = torch.nn.functional.logsigmoid(y) + torch.nn.functional.logsigmoid(-y)
            return (log_dv_dy - math.log(1 - 2 * self.alpha)).flatten(1).sum(1)

    torch.manual_seed(0)
    images = torch.randint(0, 256, (8, 1, 28, 28), dtype=torch.uint8)
    for alpha in (1e-6, 0.05):
        bpd = main.bits_per_dim(main.log_density(UniformInLogitSpace(alpha), images, alpha))
        assert torch.allclose(bpd, torch.full_like(bpd, 8.0), atol=1e-4), bpd


@pytest.mark.parametrize("alpha", [1e-6, 0.05])
def test_log_density_matches_torch_distributions(alpha):
    """A flow that is the identity with a Gaussian prior: log p(v) against a TransformedDistribution."""
    flow = RealNVP.build([1, 28, 28], blocks=1, hidden=8)  # starts as the identity
    torch.manual_seed(0)
    images = torch.randint(0, 256, (5, 1, 28, 28), dtype=torch.uint8)
    generator = torch.Generator().manual_seed(3)
    ours = main.log_density(flow, images, alpha, generator)

    # v = (sigmoid(y) - a) / (1 - 2a) with y ~ N(0, 1), written with torch.distributions.
    v_distribution = torch.distributions.TransformedDistribution(
        torch.distributions.Normal(torch.zeros(784, dtype=torch.float64), 1.0),
        [torch.distributions.SigmoidTransform(),
         torch.distributions.AffineTransform(-alpha / (1 - 2 * alpha), 1 / (1 - 2 * alpha))],
    )
    noise = torch.rand(images.shape, generator=torch.Generator().manual_seed(3))
    v = ((images.double() + noise.double()) / 256).flatten(1)
    reference = v_distribution.log_prob(v).sum(1)
    assert torch.allclose(ours.double(), reference, rtol=1e-4, atol=0.05), (ours, reference)


def test_bits_per_dim_of_a_known_log_density():
    # log p(v) = -D ln 2 means one bit per dimension for v, so 1 + 8 bits for the 8-bit image.
    assert main.bits_per_dim(torch.tensor([-784 * math.log(2)])).item() == pytest.approx(9.0)


def test_logit_to_pixels_inverts_the_squash():
    v = torch.rand(100, dtype=torch.float64)
    s = 0.05 + 0.9 * v
    assert torch.allclose(main.logit_to_pixels(torch.log(s / (1 - s)), 0.05), v, atol=1e-12)


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
        state = main.load_checkpoint(out / name)
        assert all(torch.isfinite(t).all() for t in state["model"].values())
    assert main.load_checkpoint(out / "latest.pt")["epoch"] == 2
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
    assert main.load_checkpoint(out / "latest.pt")["epoch"] == 3


def test_resume_takes_the_optimizer_settings_from_this_runs_flags(data_root, tmp_path):
    out = tmp_path / "run"
    assert run(data_root, out, "--epochs", "1", "--weight-decay", "0.5") == 0
    assert main.load_checkpoint(out / "latest.pt")["optimizer"]["param_groups"][0]["weight_decay"] == 0.5
    assert run(data_root, out, "--epochs", "2", "--resume") == 0
    state = main.load_checkpoint(out / "latest.pt")
    assert state["optimizer"]["param_groups"][0]["weight_decay"] == 0.0
    assert all(adam["step"] == 2 * 6 for adam in state["optimizer"]["state"].values())  # moments carried on


def test_weight_decay_shrinks_a_weight_with_no_gradient_by_lr_times_decay():
    weight = torch.nn.Parameter(torch.ones(3))
    optimizer = main.make_optimizer(torch.nn.ParameterList([weight]), lr=0.1, weight_decay=0.5)
    weight.grad = torch.zeros(3)
    optimizer.step()
    assert torch.allclose(weight, torch.full((3,), 1 - 0.1 * 0.5))


def test_checkpoints_from_before_the_newer_options_still_load(data_root, tmp_path):
    out = tmp_path / "run"
    assert run(data_root, out, "--epochs", "1") == 0
    state = main.load_checkpoint(out / "latest.pt")
    for name in main.NEWER_MODEL_ARGS:
        del state["model_args"][name]
    main.save_checkpoint(out / "latest.pt", state)
    assert run(data_root, out, "--epochs", "2", "--resume") == 0
    assert [m["epoch"] for m in read_metrics(out)] == [1, 2]


def test_time_budget_stops_mid_epoch_then_evaluates_and_saves(data_root, tmp_path, monkeypatch, capsys):
    clock = iter(range(10_000))  # a clock that moves one second each time main.py reads it
    monkeypatch.setattr(main, "time", SimpleNamespace(monotonic=lambda: next(clock)))
    monkeypatch.setattr(main, "LOG_INTERVAL", 2)  # the budget is checked every LOG_INTERVAL steps
    out = tmp_path / "run"
    assert run(data_root, out, "--epochs", "3", "--time-budget", "5") == 0
    metrics = read_metrics(out)
    assert [m["epoch"] for m in metrics] == [1]
    images_per_epoch = 300 - 30  # the fixture's training images, less the held-out tenth
    assert metrics[0]["samples_per_s"] * metrics[0]["seconds"] < images_per_epoch  # stopped mid-epoch
    printed = capsys.readouterr().out
    assert printed.count("time budget of 5 s reached") == 1
    assert printed.strip().splitlines()[-1] == f"final test bits/dim: {metrics[0]['test_bpd']:.4f}"
    assert main.load_checkpoint(out / "latest.pt")["train_seconds"] >= 5
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
    assert main.load_checkpoint(out / "latest.pt")["model_args"]["model"] == "nice"
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


def test_interpolation_starts_and_ends_at_the_two_digits(data_root):
    torch.manual_seed(0)
    model = tiny_flow()
    images = main.get_data(main.parse_args(["--data", str(data_root)]), "test")[:4]
    captured = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(main, "save_image", lambda pixels, path, nrow: captured.update(pixels=pixels, nrow=nrow))
        main.save_interpolations(model, images, "unused.png", 1e-6, steps=5)
    pixels = captured["pixels"].view(2, 5, 1, 28, 28)
    bin_centres = (images.float() + 0.5) / 256
    # The ends decode back to the dequantized digits, v = (k + u) / 256: inside each pixel's bin.
    assert (pixels[:, 0] - bin_centres[0::2]).abs().max() <= 0.5 / 256 + 1e-5
    assert (pixels[:, -1] - bin_centres[1::2]).abs().max() <= 0.5 / 256 + 1e-5
    assert (pixels[:, 2] - bin_centres[0::2]).abs().max() > 0.1  # the middle is neither


# --------------------------------------------------------------------------- faults


def test_non_finite_losses_never_reach_the_weights(data_root, tmp_path, monkeypatch):
    calls = {"n": 0}
    real_log_density = main.log_density

    def sometimes_nan(model, images, alpha, generator=None):
        result = real_log_density(model, images, alpha, generator)
        calls["n"] += 1
        return result * math.nan if model.training and calls["n"] % 2 == 0 else result

    monkeypatch.setattr(main, "log_density", sometimes_nan)
    out = tmp_path / "run"
    assert run(data_root, out, "--epochs", "2") == 0
    state = main.load_checkpoint(out / "latest.pt")
    assert all(torch.isfinite(t).all() for t in state["model"].values())
    assert all(math.isfinite(m["test_bpd"]) for m in read_metrics(out))


def test_a_run_that_keeps_diverging_stops_with_a_message(data_root, tmp_path, monkeypatch, capsys):
    real_log_density = main.log_density
    monkeypatch.setattr(main, "log_density", lambda model, images, alpha, generator=None:
                        real_log_density(model, images, alpha, generator) * (math.nan if model.training else 1))
    out = tmp_path / "run"
    assert run(data_root, out, "--epochs", "30") == 1
    assert "steps in a row had a non-finite loss or gradients" in capsys.readouterr().err
    # Epochs that ended before the run gave up saved weights that no optimizer step touched.
    state = main.load_checkpoint(out / "latest.pt")
    assert all(adam["step"] == 0 and not adam["exp_avg"].any() for adam in state["optimizer"]["state"].values())
    assert all(torch.isfinite(t).all() for t in state["model"].values())


@pytest.mark.parametrize("precision", [None, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("max_norm", [1e-3, 1e6], ids=["clipped", "not-clipped"])
def test_training_step_matches_clipping_then_adamw_by_hand(data_root, monkeypatch, max_norm, precision):
    """The clip and skip that happen inside the fused kernel, against torch's own GradScaler,
    clip_grad_norm_ and plain AdamW."""
    monkeypatch.setattr(main, "MAX_GRAD_NORM", max_norm)
    torch.manual_seed(0)
    model = tiny_flow()
    reference = tiny_flow()
    reference.load_state_dict(model.state_dict())
    step = main.make_training_step(model, main.make_optimizer(model, lr=1e-2, weight_decay=0.3), 1e-6, precision)
    reference_adam = torch.optim.AdamW(reference.parameters(), lr=1e-2, weight_decay=0.3, foreach=False)
    scaler = torch.amp.GradScaler("cpu", init_scale=main.FLOAT16_LOSS_SCALE, enabled=precision is not None)
    images = main.get_data(main.parse_args(["--data", str(data_root)]), "train")[:50]
    norms = []
    for seed in range(25):
        torch.manual_seed(seed)  # the same dequantization noise for both
        step(images)
        torch.manual_seed(seed)
        reference_adam.zero_grad()
        with torch.autocast("cpu", dtype=precision or torch.float32, enabled=precision is not None):
            loss = main.NegativeLogLikelihood(reference, 1e-6)(images)
        scaler.scale(loss).backward()
        scaler.unscale_(reference_adam)
        norms.append(torch.nn.utils.clip_grad_norm_(reference.parameters(), max_norm).item())
        scaler.step(reference_adam)
        scaler.update()
    # float16 skips its first steps while the loss scale comes down from 2^16; some must remain.
    taken = [norm for norm in norms if math.isfinite(norm)]
    assert len(taken) >= 2 and all((norm > max_norm) == (max_norm < 1) for norm in taken)  # the clip acted, or not
    # The reference unscales, then clips in a second rounded multiply; the kernel divides once.
    # Over float16's 25 steps those last-bit differences grow a little through Adam.
    tolerance = 1e-5 if precision is None else 1e-4
    for mine, theirs in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(mine, theirs, rtol=tolerance, atol=tolerance)


def test_float16_loss_scale_follows_grad_scaler(monkeypatch):
    """Halved after a skipped step, doubled after FLOAT16_GROWTH_INTERVAL good ones in a row:
    the rule of torch.amp.GradScaler, run side by side on the same gradients."""
    monkeypatch.setattr(main, "FLOAT16_GROWTH_INTERVAL", 3)
    weight, reference_weight = torch.nn.Parameter(torch.ones(4)), torch.nn.Parameter(torch.ones(4))
    optimizer = main.make_optimizer(torch.nn.ParameterList([weight]), lr=1e-3)
    optimizer_step = main.ClippedOptimizerStep(optimizer, low_precision=torch.float16)
    reference_adam = torch.optim.AdamW([reference_weight], lr=1e-3, weight_decay=0.0)
    scaler = torch.amp.GradScaler("cpu", init_scale=main.FLOAT16_LOSS_SCALE, growth_interval=3)
    scales = []
    for finite in [True, False, True, True, True, True, False, False, True, True, True, True, True, True, True]:
        gradient = torch.full((4,), 1.0 if finite else math.inf)
        weight.grad = gradient * optimizer_step.loss_scale  # the gradient of the scaled loss
        reference_weight.grad = scaler.scale(gradient)
        assert bool(optimizer_step()) == finite
        scaler.step(reference_adam)
        scaler.update()
        assert optimizer_step.loss_scale.item() == scaler.get_scale()
        scales.append(scaler.get_scale())
    changes = [later / earlier for earlier, later in itertools.pairwise(scales) if later != earlier]
    assert 0.5 in changes and 2.0 in changes  # it did halve and double
    torch.testing.assert_close(weight, reference_weight)


def test_training_losses_are_summed_on_the_device_and_count_skipped_steps():
    losses = main.TrainingLosses(torch.device("cpu"))
    for loss in [1.0, math.nan, math.nan, 2.0, math.nan]:
        losses.add(torch.tensor(loss))
    assert losses.read() == (1.5, 2)  # the mean of the finite losses; the longest streak of NaN
    for loss in [math.nan, math.nan, math.nan, 4.0]:
        losses.add(torch.tensor(loss))
    assert losses.read() == (4.0, 4)  # since the last read; the streak went on from the last NaN
    assert losses.epoch_mean() == pytest.approx(7 / 3)
    losses.add(torch.tensor(5.0))
    assert losses.epoch_mean() == 5.0


@pytest.mark.parametrize("precision", [None, torch.bfloat16, torch.float16], ids=["fp32", "bf16", "fp16"])
def test_a_step_with_a_finite_loss_but_non_finite_gradients_is_skipped(data_root, monkeypatch, precision):
    real_log_density = main.log_density

    def nan_gradients(model, images, alpha, generator=None):
        result = real_log_density(model, images, alpha, generator)
        return result + torch.sqrt(0 * result)  # adds 0, but d sqrt(0 * r)/dr = 0 / 0

    model = tiny_flow()
    optimizer = main.make_optimizer(model, lr=1e-3, weight_decay=0.5)  # decay alone would move the weights
    step = main.make_training_step(model, optimizer, 1e-6, precision)
    images = main.get_data(main.parse_args(["--data", str(data_root)]), "train")[:50]
    before = {name: value.clone() for name, value in model.state_dict().items()}

    with monkeypatch.context() as patch:
        patch.setattr(main, "log_density", nan_gradients)
        assert torch.isnan(step(images))  # reported as skipped
    assert all(torch.equal(before[name], value) for name, value in model.state_dict().items())
    assert all(adam["step"] == 0 for adam in optimizer.state.values())

    # Healthy steps afterwards do update them (float16 first halves its loss scale of 2^16
    # until the gradients fit, skipping a few more steps).
    for _ in range(20):
        step(images)
        if not all(torch.equal(before[name], value) for name, value in model.state_dict().items()):
            break
    assert not all(torch.equal(before[name], value) for name, value in model.state_dict().items())
    assert all(adam["step"] == 1 for adam in optimizer.state.values())


def test_ctrl_c_saves_a_loadable_checkpoint(data_root, tmp_path, monkeypatch):
    calls = {"n": 0}
    real_log_density = main.log_density

    def interrupt_on_third_step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_log_density(*args, **kwargs)

    monkeypatch.setattr(main, "log_density", interrupt_on_third_step)
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        run(data_root, out, "--epochs", "2")
    assert exit_info.value.code == 130
    state = main.load_checkpoint(out / "latest.pt")
    assert state["epoch"] == 0 and "optimizer" in state
    monkeypatch.setattr(main, "log_density", real_log_density)
    assert run(data_root, out, "--epochs", "1", "--resume") == 0
    assert main.load_checkpoint(out / "latest.pt")["epoch"] == 1


def test_a_crash_while_saving_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "latest.pt"
    main.save_checkpoint(path, {"format": main.CHECKPOINT_FORMAT, "epoch": 1})

    def crash(obj, file):
        file.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError):
        main.save_checkpoint(path, {"format": main.CHECKPOINT_FORMAT, "epoch": 2})
    monkeypatch.undo()
    assert main.load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["latest.pt"]


@pytest.mark.parametrize("flags, message", [
    (["--epochs", "-1"], "--epochs must be zero or more"),
    (["--device", "tpu"], "invalid choice"),
    (["--hidden", "0"], "--hidden must be positive"),
    (["--dropout", "1"], "--dropout must lie in [0, 1)"),
    (["--weight-decay", "-1"], "--weight-decay must be zero or more"),
])
def test_bad_flags_exit_with_status_2(flags, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main.main(flags)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_missing_and_foreign_checkpoints(tmp_path, capsys):
    assert main.main(["--eval", str(tmp_path / "missing.pt")]) == 2
    assert "no checkpoint at" in capsys.readouterr().err
    torch.save({"weights": torch.zeros(3)}, tmp_path / "foreign.pt")
    assert main.main(["--eval", str(tmp_path / "foreign.pt")]) == 2
    assert "not a checkpoint written by this main.py" in capsys.readouterr().err
    (tmp_path / "text.pt").write_text("hello")
    assert main.main(["--sample", str(tmp_path / "text.pt")]) == 2
    assert "not a readable checkpoint" in capsys.readouterr().err


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

def finds_a_cxx_compiler():
    try:
        main.check_can_compile(torch.device("cpu"))
    except main.UsageError:
        return False
    return True


needs_cxx = pytest.mark.skipif(not finds_a_cxx_compiler(), reason="torch.compile on a CPU needs a C++ compiler")


def only_one_graph():
    """A block in which compiling anything a second time is an error (torch's own config
    patch: monkeypatch would delete the option when it restores it)."""
    torch._dynamo.reset()  # forget graphs compiled for other models in this process
    return torch._dynamo.config.patch(error_on_recompile=True)


def record_compiled_calls(monkeypatch, really_compile):
    """Make torch.compile's result note the size of each batch it runs (and, unless
    `really_compile`, run the objective as it is): returns the list of sizes."""
    sizes, real_compile = [], torch.compile

    def recording_compile(objective, **options):
        compiled = real_compile(objective, **options) if really_compile else objective

        def run(batch):
            sizes.append(len(batch))
            return compiled(batch)
        return run

    monkeypatch.setattr(torch, "compile", recording_compile)
    return sizes


def test_compiled_step_runs_only_the_first_batch_size_compiled(monkeypatch):
    """The short batch at the end of an epoch runs uncompiled instead of compiling a second graph."""
    compiled_sizes = record_compiled_calls(monkeypatch, really_compile=False)
    model = tiny_flow()
    step = main.make_training_step(model, main.make_optimizer(model, lr=1e-3), 1e-6, compile=True)
    images = torch.randint(0, 256, (8, *main.IMAGE_SHAPE), dtype=torch.uint8)
    for batch in (images, images[:5], images):
        assert torch.isfinite(step(batch))
    assert compiled_sizes == [8, 8]


@needs_cxx
def test_compiled_step_computes_the_eager_loss_and_gradients(monkeypatch):
    """The compiled loss and gradients against the uncompiled ones, with the same noise."""
    compiled_calls = record_compiled_calls(monkeypatch, really_compile=True)
    images = torch.randint(0, 256, (16, *main.IMAGE_SHAPE), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    results = []
    with only_one_graph(), torch._inductor.config.patch(fallback_random=True):  # the eager random numbers
        for compile in (False, True):
            torch.manual_seed(0)
            model = tiny_flow()
            step = main.make_training_step(model, main.make_optimizer(model, lr=1e-3), 1e-6, compile=compile)
            losses = [step(images) for _ in range(2)]  # the second step runs the compiled graph again
            results.append((losses, [p.grad for p in model.parameters()]))
    assert compiled_calls == [16, 16]
    (eager_losses, eager_grads), (compiled_losses, compiled_grads) = results
    torch.testing.assert_close(compiled_losses, eager_losses, rtol=1e-5, atol=0)
    for compiled, eager in zip(compiled_grads, eager_grads):
        torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-4 * eager.abs().max().item())


def test_compile_without_a_cxx_compiler_is_a_one_line_error(data_root, tmp_path, capsys):
    with torch._inductor.config.patch({"cpp.cxx": ("no-such-compiler-here",)}):
        assert run(data_root, tmp_path / "run", "--compile", "--epochs", "1") == 2
    error = capsys.readouterr().err
    assert "--compile needs a C++ compiler" in error and len(error.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()  # it stopped before training


@needs_cxx
def test_compiled_training_runs_end_to_end(data_root, tmp_path, capsys):
    """Two epochs with --compile: each has a short last batch, and evaluation switches the
    model to eval mode and back in between, without a second compile."""
    out = tmp_path / "run"
    with only_one_graph():
        assert run(data_root, out, "--compile", "--epochs", "2") == 0
    assert "compiles the training loss" in capsys.readouterr().out
    assert [m["epoch"] for m in read_metrics(out)] == [1, 2]
    assert all(math.isfinite(m["test_bpd"]) for m in read_metrics(out))
