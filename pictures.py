"""Pictures of what a trained flow has learned: samples, paths between two digits, and
how it learned: the learning curves.

Sampling draws z from the prior and runs the flow backwards, x = f^-1(z); a temperature
T < 1 draws z ~ N(0, T^2 I) instead, which gives cleaner, less varied digits. The flow
models logits (pixels.py), so pictures turn them back into pixels first. A conditional
flow (conditional.py) draws the digit d it is given: z ~ N(mu_d, T^2 I), x = f^-1(z; d).
"""
import itertools
import math

import torch
from matplotlib.figure import Figure
from torchvision.utils import save_image

from conditional import DIGITS, label_context
from pixels import dequantize_and_logit, logit_to_pixels
from training import evaluation_mode

INTERPOLATION_NOISE_SEED = 1234  # the dequantization noise of the digits at the ends of each path


def save_samples(model, path, alpha, n=64, temperature=1.0, digit=None):
    """A square-ish grid of `n` samples at `temperature`; all of `digit` for a conditional model."""
    digits = None if digit is None else torch.full((n,), digit)
    _save_grid(model, path, alpha, n, temperature, digits, columns=int(math.sqrt(n)) or 1)


def save_digit_rows(model, path, alpha, per_digit=10, temperature=1.0):
    """A conditional model's samples: one row per digit 0-9, `per_digit` samples each."""
    digits = torch.arange(DIGITS).repeat_interleave(per_digit)  # 0, 0, ..., 1, 1, ..., 9
    _save_grid(model, path, alpha, len(digits), temperature, digits, columns=per_digit)


def _save_grid(model, path, alpha, n, temperature, digits, columns):
    with evaluation_mode(model):
        if digits is None:
            y = model.sample(n, temperature=temperature)
        else:
            y = model.sample(n, temperature=temperature, context=label_context(digits).to(model.prior.mean.device))
    save_image(logit_to_pixels(y.float(), alpha), path, nrow=columns)


def save_interpolations(model, images, path, alpha, steps=10, labels=None):
    """One row per pair of images: z = mu + cos(t) (z_a - mu) + sin(t) (z_b - mu), t from 0
    to pi/2, decoded; mu is the prior's mean.

    The path keeps the prior's variance for independent Gaussian latents, so the middle
    of a row is as typical a latent as its ends. For a conditional model, `labels` are the
    images' digits, the same within each pair, mu is that digit's mean, and the whole path
    is decoded as that digit.
    """
    context = None if labels is None else label_context(labels).to(images.device)
    with evaluation_mode(model):
        generator = torch.Generator(device=images.device).manual_seed(INTERPOLATION_NOISE_SEED)
        z, _ = model(dequantize_and_logit(images, alpha, generator)[0], context)
        pair_context = None if context is None else context[0::2]
        mean = model.prior.mean if context is None else model.prior.mean_given(pair_context)
        mean = mean.unsqueeze(-4)  # [1 or pairs, 1, 1, 28, 28]
        z_a, z_b = z[0::2].unsqueeze(1) - mean, z[1::2].unsqueeze(1) - mean  # [pairs, 1, 1, 28, 28] each
        angles = torch.linspace(0, math.pi / 2, steps, device=z.device).view(1, steps, 1, 1, 1)
        path_z = mean + torch.cos(angles) * z_a + torch.sin(angles) * z_b  # [pairs, steps, 1, 28, 28]
        path_context = None if context is None else pair_context.repeat_interleave(steps, dim=0)
        y, _ = model.inverse(path_z.flatten(0, 1), path_context)  # [pairs * steps, 1, 28, 28], row by row
    save_image(logit_to_pixels(y.float(), alpha), path, nrow=steps)


CURVES = {"train_bpd": "train", "valid_bpd": "validation", "test_bpd": "test"}


def curve_points(metrics):
    """{split: (epochs, seconds of training, bits/dim)} from metrics.jsonl's lines; the
    seconds add up each epoch's training, evaluations left out, and NaN points drop out."""
    seconds = list(itertools.accumulate(m["seconds"] for m in metrics))
    curves = {}
    for key, label in CURVES.items():
        points = [(m["epoch"], s, m[key]) for m, s in zip(metrics, seconds) if math.isfinite(m[key])]
        curves[label] = tuple(zip(*points)) if points else ((), (), ())
    return curves


def save_curves(metrics, path):
    """Bits/dim of the train, validation and test splits after each epoch, against epochs
    and against seconds of training."""
    figure = Figure(figsize=(10, 4))
    figure.subplots_adjust(left=0.07, right=0.98, bottom=0.13, top=0.96, wspace=0.05)
    by_epoch, by_time = figure.subplots(1, 2, sharey=True)
    for label, (epochs, seconds, bpd) in curve_points(metrics).items():
        by_epoch.plot(epochs, bpd, marker="o", label=label)
        by_time.plot(seconds, bpd, marker="o", label=label)
    by_epoch.set(xlabel="epoch", ylabel="bits/dim")
    by_time.set(xlabel="seconds of training (evaluations left out)")
    by_epoch.legend()
    for axes in (by_epoch, by_time):
        axes.grid(alpha=0.3)
    figure.savefig(path, dpi=80)
