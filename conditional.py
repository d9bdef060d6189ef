"""Beyond step 11: a flow of the digit's images, p(x | d), and a classifier from it (read
before the training files, which use it).

MNIST's images come with labels d in {0..9}. A conditional flow models each digit's images.
The digit enters as a one-hot vector e_d, in one or two places. It always moves the
prior's mean, z ~ N(mu_d, I) with mu_d = e_d M (`ConditionalGaussian`); with
--conditional nets, every coupling net also gets it beside its conditioning half c (the
`context` of flow.py's convention), g(h; net([c, e_d])), so that each digit's pixels are
bent their own way:

    z = f(x; d),    log p(x | d) = log N(z; mu_d, I) + log |det df(x; d)/dx|

The log-det keeps its formula: for a fixed d, x -> z is a bijection with the same
block-triangular Jacobian (d is an input of the nets, not a variable that is transformed),
and the layers without nets do not see d at all. Pixels to bits/dim (pixels.py) do not
change either: the logit's log-det does not depend on d. `ConditionalFlow` wraps any flow
of the earlier steps this way.

Two things come for free from p(x | d), by the sum rule and Bayes' rule with p(d) = 1/10:

    log p(x) = logsumexp_d log p(x | d) + log(1/10)     the marginal, comparable to an
                                                        unconditional flow's log p(x)
    p(d | x) = softmax_d log p(x | d),  so  argmax_d p(d | x) = argmax_d log p(x | d):
                                                        the digit whose model fits best

Both need the ten log p(x | d) of one dequantized image (`log_density_by_digit`). Where only
the prior sees the digit, z = f(x) and its log-det serve all ten, and
p(d | x) = softmax_d (-|z - mu_d|^2 / 2): a nearest-mean classifier on the flow's latent.
Before training, each mu_d is set to S times the mean latent of its digit's images
(`ConditionalGaussian.fit_context_means`): the digits' means start farther apart than
their latents, and the likelihood then pulls each digit's latents out towards its mean.

The label is worth little likelihood: log p(x | d) <= log p(x) + log 10, so knowing it
saves at most 2.3 nats an image (0.004 bits/dim on MNIST), and likelihood training pays
little for telling the digits apart. `LikelihoodAndClassification` pays for it directly:
the loss adds W times the classifier's cross-entropy -log p(d | x) (a "hybrid" objective).
The flow stays an exact density; the loss changes only what training favours.

`RECIPES` holds the training settings for each place of the digit (main.py's --conditional
takes one by name).

Run `python conditional.py` to train a small conditional flow on two classes of points.
"""
import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional

from flow import Flow
from pixels import dequantize_and_logit
from prior import Gaussian

DIGITS = 10


@dataclass(frozen=True)
class Recipe:
    """What --conditional WHERE trains with (main.py prints it at the start of a run).

    conv_channels: convolutional branches of the coupling nets (convolution.py), 0 for none;
    translate: training images moved by up to this many pixels (pixels.translate_images);
    classifier_weight W and classifier_margin M of `LikelihoodAndClassification`;
    class_spread S: the prior's means start S times the mean latent of each digit.
    """

    conv_channels: int
    translate: int
    classifier_weight: float
    classifier_margin: float
    class_spread: float


RECIPES = {
    # The digit in the prior alone: the ten log p(x | d) cost one pass of the flow, so the
    # classifier's loss is cheap; the margin costs the MLPs likelihood, which the branches
    # and the moved images win back.
    "prior": Recipe(conv_channels=32, translate=1, classifier_weight=6.0, classifier_margin=30.0, class_spread=1.5),
    # The digit in every coupling net too: ten passes of the flow an image would make the
    # classifier's loss ten times dearer, so it trains on the likelihood alone.
    "nets": Recipe(conv_channels=0, translate=0, classifier_weight=0.0, classifier_margin=0.0, class_spread=1.0),
}


def check_context(context, features, batch, name):
    """A ValueError unless `context` is [batch, features]."""
    if context is None or context.shape != (batch, features):
        got = "none" if context is None else list(context.shape)
        raise ValueError(f"{name} is conditional: give a context [{batch}, {features}], got {got}")


class ConditionalGaussian(Gaussian):
    """N(context @ M, I) over tensors of shape `shape`, with a learned M [context_features, prod(shape)]:
    for a one-hot context, one mean per class. A unit Gaussian, only moved, so its log-density
    is prior.py's at z - mean."""

    def __init__(self, shape, context_features):
        super().__init__(shape)
        self.context_features = context_features
        self.context_means = nn.Parameter(torch.zeros(context_features, self.dim))  # M, rows of means

    def mean_given(self, context):
        """The mean of each row of context [batch, c]: [batch, *shape]."""
        check_context(context, self.context_features, len(context) if context is not None else 0, "the prior")
        # A weighted sum of the rows of M rather than a product, which autocast would round to 16 bits.
        means = (context.to(self.mean.dtype).unsqueeze(2) * self.context_means).sum(1)  # [batch, prod(shape)]
        return means.view(len(context), *self.shape)

    def sample(self, batchSize, temperature=1.0, context=None):
        return super().sample(batchSize, temperature) + self.mean_given(context)

    def logProbability(self, z, context=None):
        return super().logProbability(z - self.mean_given(context))

    log_prob = logProbability

    @torch.no_grad()
    def fit_context_means(self, z, context, spread=1.0):
        """Set M to S = `spread` times the least-squares fit of latents z [B, *shape] from their
        contexts [B, c]. For one-hot classes that is M_d = S * mean_{i: d_i = d} z_i, each
        class's mean latent scaled about the origin (0 for a class the batch lacks): with
        S > 1 the classes' means start S times farther apart than their latents."""
        # On the CPU in float64: once, small, and every device has its pseudo-inverse there.
        fit = torch.linalg.pinv(context.cpu().double()) @ z.flatten(1).cpu().double()
        self.context_means.copy_(spread * fit)

    def extra_repr(self):
        return f"{super().extra_repr()}, context_features={self.context_features}"


class ConditionalFlow(Flow):
    """p(x | context) from a flow of the earlier steps: its bijection, given the context where
    `nets_see_context` (the flow's nets must then take n/2 + c inputs: `build(...,
    context_features=c)`), and a `ConditionalGaussian` prior in place of its own.

        forward(x, context) -> (z, logdet),    logProbability(x, context),    sample(n, T, context)
    """

    def __init__(self, flow, context_features, nets_see_context):
        super().__init__(ConditionalGaussian(flow.shape, context_features))
        self.flow, self.shape = flow, flow.shape
        self.flow.prior = None  # the density is this one's, from the prior above
        self.context_features, self.nets_see_context = context_features, nets_see_context

    def forward(self, x, context=None):
        check_context(context, self.context_features, len(x), "this flow")
        return self.flow(x, context if self.nets_see_context else None)

    def inverse(self, z, context=None):
        check_context(context, self.context_features, len(z), "this flow")
        return self.flow.inverse(z, context if self.nets_see_context else None)

    def logProbability(self, x, context=None):
        """log p(x | context) [batch]."""
        z, logdet = self.forward(x, context)
        return self.prior.logProbability(z, context) + logdet

    log_prob = logProbability

    def sample(self, batchSize, temperature=1.0, context=None):
        """Draw x ~ p(x | context), one row of `context` [batchSize, c] per sample."""
        return self.inverse(self.prior.sample(batchSize, temperature, context), context)[0]


def label_context(labels, classes=DIGITS):
    """Integer labels [B] -> the one-hot context [B, classes] the couplings and the prior see."""
    return functional.one_hot(labels.long(), classes).float()


def log_density_by_digit(flow, images, alpha, generator=None):
    """log p(v | d) [B, 10] of dequantized uint8 images for every digit d: one draw of noise
    per image; ten passes of the flow where its couplings see the digit, else one pass and
    ten of the prior."""
    y, logdet = dequantize_and_logit(images, alpha, generator)
    every_digit = torch.eye(DIGITS, device=y.device).repeat(len(y), 1)  # [10 B, 10]: e_0 .. e_9 for each image
    if flow.nets_see_context:
        log_p = flow.logProbability(y.repeat_interleave(DIGITS, dim=0), every_digit)
    else:  # z = f(x) and its log-det are the same for every digit: only log N(z; mu_d, I) differs
        z, flow_logdet = flow.flow(y)
        log_p = flow.prior.logProbability(z.repeat_interleave(DIGITS, dim=0), every_digit)
        log_p = log_p + flow_logdet.repeat_interleave(DIGITS)
    return log_p.view(len(y), DIGITS) + logdet.unsqueeze(1)


class LikelihoodAndClassification(nn.Module):
    """The hybrid loss: -mean log p(v | d) over a batch plus `weight` W times the mean
    cross-entropy of the Bayes classifier p(d | v) = softmax_d log p(v | d), in which every
    wrong digit's score is raised by a `margin` of M nats:

        loss = 1/B sum_b [-log p(v_b | d_b) + W * log(1 + sum_{d != d_b} exp(M + l_bd - l_bb))]

    with l_bd = log p(v_b | d). For M = 0 the second term is -log p(d_b | v_b). Likelihood
    alone pays at most log 10 nats an image for telling the digits apart; the second term
    pays for it directly. With M > 0 it keeps paying until the right digit wins by M nats,
    like a support vector machine's margin: it pushes the images that are right by a little
    and leaves those right by far alone. The classifier (argmax_d l_bd) and the density do not
    change. Where only the prior sees the digit, the ten log p(v | d) of an image cost one
    pass of the flow, so the term costs almost nothing.
    """

    def __init__(self, flow, alpha, weight, margin=0.0):
        super().__init__()
        self.flow, self.alpha, self.weight, self.margin = flow, alpha, weight, margin

    def forward(self, images, context):
        by_digit = log_density_by_digit(self.flow, images, self.alpha)  # [B, 10]
        labels = context.argmax(1)
        log_p = by_digit.gather(1, labels.unsqueeze(1)).squeeze(1)
        scores = by_digit + self.margin * (1 - context)  # the wrong digits' l_bd raised by M
        return -log_p.mean() + self.weight * functional.cross_entropy(scores, labels)


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
    from realnvp import RealNVP

    torch.manual_seed(0)
    # Two classes of 2-D points, N((-1, 0), I) and N((1, 0), I), whose densities
    # torch.distributions writes down: no classifier beats Phi(1) = 84.1% on average.
    means = torch.tensor([[-1.0, 0.0], [1.0, 0.0]])

    def draw(n):
        labels = torch.randint(0, 2, (n,))
        return means[labels] + torch.randn(n, 2), labels

    flow = ConditionalFlow(RealNVP.build([2], blocks=2, hidden=32, context_features=2), 2, nets_see_context=True)
    points, labels = draw(1000)
    context = label_context(labels, 2)
    flow.prior.fit_context_means(flow(points, context)[0], context)  # the prior's means: each class's mean latent
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
