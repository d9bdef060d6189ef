"""Step 11, conditioned: a flow of the digit's images, p(x | d), and a classifier from it.

MNIST's images come with labels d in {0..9}. A conditional flow models each digit's images.
The digit enters in two places, as a one-hot vector e_d: every coupling net gets it beside
its conditioning half c (flow.py's Coupling), so that g(h; net([c, e_d])) bends each
digit's pixels its own way, and the prior's mean moves with it (prior.py), z ~ N(mu_d, I):

    z = f(x; d),    log p(x | d) = log N(z; mu_d, I) + log |det df(x; d)/dx|

The log-det keeps its formula: for a fixed d, x -> z is a bijection with the same
block-triangular Jacobian (d is an input of the nets, not a variable that is transformed),
and the layers without nets do not see d at all. Pixels to bits/dim (pixels.py) do not
change either: the logit's log-det does not depend on d.

The label is worth little likelihood: log p(x | d) <= log p(x) + log 10, so knowing it
saves at most 2.3 nats an image (0.004 bits/dim on MNIST), and training pays the nets
little to learn to use it. The means mu_d are a shortcut: layers.data_dependent_init sets
each to the mean latent of its digit's images before training, which already makes the
classifier below a nearest-class-mean one.

Two things come for free from p(x | d), by the sum rule and Bayes' rule with p(d) = 1/10:

    log p(x) = logsumexp_d log p(x | d) + log(1/10)     the marginal, comparable to an
                                                        unconditional flow's log p(x)
    p(d | x) = p(x | d) p(d) / p(x),  so  argmax_d p(d | x) = argmax_d log p(x | d):
                                                        the digit whose model fits best

Both need the ten log p(x | d) of one dequantized image, so `log_density_by_digit` draws
the dequantization noise once and runs the flow ten times.

Run `python conditional.py` to train a small conditional flow on two classes of points.
"""
import math

import torch
from torch.nn import functional

from pixels import dequantize_and_logit

DIGITS = 10


def label_context(labels, classes=DIGITS):
    """Integer labels [B] -> the one-hot context [B, classes] the couplings and the prior see."""
    return functional.one_hot(labels.long(), classes).float()


def log_density_by_digit(flow, images, alpha, generator=None):
    """log p(v | d) [B, 10] of dequantized uint8 images for every digit d: one draw of noise
    per image, ten passes of the flow."""
    y, logdet = dequantize_and_logit(images, alpha, generator)
    digits = torch.arange(DIGITS, device=images.device)
    per_digit = [flow.logProbability(y, label_context(digit.expand(len(y)))) for digit in digits]
    return torch.stack(per_digit, dim=1) + logdet.unsqueeze(1)


def marginal_log_density(log_p_by_class):
    """log p(x) = logsumexp_d log p(x | d) + log(1/classes), for a uniform p(d): [B, classes] -> [B]."""
    return torch.logsumexp(log_p_by_class, dim=1) - math.log(log_p_by_class.shape[1])


def same_digit_pairs(labels, pairs):
    """Indices a, b, a, b, ... of up to `pairs` pairs of images that show the same digit:
    pair i shows digit i % 10, and is left out where there are too few images of it."""
    index = []
    for pair in range(pairs):
        of_digit = torch.nonzero(labels == pair % DIGITS).flatten()[2 * (pair // DIGITS):][:2]
        if len(of_digit) == 2:
            index += of_digit.tolist()
    return torch.tensor(index, dtype=torch.long)


if __name__ == "__main__":
    from layers import data_dependent_init
    from realnvp import RealNVP

    torch.manual_seed(0)
    # Two classes of 2-D points, N((-1, 0), I) and N((1, 0), I), whose densities
    # torch.distributions writes down: no classifier beats Phi(1) = 84.1% on average.
    means = torch.tensor([[-1.0, 0.0], [1.0, 0.0]])

    def draw(n):
        labels = torch.randint(0, 2, (n,))
        return means[labels] + torch.randn(n, 2), labels

    flow = RealNVP.build([2], blocks=2, hidden=32, context_features=2)
    points, labels = draw(1000)
    data_dependent_init(flow, points, label_context(labels, 2))  # the prior's means: each class's mean point
    means_before = [[round(v, 2) for v in mean] for mean in flow.prior.context_means.tolist()]
    print(f"the prior's class means, set from the data before training: {means_before}")
    optimizer = torch.optim.Adam(flow.parameters(), lr=3e-3)
    for step in range(300):
        points, labels = draw(256)
        loss = -flow.logProbability(points, label_context(labels, 2)).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    points, labels = draw(4096)
    with torch.no_grad():
        by_class = torch.stack([flow.logProbability(points, label_context(torch.full_like(labels, c), 2))
                                for c in range(2)], dim=1)  # [4096, 2]: log p(x | c)
    exact = torch.stack([torch.distributions.Normal(means[c], 1.0).log_prob(points).sum(1) for c in range(2)], dim=1)
    print(f"after 300 steps: mean |log p(x | c) - exact| = {(by_class - exact).abs().mean():.3f} nats")
    near = (points - means[0]).norm(dim=1) < 0.2  # points near (-1, 0), where the exact log-ratio is 2
    print(f"the context changes the density: near (-1, 0), log p(x | 0) - log p(x | 1) = "
          f"{(by_class[near, 0] - by_class[near, 1]).mean():.2f} nats (exact {(exact[near, 0] - exact[near, 1]).mean():.2f})")
    print(f"marginal log p(x) = logsumexp_c log p(x | c) - log 2: mean {marginal_log_density(by_class).mean():.3f} "
          f"(exact {marginal_log_density(exact).mean():.3f})")
    accuracy, best = ((log_p.argmax(1) == labels).float().mean() for log_p in (by_class, exact))
    print(f"Bayes classifier argmax_c log p(x | c): accuracy {accuracy:.1%}; "
          f"the exact densities' on the same points: {best:.1%}")
