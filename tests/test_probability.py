"""The prior against torch.distributions, and flows as normalised densities."""
import math

import pytest
import torch

from conditional import label_context, marginal_log_density
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


def test_a_conditional_gaussian_is_a_unit_gaussian_about_its_context_mean():
    torch.manual_seed(0)
    prior = Gaussian([2, 3], context_features=4).double()
    means = torch.randn(4, 2, 3, dtype=torch.float64)  # one mean per class
    with torch.no_grad():
        prior.context_means.copy_(means.flatten(1))
    labels = torch.tensor([0, 3, 3, 1, 2, 0])
    context = label_context(labels, 4)
    z = 3 * torch.randn(6, 2, 3, dtype=torch.float64)
    mean = means[labels]
    reference = torch.distributions.Normal(mean, 1.0).log_prob(z).flatten(1).sum(1)
    torch.testing.assert_close(prior.logProbability(z, context), reference, rtol=0, atol=1e-12)
    samples = prior.sample(6, temperature=1e-3, context=context)
    assert (samples - mean).abs().max() < 0.01
    with pytest.raises(ValueError, match=r"conditional: give a context \[6, 4\], got none"):
        prior.logProbability(z)
    with pytest.raises(ValueError, match=r"got \[1, 4\]"):
        prior.logProbability(z, context[:1])


def test_fitting_the_context_means_gives_each_class_its_mean_latent():
    torch.manual_seed(0)
    prior = Gaussian([5], context_features=3)
    labels = torch.tensor([0, 0, 2, 2, 2, 0])  # no class 1
    z = torch.randn(6, 5)
    prior.fit_context_means(z, label_context(labels, 3))
    expected = torch.stack([z[labels == 0].mean(0), torch.zeros(5), z[labels == 2].mean(0)])
    torch.testing.assert_close(prior.context_means, expected, rtol=0, atol=1e-5)
    prior.fit_context_means(z, label_context(labels, 3), spread=2.5)  # the means start 2.5 times as far out
    torch.testing.assert_close(prior.context_means, 2.5 * expected, rtol=0, atol=1e-5)


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


def check_density_integrates_to_one(flow, context=None):
    """The density of a 2-D flow (given one `context` row) summed over a grid: 1 within 0.01."""
    # The grid must hold nearly all the mass: check the samples first.
    rows = lambda n: None if context is None else context.expand(n, -1)
    with torch.no_grad():
        samples = flow.sample(10_000, context=rows(10_000))
    limit = 16.0
    assert samples.abs().max() < 0.6 * limit, "the flow spreads mass beyond the grid"
    points = torch.linspace(-limit, limit, 1201, dtype=torch.float64)
    cell = (points[1] - points[0]) ** 2
    grid = torch.cartesian_prod(points, points)
    with torch.no_grad():
        density = flow.logProbability(grid, rows(len(grid))).exp()
    integral = (density.sum() * cell).item()
    assert abs(integral - 1) < 0.01, integral
    # Not the prior in disguise: the flow moved the density.
    prior_density = flow.prior.logProbability(grid, rows(len(grid))).exp()
    assert (density - prior_density).abs().max() > 1e-2
    return density


@pytest.mark.parametrize("factory", FLOWS_2D + [SPLINE_2D])
def test_density_integrates_to_one_on_a_grid(factory):
    check_density_integrates_to_one(random_2d(factory))


def test_a_conditional_density_integrates_to_one_given_its_context():
    flow = random_2d(lambda: NeuralSplineFlow.build([2], blocks=2, hidden=16, bound=4.0, context_features=2))
    check_density_integrates_to_one(flow, label_context(torch.tensor([1]), 2))
    x = torch.randn(100, 2, dtype=torch.float64)
    with torch.no_grad():
        first, second = (flow.logProbability(x, label_context(torch.full((100,), c), 2)) for c in (0, 1))
    assert (first - second).abs().max() > 1e-2, "the two contexts gave the same density"


def test_the_marginal_over_classes_matches_torch_distributions():
    # Three classes with known densities N(mu_c, 1): logsumexp - log 3 is their even mixture.
    torch.manual_seed(0)
    means = torch.tensor([-2.0, 0.5, 3.0], dtype=torch.float64)
    x = 4 * torch.randn(50, dtype=torch.float64)
    by_class = torch.distributions.Normal(means, 1.0).log_prob(x.unsqueeze(1))  # [50, 3]
    mixture = torch.distributions.MixtureSameFamily(torch.distributions.Categorical(torch.ones(3, dtype=torch.float64)),
                                                    torch.distributions.Normal(means, 1.0))
    torch.testing.assert_close(marginal_log_density(by_class), mixture.log_prob(x), rtol=0, atol=1e-12)


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


def test_data_dependent_init_sets_a_conditional_priors_means_from_the_latents():
    torch.manual_seed(0)
    flow = RealNVP.build([4], blocks=1, hidden=8, actnorm=True, context_features=2)
    labels = torch.arange(400) % 2
    x = torch.randn(400, 4) + 3 * labels.unsqueeze(1)  # class 1 sits 3 further along every feature
    data_dependent_init(flow, x, label_context(labels, 2))
    with torch.no_grad():
        z, _ = flow(x, label_context(labels, 2))
    torch.testing.assert_close(flow.prior.context_means, torch.stack([z[labels == 0].mean(0), z[labels == 1].mean(0)]),
                               rtol=0, atol=1e-5)
    assert (flow.prior.context_means[1] - flow.prior.context_means[0]).min() > 1  # the classes stand apart
    data_dependent_init(flow, x, label_context(labels, 2), class_spread=3.0)
    torch.testing.assert_close(flow.prior.context_means, 3 * torch.stack([z[labels == 0].mean(0), z[labels == 1].mean(0)]),
                               rtol=0, atol=1e-5)


def test_data_dependent_init_standardises_each_feature():
    torch.manual_seed(0)
    flow = RealNVP.build([6], blocks=2, hidden=8, actnorm=True)
    x = 0.1 * torch.randn(4000, 6) + torch.arange(6.0)  # features with other means and scales
    assert data_dependent_init(flow, x) == 2
    first_actnorm = flow.layers[0]
    z, logdet = first_actnorm(x)
    assert torch.allclose(z.mean(0), torch.zeros(6), atol=1e-4)
    assert torch.allclose(z.std(0), torch.ones(6), atol=1e-3)
    assert torch.allclose(logdet, torch.full((4000,), 6 * math.log(10.0)), rtol=0.02)
