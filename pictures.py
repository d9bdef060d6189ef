"""Pictures of what a trained flow has learned: samples, and paths between two digits.

Sampling draws z from the prior and runs the flow backwards, x = f^-1(z); a temperature
T < 1 draws z ~ N(0, T^2 I) instead, which gives cleaner, less varied digits. The flow
models logits (pixels.py), so pictures turn them back into pixels first.
"""
import math

import torch
from torchvision.utils import save_image

from pixels import dequantize_and_logit, logit_to_pixels
from training import evaluation_mode

INTERPOLATION_NOISE_SEED = 1234  # the dequantization noise of the digits at the ends of each path


def save_samples(model, path, alpha, n=64, temperature=1.0):
    """A square-ish grid of `n` samples at `temperature`."""
    with evaluation_mode(model):
        y = model.sample(n, temperature=temperature)
    save_image(logit_to_pixels(y.float(), alpha), path, nrow=int(math.sqrt(n)) or 1)


def save_interpolations(model, images, path, alpha, steps=10):
    """One row per pair of images: z = cos(t) z_a + sin(t) z_b, t from 0 to pi/2, decoded.

    The path keeps the prior's variance for independent Gaussian latents, so the middle
    of a row is as typical a latent as its ends.
    """
    with evaluation_mode(model):
        generator = torch.Generator(device=images.device).manual_seed(INTERPOLATION_NOISE_SEED)
        z, _ = model(dequantize_and_logit(images, alpha, generator)[0])
        z_a, z_b = z[0::2], z[1::2]  # [pairs, 1, 28, 28] each
        angles = torch.linspace(0, math.pi / 2, steps, device=z.device).view(1, steps, 1, 1, 1)
        path_z = torch.cos(angles) * z_a.unsqueeze(1) + torch.sin(angles) * z_b.unsqueeze(1)
        y, _ = model.inverse(path_z.flatten(0, 1))  # [pairs * steps, 1, 28, 28], row by row
    save_image(logit_to_pixels(y.float(), alpha), path, nrow=steps)
