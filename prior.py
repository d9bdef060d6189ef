"""Step 7: the prior, a standard Gaussian over tensors of a given shape.

    log N(z; 0, I) = -1/2 * sum_i z_i^2 - D/2 * log(2 pi),    D = prod(shape)

`Gaussian(shape)` has two methods: `sample(batchSize)` returns [batchSize, *shape] and
`logProbability(z)` takes [batchSize, *shape] and returns [batchSize]. It is an
`nn.Module` holding its mean (zero) as a buffer, so a flow moved with `.to(device)` or
`.double()` moves its prior too, and samples come on that device in that dtype.

For the flow of each digit's images in step 11 (conditional.py), both methods also take a
`context` [batch, c]: `Gaussian(shape, context_features=c)` is N(mu(context), I), its mean
a learned linear map mu(context) = context @ M (for a one-hot digit: one mean per digit).
It is a unit Gaussian, only moved, so the formula above holds with z - mu for z. An
unconditional Gaussian ignores a context.
"""
import math

import torch
from torch import nn


class Gaussian(nn.Module):
    """Standard normal N(0, I) over tensors of shape `shape`; N(context @ M, I) with a
    learned M [context_features, prod(shape)] for a conditional one."""

    def __init__(self, shape, context_features=0):
        super().__init__()
        self.shape = torch.Size([shape] if isinstance(shape, int) else shape)
        if len(self.shape) == 0 or any(s <= 0 for s in self.shape):
            raise ValueError(f"Gaussian needs a shape of positive sizes, got {list(self.shape)}")
        self.dim = math.prod(self.shape)
        self.log_normalizer = -0.5 * self.dim * math.log(2 * math.pi)  # a Python float: exact in any dtype
        # A buffer, so it follows the module's device and dtype.
        self.register_buffer("mean", torch.zeros(self.shape))
        self.context_features = context_features
        if context_features:
            self.context_means = nn.Parameter(torch.zeros(context_features, self.dim))  # M, rows of means

    def sample(self, batchSize, temperature=1.0, context=None):
        """Draw [batchSize, *shape] (given `context` [batchSize, c] for a conditional one);
        temperature < 1 shrinks the standard deviation."""
        noise = torch.randn(batchSize, *self.shape, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean_given(context, batchSize) + temperature * noise

    def logProbability(self, z, context=None):
        """log N(z; mu, I) for each sample: [batchSize, *shape] -> [batchSize]."""
        if z.shape[1:] != self.shape:
            raise ValueError(f"Gaussian expects [batch, {', '.join(map(str, self.shape))}], got {list(z.shape)}")
        return -0.5 * (z - self.mean_given(context, len(z))).flatten(1).pow(2).sum(1) + self.log_normalizer

    def mean_given(self, context, batch):
        """The mean: [*shape], or [batch, *shape] from a context [batch, c] for a conditional Gaussian."""
        if not self.context_features:
            return self.mean
        if context is None or context.shape != (batch, self.context_features):
            got = "none" if context is None else list(context.shape)
            raise ValueError(f"this Gaussian is conditional: give a context [{batch}, {self.context_features}], "
                             f"got {got}")
        # A weighted sum of the rows of M rather than a product, which autocast would round to 16 bits.
        means = (context.to(self.mean.dtype).unsqueeze(2) * self.context_means).sum(1)  # [batch, prod(shape)]
        return self.mean + means.view(batch, *self.shape)

    @torch.no_grad()
    def fit_context_means(self, z, context, spread=1.0):
        """Set M to S = `spread` times the least-squares fit of latents z [B, *shape] from their
        contexts [B, c]. For one-hot classes that is M_d = S * mean_{i: d_i = d} z_i, each
        class's mean latent scaled about the origin (0 for a class the batch lacks): with
        S > 1 the classes' means start S times farther apart than their latents."""
        # On the CPU in float64: once, small, and every device has its pseudo-inverse there.
        fit = torch.linalg.pinv(context.cpu().double()) @ z.flatten(1).cpu().double()
        self.context_means.copy_(spread * fit)

    log_prob = logProbability

    def extra_repr(self):
        conditional = f", context_features={self.context_features}" if self.context_features else ""
        return f"shape={list(self.shape)}{conditional}"


if __name__ == "__main__":
    torch.manual_seed(0)
    prior = Gaussian([2, 3])
    z = prior.sample(4)
    reference = torch.distributions.Normal(0.0, 1.0).log_prob(z).flatten(1).sum(1)
    print(f"sample shape {list(z.shape)}")
    print(f"logProbability {prior.logProbability(z).tolist()}")
    print(f"max difference to torch.distributions.Normal: {(prior.logProbability(z) - reference).abs().max():.2e}")
