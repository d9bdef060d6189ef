"""conditional.py: the conditional prior and flow (through step 4's check), the ten
densities of an image, one per digit, the marginal, and the hybrid loss."""
import pytest
import torch

from conditional import (DIGITS, ConditionalFlow, ConditionalGaussian, LikelihoodAndClassification, label_context,
                         log_density_by_digit, marginal_log_density)
from convolution import add_image_branches
from flow import Coupling, FlowOverShape, coupling_mlp
from layers import data_dependent_init
from multiscale import MultiScaleFlow
from realnvp import AffineCoupling, RealNVP
from nice import AdditiveCoupling
from spline import NeuralSplineFlow
from pixels import dequantize_and_logit, log_density
from test_bijective import check_bijective
from test_probability import check_density_integrates_to_one, random_2d


class GivenContext(torch.nn.Module):
    """A conditional bijective with its context fixed to one row: x -> z for that context alone."""

    def __init__(self, flow, context):
        super().__init__()
        self.flow = flow
        self.register_buffer("context", torch.tensor(context, dtype=torch.float32).view(1, -1))

    def forward(self, x):
        return self.flow(x, self.context.expand(len(x), -1))

    def inverse(self, z):
        return self.flow.inverse(z, self.context.expand(len(z), -1))


def layers_given_context(module):
    """For step 4's bfloat16 check: the layers of the flow inside, and the context they see."""
    inner = module.flow.flow if isinstance(module.flow, ConditionalFlow) else module.flow
    context = module.context if not isinstance(module.flow, ConditionalFlow) or module.flow.nets_see_context else None
    layers = list(inner.layers) if isinstance(inner, FlowOverShape) else [inner]
    return layers, context, isinstance(inner, FlowOverShape)


CONTEXT = [0.5, -1.0, 2.0]  # any vector can be a context; main.py's is a one-hot digit
DIGIT_3 = label_context(torch.tensor([3])).tolist()


def conditional(flow, nets_see_context=True):
    return ConditionalFlow(flow, DIGITS, nets_see_context)


CONDITIONAL_BIJECTIVES = [
    pytest.param(lambda: GivenContext(AdditiveCoupling(8, coupling_mlp(4 + 3, 16, 2, out_features=4), "x"), CONTEXT),
                 [8], id="additive-coupling-given-a-context"),
    pytest.param(lambda: GivenContext(AffineCoupling(6, coupling_mlp(3 + 3, 16, 1, out_features=3),
                                                     coupling_mlp(3 + 3, 16, 1, out_features=3), "y"), CONTEXT),
                 [6], id="affine-coupling-given-a-context"),
    pytest.param(lambda: GivenContext(conditional(RealNVP.build([1, 4, 4], blocks=2, hidden=16, actnorm=True,
                                                                shuffle=True, context_features=DIGITS)), DIGIT_3),
                 [1, 4, 4], id="realnvp-digit-in-the-nets"),
    pytest.param(lambda: GivenContext(conditional(NeuralSplineFlow.build([1, 4, 4], blocks=1, hidden=16,
                                                                         actnorm=True), False), DIGIT_3),
                 [1, 4, 4], id="spline-flow-digit-in-the-prior"),
    pytest.param(lambda: GivenContext(conditional(add_image_branches(
        RealNVP.build([2, 2, 4], blocks=1, hidden=16, context_features=DIGITS), channels=4)), DIGIT_3),
                 [2, 2, 4], id="realnvp-convolutions-digit-in-the-nets"),
    pytest.param(lambda: GivenContext(conditional(MultiScaleFlow.build([1, 4, 4], blocks=1, hidden=8,
                                                                       context_features=DIGITS)), DIGIT_3),
                 [1, 4, 4], id="multiscale-digit-in-the-nets"),
]


@pytest.mark.parametrize("factory, shape", CONDITIONAL_BIJECTIVES)
def test_a_flow_given_a_context_is_a_bijective(factory, shape):
    # The class means are the prior's, not the bijection's: they get no gradient through x -> z.
    check_bijective(factory, shape, layers_given_context, frozen={"flow.prior.context_means"})


def test_a_conditional_gaussian_is_a_unit_gaussian_about_its_context_mean():
    torch.manual_seed(0)
    prior = ConditionalGaussian([2, 3], context_features=4).double()
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
    with pytest.raises(ValueError, match=r"conditional: give a context \[0, 4\], got none"):
        prior.logProbability(z)


def test_fitting_the_context_means_gives_each_class_its_mean_latent():
    torch.manual_seed(0)
    flow = conditional(RealNVP.build([4], blocks=1, hidden=8, actnorm=True), nets_see_context=False)
    labels = torch.tensor([0, 0, 2, 2, 2, 0] * 10)  # no class 1
    x = torch.randn(60, 4) + 3 * (labels == 2).unsqueeze(1)
    context = label_context(labels)
    z = data_dependent_init(flow, x, context)  # the ActNorms set, and the batch's latents under them
    flow.prior.fit_context_means(z, context)
    expected = torch.zeros(DIGITS, 4)
    expected[0], expected[2] = z[labels == 0].mean(0), z[labels == 2].mean(0)
    torch.testing.assert_close(flow.prior.context_means, expected, rtol=0, atol=1e-5)
    assert (expected[2] - expected[0]).min() > 1  # the classes stand apart
    flow.prior.fit_context_means(z, context, spread=2.5)  # the means start 2.5 times as far out
    torch.testing.assert_close(flow.prior.context_means, 2.5 * expected, rtol=0, atol=1e-5)


def test_a_conditional_density_integrates_to_one_given_its_context():
    flow = conditional(random_2d(lambda: NeuralSplineFlow.build([2], blocks=2, hidden=16, bound=4.0,
                                                                 context_features=DIGITS))).double()
    one = label_context(torch.tensor([1]))
    with torch.no_grad():
        flow.prior.context_means.normal_(0.0, 0.5)
    with torch.no_grad():
        check_density_integrates_to_one(lambda points: flow.logProbability(points, one.expand(len(points), -1)),
                                        flow.sample(10_000, context=one.expand(10_000, -1)))
    x = torch.randn(100, 2, dtype=torch.float64)
    with torch.no_grad():
        first, second = (flow.logProbability(x, label_context(torch.full((100,), c))) for c in (0, 1))
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


def test_the_context_changes_the_density_and_must_fit():
    torch.manual_seed(0)
    flow = conditional(RealNVP.build([6], blocks=2, hidden=16, context_features=DIGITS)).double()
    with torch.no_grad():
        for parameter in flow.parameters():
            parameter.normal_(0.0, 0.5)
    x = torch.randn(5, 6, dtype=torch.float64)
    three, seven = label_context(torch.full((5,), 3)), label_context(torch.full((5,), 7))
    assert (flow.logProbability(x, three) - flow.logProbability(x, seven)).abs().min() > 1e-3
    # Each context has its own bijection: a sample drawn for 7 maps back to the prior's draw under 7 only.
    z = torch.randn(5, 6, dtype=torch.float64)
    x_seven, _ = flow.inverse(z, seven)
    assert (flow(x_seven, seven)[0] - z).abs().max() <= 1e-10
    assert (flow(x_seven, three)[0] - z).abs().max() > 1e-3
    assert flow.sample(5, context=seven).shape == (5, 6)
    with pytest.raises(ValueError, match=r"this flow is conditional: give a context \[5, 10\], got none"):
        flow(x)
    with pytest.raises(ValueError, match=r"give a context \[5, 10\], got \[5, 3\]"):
        flow(x, torch.zeros(5, 3))


def random_conditional_flow(nets_see_context):
    """A small conditional spline flow with random weights and class means, so that every
    digit has a density of its own."""
    torch.manual_seed(0)
    flow = conditional(NeuralSplineFlow.build([1, 28, 28], blocks=1, hidden=8,
                                              context_features=DIGITS if nets_see_context else 0), nets_see_context)
    with torch.no_grad():
        for parameter in flow.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return flow


def images_and_labels(n=6):
    generator = torch.Generator().manual_seed(1)
    return (torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8, generator=generator),
            torch.randint(0, DIGITS, (n,), generator=generator))


@pytest.mark.parametrize("nets_see_context", [False, True], ids=["prior only", "nets and prior"])
def test_the_ten_densities_of_an_image_are_its_density_given_each_digit(nets_see_context):
    flow, (images, _) = random_conditional_flow(nets_see_context), images_and_labels()
    rows = []  # the rows each coupling is run on
    for coupling in (layer for layer in flow.flow.layers if isinstance(layer, Coupling)):
        coupling.register_forward_hook(lambda module, inputs, output: rows.append(len(inputs[0])))
    by_digit = log_density_by_digit(flow, images, 1e-6, torch.Generator().manual_seed(7))  # [6, 10]
    # Ten rows an image where the couplings see the digit; where only the prior does, one.
    assert set(rows) == {6 * DIGITS if nets_see_context else 6}
    one_digit_at_a_time = torch.stack([  # the same noise: the same seed for every digit
        log_density(flow, images, 1e-6, torch.Generator().manual_seed(7), label_context(torch.full((6,), digit)))
        for digit in range(DIGITS)], dim=1)
    torch.testing.assert_close(by_digit, one_digit_at_a_time, rtol=1e-6, atol=1e-3)  # float32 sums of ~1000 nats
    assert (by_digit.max(1).values - by_digit.min(1).values).min() > 1e-2  # the digit changes the density


@pytest.mark.parametrize("margin", [0.0, 4.0], ids=["no margin", "a margin"])
@pytest.mark.parametrize("nets_see_context", [False, True], ids=["prior only", "nets and prior"])
def test_the_hybrid_loss_is_the_likelihood_plus_the_classifiers_cross_entropy(nets_see_context, margin):
    flow, (images, labels) = random_conditional_flow(nets_see_context), images_and_labels()
    torch.manual_seed(3)
    loss = LikelihoodAndClassification(flow, 1e-6, weight=2.5, margin=margin)(images, label_context(labels))
    torch.manual_seed(3)  # the same dequantization noise
    y, logdet = dequantize_and_logit(images, 1e-6)
    by_digit = torch.stack([flow.logProbability(y, label_context(torch.full((6,), digit))) + logdet
                            for digit in range(DIGITS)], dim=1)
    log_p = by_digit[torch.arange(6), labels]
    # log(1 + sum over the wrong digits d of exp(M + l_d - l_label)), written out
    cross_entropy = torch.stack([
        torch.log(1 + sum(torch.exp(margin + by_digit[b, d] - log_p[b]) for d in range(DIGITS) if d != labels[b]))
        for b in range(6)])
    bayes = -torch.distributions.Categorical(logits=by_digit).log_prob(labels)  # -log p(d | x), p(d) = 1/10
    if margin == 0:
        torch.testing.assert_close(cross_entropy, bayes, rtol=0, atol=1e-4)  # l_d - l_label: float32 of ~1000 nats
    else:
        assert (cross_entropy >= bayes).all() and (cross_entropy > bayes).any()  # equal only where both are 0
    expected = -log_p.mean() + 2.5 * cross_entropy.mean()
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-3)
