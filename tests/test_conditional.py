"""conditional.py: the ten densities of an image, one per digit, and the hybrid loss."""
import pytest
import torch

from conditional import DIGITS, LikelihoodAndClassification, label_context, log_density_by_digit
from flow import Coupling
from pixels import dequantize_and_logit, log_density
from spline import NeuralSplineFlow


def random_conditional_flow(nets_see_context):
    """A small conditional spline flow with random weights and class means, so that every
    digit has a density of its own."""
    torch.manual_seed(0)
    flow = NeuralSplineFlow.build([1, 28, 28], blocks=1, hidden=8, context_features=DIGITS,
                                  nets_see_context=nets_see_context)
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
    for coupling in (layer for layer in flow.layers if isinstance(layer, Coupling)):
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
        assert (cross_entropy > bayes).all()
    expected = -log_p.mean() + 2.5 * cross_entropy.mean()
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-3)


def test_a_flow_whose_prior_alone_sees_the_digit_checks_the_context_it_is_given():
    flow, (images, _) = random_conditional_flow(False), images_and_labels()
    y = images.float()
    with pytest.raises(ValueError, match=r"expects a context \[6, 10\], got \[6, 3\]"):
        flow(y, torch.zeros(6, 3))
    with pytest.raises(ValueError, match=r"this Gaussian is conditional: give a context \[6, 10\], got none"):
        flow.logProbability(y)
