"""pictures.py: sample grids, latent interpolations and learning curves."""
import math

import pytest
import torch
from PIL import Image

import pictures
from conditional import label_context
from models import IMAGE_SHAPE, build_model, model_config
from pixels import dequantize_and_logit


def tiny_flow(conditional=None):
    torch.manual_seed(0)
    return build_model(model_config("realnvp", blocks=1, hidden=16, conditional=conditional))


def test_sample_grid_is_square_and_not_blank(tmp_path):
    pictures.save_samples(tiny_flow(), tmp_path / "grid.png", 1e-6, n=16, temperature=0.7)
    image = Image.open(tmp_path / "grid.png").convert("L")
    assert image.size == (2 + 4 * 30, 2 + 4 * 30)  # a 4 x 4 grid of 28-pixel images, 2-pixel padding
    low, high = image.getextrema()
    assert high - low > 10


def test_interpolation_starts_and_ends_at_the_two_digits(monkeypatch):
    images = torch.randint(0, 256, (4, *IMAGE_SHAPE), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    captured = {}
    monkeypatch.setattr(pictures, "save_image", lambda pixels, path, nrow: captured.update(pixels=pixels, nrow=nrow))
    pictures.save_interpolations(tiny_flow(), images, "unused.png", 1e-6, steps=5)
    pixels = captured["pixels"].view(2, 5, 1, 28, 28)
    bin_centres = (images.float() + 0.5) / 256
    # The ends decode back to the dequantized digits, v = (k + u) / 256: inside each pixel's bin.
    assert (pixels[:, 0] - bin_centres[0::2]).abs().max() <= 0.5 / 256 + 1e-5
    assert (pixels[:, -1] - bin_centres[1::2]).abs().max() <= 0.5 / 256 + 1e-5
    assert (pixels[:, 2] - bin_centres[0::2]).abs().max() > 0.1  # the middle is neither
    assert captured["nrow"] == 5


def test_a_conditional_flow_draws_one_row_per_digit(monkeypatch):
    flow = tiny_flow(conditional="prior")
    contexts = []
    real_sample = flow.sample
    monkeypatch.setattr(flow, "sample", lambda n, temperature, context: contexts.append(context) or
                        real_sample(n, temperature, context))
    monkeypatch.setattr(pictures, "save_image", lambda pixels, path, nrow: contexts.append((pixels.shape, nrow)))
    pictures.save_digit_rows(flow, "unused.png", 1e-6, per_digit=3)
    context, (shape, nrow) = contexts
    assert context.argmax(1).tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4, 5, 5, 5, 6, 6, 6, 7, 7, 7,
                                          8, 8, 8, 9, 9, 9]
    assert shape == (30, *IMAGE_SHAPE) and nrow == 3


def test_learning_curves_are_drawn_from_the_metrics_lines(tmp_path):
    metrics = [{"epoch": e, "train_bpd": bpd + 0.1, "valid_bpd": bpd, "test_bpd": bpd - 0.01, "seconds": seconds}
               for e, bpd, seconds in [(1, 1.9, 180.0), (2, 1.6, 170.0), (3, 1.5, 60.0)]]
    metrics[0]["train_bpd"] = float("nan")  # an epoch whose every step was skipped
    curves = pictures.curve_points(metrics)
    assert curves["train"] == ((2, 3), (350.0, 410.0), pytest.approx((1.7, 1.6)))
    assert curves["validation"] == ((1, 2, 3), (180.0, 350.0, 410.0), (1.9, 1.6, 1.5))
    assert curves["test"][2] == pytest.approx((1.89, 1.59, 1.49))
    pictures.save_curves(metrics, tmp_path / "curves.png")
    assert Image.open(tmp_path / "curves.png").size == (800, 320)  # 10 x 4 inches at 80 dpi


@pytest.mark.parametrize("where", ["prior", "nets"])
def test_a_conditional_interpolation_stays_with_its_digit_and_its_mean(monkeypatch, where):
    flow = tiny_flow(conditional=where)
    with torch.no_grad():
        flow.prior.context_means.normal_(0.0, 3.0)  # means far from 0: a path through 0 would leave them
    images = torch.randint(0, 256, (4, *IMAGE_SHAPE), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([3, 3, 7, 7])
    decoded = {}
    real_inverse = flow.inverse
    monkeypatch.setattr(flow, "inverse", lambda z, context: decoded.update(z=z, context=context) or
                        real_inverse(z, context))
    monkeypatch.setattr(pictures, "save_image", lambda pixels, path, nrow: decoded.update(pixels=pixels))
    pictures.save_interpolations(flow, images, "unused.png", 1e-6, steps=5, labels=labels)
    assert decoded["context"].argmax(1).tolist() == [3] * 5 + [7] * 5
    # The path circles the digit's mean mu: z(t) = mu + cos t (z_a - mu) + sin t (z_b - mu).
    noise = torch.Generator().manual_seed(pictures.INTERPOLATION_NOISE_SEED)
    with torch.no_grad():
        z, _ = flow(dequantize_and_logit(images, 1e-6, noise)[0], label_context(labels))
    mu = flow.prior.context_means[[3, 7]].detach().view(2, 1, *IMAGE_SHAPE)
    t = torch.linspace(0, math.pi / 2, 5).view(1, 5, 1, 1, 1)
    expected = mu + t.cos() * (z[0::2].unsqueeze(1) - mu) + t.sin() * (z[1::2].unsqueeze(1) - mu)
    torch.testing.assert_close(decoded["z"], expected.flatten(0, 1), rtol=0, atol=1e-4)
    bin_centres = (images.float() + 0.5) / 256
    pixels = decoded["pixels"].view(2, 5, 1, 28, 28)
    assert (pixels[:, 0] - bin_centres[0::2]).abs().max() <= 0.5 / 256 + 1e-5
    assert (pixels[:, -1] - bin_centres[1::2]).abs().max() <= 0.5 / 256 + 1e-5
