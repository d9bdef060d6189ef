"""Step 11, first half: from 8-bit pixels to a density the flow can model, and back.

An MNIST image is D = 28*28 integers k in {0..255}. A density on integers means nothing,
so the flow models a continuous version of the image instead (as in the RealNVP paper):

  1. dequantize:  v = (k + u) / 256,  u ~ U(0, 1)^D        (fresh noise every training step)
  2. squash:      s = a + (1 - 2a) v,  y = logit(s) = log s - log(1 - s)
  3. the flow models y; the change of variables gives the density of v:
         log p(v) = log p_flow(y) + sum_i [log(1 - 2a) - log s_i - log(1 - s_i)]
  4. bits/dim = -log p(v) / (D ln 2) + 8

The +8 turns the density of v on [0, 1)^D into the probability of the 8-bit image: each
of the 256^D bins has volume 256^-D. So a uniform density scores exactly 8 bits/dim, and
the training loss, -mean log p(v) over a batch, is the negative mean log-likelihood.

Run `python pixels.py` to see the formula score a uniform density and an untrained flow.
"""
import math

import torch
from torch import nn

PIXELS = 28 * 28  # D, the dimensions that bits/dim divides by


def dequantize_and_logit(images, alpha, generator=None):
    """uint8 images [B, 1, 28, 28] -> (y, log|det dy/dv|), steps 1 and 2 above.

    The returned log-det [B] is sum_i [log(1 - 2a) - log s_i - log(1 - s_i)], so that
    log p(v) = log p_flow(y) + log-det (step 3).
    """
    noise = torch.rand(images.shape, device=images.device, generator=generator)
    v = (images.float() + noise) / 256
    s = alpha + (1 - 2 * alpha) * v
    log_s, log_one_minus_s = torch.log(s), torch.log1p(-s)
    logdet = (math.log(1 - 2 * alpha) - log_s - log_one_minus_s).flatten(1).sum(1)
    return log_s - log_one_minus_s, logdet


def translate_images(images, pixels):
    """Move each uint8 image [B, C, H, W] by its own random whole number of pixels in
    -pixels..pixels along each axis, black coming in: the --conditional recipe's moves of
    training batches only. pixels=0 returns the images and draws no random numbers."""
    if pixels == 0:
        return images
    batch, channels, height, width = images.shape
    padded = nn.functional.pad(images, (pixels, pixels, pixels, pixels))  # [B, C, H + 2p, W + 2p]
    # Each image keeps the H x W window of its padded copy from row `top`, column `left`:
    # it moves pixels - top down and pixels - left right.
    top, left = torch.randint(0, 2 * pixels + 1, (2, batch, 1, 1, 1), device=images.device)  # each [B, 1, 1, 1]
    rows = top + torch.arange(height, device=images.device).view(1, 1, height, 1)
    cols = left + torch.arange(width, device=images.device).view(1, 1, 1, width)
    image_index = torch.arange(batch, device=images.device).view(batch, 1, 1, 1)
    channel_index = torch.arange(channels, device=images.device).view(1, channels, 1, 1)
    return padded[image_index, channel_index, rows, cols]  # [B, C, H, W]


def logit_to_pixels(y, alpha):
    """The inverse of the squash: y -> v in [0, 1], for pictures."""
    return ((torch.sigmoid(y) - alpha) / (1 - 2 * alpha)).clamp(0, 1)


def log_density(flow, images, alpha, generator=None, context=None):
    """log p(v) [B] of dequantized uint8 images under the flow (step 3); log p(v | context)
    for a conditional flow (conditional.py)."""
    y, logdet = dequantize_and_logit(images, alpha, generator)
    log_p_y = flow.logProbability(y) if context is None else flow.logProbability(y, context)
    return log_p_y + logdet


def bits_per_dim(log_p_v):
    """Bits/dim of 8-bit images from the log-density of their dequantized versions (step 4)."""
    return -log_p_v / (PIXELS * math.log(2)) + 8


class NegativeLogLikelihood(nn.Module):
    """The training loss, -mean log p(v) over a batch of uint8 images (-mean log p(v | context)
    for a conditional flow).

    A module rather than a function, so that torch.compile and DistributedDataParallel
    can wrap it: its parameters are the flow's.
    """

    def __init__(self, flow, alpha):
        super().__init__()
        self.flow, self.alpha = flow, alpha

    def forward(self, images, context=None):
        return -log_density(self.flow, images, self.alpha, context=context).mean()


if __name__ == "__main__":
    from torch.nn.functional import logsigmoid

    from realnvp import RealNVP

    class UniformPixels:
        """v uniform on [0, 1)^D, written as a density of y: log dv/dy = log sigmoid(y) sigmoid(-y) - log(1 - 2a)."""

        def logProbability(self, y, context=None):
            return (logsigmoid(y) + logsigmoid(-y) - math.log(1 - 2 * alpha)).flatten(1).sum(1)

    torch.manual_seed(0)
    alpha = 1e-6
    images = torch.randint(0, 256, (4, 1, 28, 28), dtype=torch.uint8)
    y, logdet = dequantize_and_logit(images, alpha)
    print(f"images {list(images.shape)} uint8 -> logits y {list(y.shape)}, "
          f"from {y.min():.1f} to {y.max():.1f} (logit(a) = {math.log(alpha / (1 - alpha)):.1f})")
    print(f"uniform density on [0, 1)^D: {bits_per_dim(log_density(UniformPixels(), images, alpha)).tolist()} bits/dim")
    flow = RealNVP.build([1, 28, 28], blocks=1, hidden=8)  # untrained: the identity, with a Gaussian prior
    print(f"untrained RealNVP: {bits_per_dim(log_density(flow, images, alpha)).mean():.3f} bits/dim; "
          f"without the logit's log-det: {bits_per_dim(flow.logProbability(y)).mean():.3f}")
