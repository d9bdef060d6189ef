"""pixels.py: the bits/dim formula against references (an analytic value, torch.distributions)."""
import math

import pytest
import torch

from pixels import NegativeLogLikelihood, bits_per_dim, log_density, logit_to_pixels, translate_images
from realnvp import RealNVP


def test_uniform_density_scores_exactly_eight_bits():
    """If v is uniform on [0,1)^D, p(v) = 1 and bits/dim must be 8 whatever the data."""

    class UniformInLogitSpace:
        # Density of y = logit(a + (1 - 2a) v) for uniform v: dv/dy = sigmoid(y) sigmoid(-y) / (1 - 2a).
        def __init__(self, alpha):
            self.alpha = alpha

        def logProbability(self, y, context=None):
            log_dv_dy = torch.nn.functional.logsigmoid(y) + torch.nn.functional.logsigmoid(-y)
            return (log_dv_dy - math.log(1 - 2 * self.alpha)).flatten(1).sum(1)

    torch.manual_seed(0)
    images = torch.randint(0, 256, (8, 1, 28, 28), dtype=torch.uint8)
    for alpha in (1e-6, 0.05):
        bpd = bits_per_dim(log_density(UniformInLogitSpace(alpha), images, alpha))
        assert torch.allclose(bpd, torch.full_like(bpd, 8.0), atol=1e-4), bpd


@pytest.mark.parametrize("alpha", [1e-6, 0.05])
def test_log_density_matches_torch_distributions(alpha):
    """A flow that is the identity with a Gaussian prior: log p(v) against a TransformedDistribution."""
    flow = RealNVP.build([1, 28, 28], blocks=1, hidden=8)  # starts as the identity
    torch.manual_seed(0)
    images = torch.randint(0, 256, (5, 1, 28, 28), dtype=torch.uint8)
    generator = torch.Generator().manual_seed(3)
    ours = log_density(flow, images, alpha, generator)

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
    assert bits_per_dim(torch.tensor([-784 * math.log(2)])).item() == pytest.approx(9.0)


def test_logit_to_pixels_inverts_the_squash():
    v = torch.rand(100, dtype=torch.float64)
    s = 0.05 + 0.9 * v
    assert torch.allclose(logit_to_pixels(torch.log(s / (1 - s)), 0.05), v, atol=1e-12)


def test_the_loss_is_the_negative_mean_log_density():
    flow = RealNVP.build([1, 28, 28], blocks=1, hidden=8)
    images = torch.randint(0, 256, (6, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(1)
    loss = NegativeLogLikelihood(flow, 1e-6)(images)
    torch.manual_seed(1)  # the same dequantization noise
    assert loss.item() == pytest.approx(-log_density(flow, images, 1e-6).mean().item(), rel=1e-6)


def moved(image, down, right):
    """`image` [C, H, W] moved `down` rows and `right` columns, black coming in: slicing, as a reference."""
    _, height, width = image.shape
    out = torch.zeros_like(image)
    out[:, max(down, 0):height + min(down, 0), max(right, 0):width + min(right, 0)] = \
        image[:, max(-down, 0):height + min(-down, 0), max(-right, 0):width + min(-right, 0)]
    return out


def test_translate_moves_each_image_by_up_to_k_pixels_filling_in_black():
    torch.manual_seed(0)
    images = torch.randint(1, 256, (400, 2, 9, 7), dtype=torch.uint8)  # no black pixel: every move shows
    translated = translate_images(images, 2)
    assert translate_images(images, 0) is images
    assert translated.shape == images.shape and translated.dtype == torch.uint8
    moves = []
    for image, out in zip(images, translated):
        matches = [(down, right) for down in range(-2, 3) for right in range(-2, 3)
                   if torch.equal(out, moved(image, down, right))]
        assert len(matches) == 1
        moves += matches
    assert len(set(moves)) == 25  # every move from -2 to 2 along each axis happens
