"""The prior against torch.distributions, and flows as normalised densities."""
import math

import pytest
import torch

from layers import data_dependent_init
from nice import NICE
from prior import Gaussian
from realnvp import RealNVP
from spline import NeuralSplineFlow


@pytest.mark.parametrize("shape", [[5], [2, 3], [1, 4, 4]])
def test_gaussian_matches_torch_distributions(shape):
    torch.manual_seed(0)
    prior = Gaussian(shape).double()
    z = 3 * torch.randn(6, *shape, dtype=torch.float64)
    reference = torch.distributions.Normal(0.0, 1.0).log_prob(z).flatten(1).sum(1)
    assert torch.allclose(prior.logProbability(z), reference, atol=1e-12, rtol=0)
    assert prior.sample(11).shape == (11, *shape)


def test_gaussian_samples_have_unit_moments():
    torch.manual_seed(0)
    z = Gaussian([4]).double().sample(200_000)
    assert z.mean().abs() < 0.01
    assert (z.std() - 1).abs() < 0.01
    assert (Gaussian([4]).sample(50_000, temperature=0.5).std() - 0.5).abs() < 0.01


def random_2d(factory):
    """A flow with random weights, N(0, 0.4^2); a spline flow's N(0, 0.2^2): steeper random
    splines put mass in peaks finer than the grid (at 0.4 the sum is 0.9866 over 1601^2
    points and 0.9995 over 3201^2, converging to 1)."""
    torch.manual_seed(0)
    flow = factory().double()
    std = 0.2 if isinstance(flow, NeuralSplineFlow) else 0.4
    with torch.no_grad():
        for parameter in flow.parameters():
            parameter.normal_(0.0, std)
    return flow


FLOWS_2D = [
    pytest.param(lambda: NICE.build([2], blocks=2, hidden=16), id="nice-2d"),
    pytest.param(lambda: RealNVP.build([2], blocks=2, hidden=16), id="realnvp-2d"),
]


# Splines act on [-4, 4] here, where the grid holds the mass, rather than on [-16, 16].
SPLINE_2D = pytest.param(lambda: NeuralSplineFlow.build([2], blocks=2, hidden=16, bound=4.0), id="spline-2d")


def check_density_integrates_to_one(log_density, samples):
    """A 2-D density (`log_density(points)` of a flow whose `samples` are given) summed over
    a grid: 1 within 0.01."""
    # The grid must hold nearly all the mass: check the samples first.
    limit = 10.0
    assert samples.abs().max() < 0.8 * limit, "the flow spreads mass beyond the grid"
    points = torch.linspace(-limit, limit, 401, dtype=torch.float64)
    cell = (points[1] - points[0]) ** 2
    grid = torch.cartesian_prod(points, points)
    with torch.no_grad():
        density = log_density(grid).exp()
    integral = (density.sum() * cell).item()
    assert abs(integral - 1) < 0.01, integral
    # Not a standard Gaussian in disguise: the flow moved the density.
    gaussian = torch.distributions.Normal(0.0, 1.0).log_prob(grid).sum(1).exp()
    assert (density - gaussian).abs().max() > 1e-2


@pytest.mark.parametrize("factory", FLOWS_2D + [SPLINE_2D])
def test_density_integrates_to_one_on_a_grid(factory):
    flow = random_2d(factory)
    with torch.no_grad():
        check_density_integrates_to_one(flow.logProbability, flow.sample(10_000))


@pytest.mark.parametrize("factory", FLOWS_2D + [pytest.param(lambda: RealNVP.build([1, 4, 4], blocks=2, hidden=16), id="realnvp-image")])
def test_samples_and_their_log_probability(factory):
    flow = random_2d(factory)
    torch.manual_seed(1)
    z = flow.prior.sample(64)
    x, inverse_logdet = flow.inverse(z)
    assert x.shape == (64, *flow.shape)
    log_probability = flow.logProbability(x)
    assert log_probability.shape == (64,) and torch.isfinite(log_probability).all()
    # log p(x) = log p(z) + log|det dz/dx| = log p(z) - log|det dx/dz|
    expected = flow.prior.logProbability(z) - inverse_logdet
    assert torch.allclose(log_probability, expected, atol=1e-9, rtol=0)
    assert flow.sample(5).shape == (5, *flow.shape)


def test_log_prob_is_an_alias():
    flow = random_2d(FLOWS_2D[1].values[0])
    x = torch.randn(3, 2, dtype=torch.float64)
    assert torch.equal(flow.log_prob(x), flow.logProbability(x))


def test_double_precision_follows_the_module():
    flow = RealNVP.build([6], blocks=1, hidden=8).double()
    assert flow.sample(3).dtype == torch.float64
    assert flow.logProbability(torch.randn(3, 6, dtype=torch.float64)).dtype == torch.float64


def test_data_dependent_init_standardises_each_feature():
    torch.manual_seed(0)
    flow = RealNVP.build([6], blocks=2, hidden=8, actnorm=True)
    x = 0.1 * torch.randn(4000, 6) + torch.arange(6.0)  # features with other means and scales
    z = data_dependent_init(flow, x)
    torch.testing.assert_close(z, flow(x)[0])  # the latents of the batch, by the flow as it is set
    first_actnorm = flow.layers[0]
    z, logdet = first_actnorm(x)
    assert torch.allclose(z.mean(0), torch.zeros(6), atol=1e-4)
    assert torch.allclose(z.std(0), torch.ones(6), atol=1e-3)
    assert torch.allclose(logdet, torch.full((4000,), 6 * math.log(10.0)), rtol=0.02)
