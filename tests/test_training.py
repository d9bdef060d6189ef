"""training.py: the step against torch's own clip, loss scale and plain AdamW; skips, losses, compile."""
import math
import shutil

import pytest
import torch
from torch import nn

import training
from fake_mnist import fake_mnist_arrays
from models import build_model, model_config
from pixels import NegativeLogLikelihood
from training import TrainingLosses, TrainingStep, cosine_learning_rate, make_optimizer, pick_precision

needs_cxx = pytest.mark.skipif(not (shutil.which("c++") or shutil.which("g++")),
                               reason="torch.compile on a CPU needs a C++ compiler")


def tiny_flow(model="realnvp"):
    return build_model(model_config(model, blocks=1, hidden=16))


def random_images(n):
    """uint8 [n, 1, 28, 28]: dark, with bright scribbles where MNIST draws its digits
    (the first of test_main.py's fake training images)."""
    return torch.from_numpy(fake_mnist_arrays()["train"][0][:n]).unsqueeze(1)


def changed(before, model):
    return any(not torch.equal(before[name], value) for name, value in model.state_dict().items())


@pytest.mark.parametrize("precision", [None, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("max_norm", [1e-3, 1e6], ids=["clipped", "not-clipped"])
def test_step_matches_clipping_then_plain_adamw_by_hand(max_norm, precision):
    """The step against torch's GradScaler, clip_grad_norm_ and the unfused, per-tensor AdamW."""
    torch.manual_seed(0)
    model, reference = tiny_flow(), tiny_flow()
    reference.load_state_dict(model.state_dict())
    step = TrainingStep(NegativeLogLikelihood(model, 1e-6), make_optimizer(model, lr=1e-2), precision,
                        max_grad_norm=max_norm)
    reference_adam = torch.optim.Adam(reference.parameters(), lr=1e-2, foreach=False)
    scaler = torch.amp.GradScaler("cpu", init_scale=training.FLOAT16_LOSS_SCALE, enabled=precision is not None)
    images = random_images(50)
    norms = []
    for seed in range(12):
        torch.manual_seed(seed)  # the same dequantization noise for both
        step(images)
        torch.manual_seed(seed)
        reference_adam.zero_grad()
        with torch.autocast("cpu", dtype=precision or torch.float32, enabled=precision is not None):
            loss = NegativeLogLikelihood(reference, 1e-6)(images)
        scaler.scale(loss).backward()
        scaler.unscale_(reference_adam)
        norms.append(torch.nn.utils.clip_grad_norm_(reference.parameters(), max_norm).item())
        scaler.step(reference_adam)
        scaler.update()
    # float16 skips its first steps while the loss scale comes down from 2^16; some must remain.
    taken = [norm for norm in norms if math.isfinite(norm)]
    assert len(taken) >= 2 and all((norm > max_norm) == (max_norm < 1) for norm in taken)  # the clip acted, or not
    tolerance = 1e-5 if precision is None else 1e-4
    for mine, theirs in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(mine, theirs, rtol=tolerance, atol=tolerance)


class NanGradients(nn.Module):
    """A loss with a finite value but NaN gradients: adds 0, but d sqrt(0 * r)/dr = 0 / 0."""

    def __init__(self, loss):
        super().__init__()
        self.loss = loss

    def forward(self, images):
        result = self.loss(images)
        return result + torch.sqrt(0 * result)


@pytest.mark.parametrize("precision", [None, torch.bfloat16, torch.float16], ids=["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("fault", ["nan-gradients", "nan-loss"])
def test_a_non_finite_step_is_skipped_and_never_reaches_the_weights(precision, fault):
    model = tiny_flow()
    loss = NegativeLogLikelihood(model, 1e-6)
    bad = NanGradients(loss) if fault == "nan-gradients" else lambda images: loss(images) * math.nan
    optimizer = make_optimizer(model, lr=1e-3)
    images = random_images(50)
    before = {name: value.clone() for name, value in model.state_dict().items()}
    assert torch.isnan(TrainingStep(bad, optimizer, precision)(images))  # reported as skipped
    assert not changed(before, model) and all(adam["step"] == 0 for adam in optimizer.state.values())

    # Healthy steps afterwards do update them (float16 first halves its loss scale of 2^16
    # until the gradients fit, skipping a few more steps); the other scales stay 1.
    step = TrainingStep(loss, optimizer, precision)
    for _ in range(20):
        step(images)
        if changed(before, model):
            break
    assert changed(before, model) and all(adam["step"] == 1 for adam in optimizer.state.values())
    assert (step.scaler.get_scale() < training.FLOAT16_LOSS_SCALE) if precision == torch.float16 else \
        step.scaler.get_scale() == 1.0


def test_precision_flags_and_the_auto_rule(monkeypatch):
    cpu = torch.device("cpu")
    assert [pick_precision(name, cpu) for name in ("fp32", "bf16", "fp16")] == [None, torch.bfloat16, torch.float16]
    for speedup, expected in [(2.0, torch.bfloat16), (1.1, None), (0.011, None)]:  # bfloat16 kept where 1.3x faster
        monkeypatch.setattr(training, "bfloat16_speedup", lambda: speedup)
        assert pick_precision("auto", cpu) == expected


def test_learning_rate_warms_up_then_decays_to_zero():
    assert cosine_learning_rate(1.0, 0.0) == 0.0
    assert cosine_learning_rate(1.0, 0.01) == pytest.approx(0.5)  # half-way through the 2% warm-up
    assert cosine_learning_rate(1.0, 0.02) == pytest.approx(1.0)
    assert cosine_learning_rate(1.0, 0.51) == pytest.approx(0.5)  # half-way through the decay: cos(pi/2)
    assert cosine_learning_rate(1.0, 1.0) == pytest.approx(0.0, abs=1e-12)


def test_training_losses_are_summed_on_the_device_and_count_skipped_steps():
    losses = TrainingLosses(torch.device("cpu"))
    for loss in [1.0, math.nan, math.nan, 2.0, math.nan]:
        losses.add(torch.tensor(loss))
    assert losses.read() == (1.5, 2)  # the mean of the finite losses; the longest streak of NaN
    for loss in [math.nan, math.nan, math.nan, 4.0]:
        losses.add(torch.tensor(loss))
    assert losses.read() == (4.0, 4)  # since the last read; the streak went on from the last NaN
    assert losses.epoch_mean() == pytest.approx(7 / 3)
    losses.add(torch.tensor(5.0))
    assert losses.epoch_mean() == 5.0


# --------------------------------------------------------------------------- torch.compile


def record_compiled_calls(monkeypatch, compiled=None):
    """Make torch.compile return `compiled(objective)` (or the objective itself), noting the
    size of each batch it runs: returns the list of sizes."""
    sizes = []

    def recording_compile(objective, **options):
        run = compiled(objective, **options) if compiled else objective

        def call(batch):
            sizes.append(len(batch))
            return run(batch)
        return call

    monkeypatch.setattr(torch, "compile", recording_compile)
    return sizes


def test_compiled_step_runs_only_the_first_batch_size_compiled(monkeypatch):
    """The short batch at the end of an epoch runs uncompiled instead of compiling a second graph."""
    compiled_sizes = record_compiled_calls(monkeypatch)
    model = tiny_flow()
    step = TrainingStep(NegativeLogLikelihood(model, 1e-6), make_optimizer(model, lr=1e-3), compile=True)
    images = random_images(8)
    for batch in (images, images[:5], images):
        assert torch.isfinite(step(batch))
    assert compiled_sizes == [8, 8]


def test_a_compiler_that_fails_leaves_training_uncompiled_with_one_line(monkeypatch, capsys):
    def failing_compiler(objective, **options):
        def fail(batch):
            raise RuntimeError("no working C++ compiler found\n(a long traceback of the compiler)")
        return fail

    compiled_sizes = record_compiled_calls(monkeypatch, failing_compiler)
    model = tiny_flow()
    step = TrainingStep(NegativeLogLikelihood(model, 1e-6), make_optimizer(model, lr=1e-3), compile=True)
    images = random_images(8)
    assert all(torch.isfinite(step(images)) for _ in range(3))
    assert compiled_sizes == [8]  # tried once, then never again
    assert capsys.readouterr().out == ("torch.compile failed (no working C++ compiler found); "
                                       "training goes on uncompiled\n")


@needs_cxx
def test_compiled_step_computes_the_eager_loss_and_gradients(monkeypatch):
    """The compiled loss and gradients against the uncompiled ones, with the same noise."""
    compiled_calls = record_compiled_calls(monkeypatch, torch.compile)
    images = random_images(16)
    results = []
    # Test-only switches of torch's compiler: forget other tests' graphs, allow no second
    # graph, and draw the eager random numbers.
    torch._dynamo.reset()
    with torch._dynamo.config.patch(error_on_recompile=True), torch._inductor.config.patch(fallback_random=True):
        for compile in (False, True):
            torch.manual_seed(0)
            model = tiny_flow("nice")  # the smallest graph to compile
            step = TrainingStep(NegativeLogLikelihood(model, 1e-6), make_optimizer(model, lr=1e-3), compile=compile)
            losses = [step(images) for _ in range(2)]  # the second step runs the compiled graph again
            results.append((losses, [p.grad for p in model.parameters()]))
    assert compiled_calls == [16, 16]
    (eager_losses, eager_grads), (compiled_losses, compiled_grads) = results
    torch.testing.assert_close(compiled_losses, eager_losses, rtol=1e-5, atol=0)
    for compiled, eager in zip(compiled_grads, eager_grads):
        torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-4 * eager.abs().max().item())
