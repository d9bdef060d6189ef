"""Step 7: the prior, a standard Gaussian over tensors of a given shape.

    log N(z; 0, I) = -1/2 * sum_i z_i^2 - D/2 * log(2 pi),    D = prod(shape)

`Gaussian(shape)` has two methods: `sample(batchSize)` returns [batchSize, *shape] and
`logProbability(z)` takes [batchSize, *shape] and returns [batchSize]. It is an
`nn.Module` holding its mean (zero) as a buffer, so a flow moved with `.to(device)` or
`.double()` moves its prior too, and samples come on that device in that dtype.
"""
import math

import torch
from torch import nn


class Gaussian(nn.Module):
    """Standard normal N(0, I) over tensors of shape `shape`."""

    def __init__(self, shape):
        super().__init__()
        self.shape = torch.Size([shape] if isinstance(shape, int) else shape)
        if len(self.shape) == 0 or any(s <= 0 for s in self.shape):
            raise ValueError(f"Gaussian needs a shape of positive sizes, got {list(self.shape)}")
        self.dim = math.prod(self.shape)
        self.log_normalizer = -0.5 * self.dim * math.log(2 * math.pi)  # a Python float: exact in any dtype
        # A buffer, so it follows the module's device and dtype.
        self.register_buffer("mean", torch.zeros(self.shape))

    def sample(self, batchSize, temperature=1.0):
        """Draw [batchSize, *shape]; temperature < 1 shrinks the standard deviation."""
        noise = torch.randn(batchSize, *self.shape, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + temperature * noise

    def logProbability(self, z):
        """log N(z; mean, I) for each sample: [batchSize, *shape] -> [batchSize]."""
        if z.shape[1:] != self.shape:
            raise ValueError(f"Gaussian expects [batch, {', '.join(map(str, self.shape))}], got {list(z.shape)}")
        return -0.5 * (z - self.mean).flatten(1).pow(2).sum(1) + self.log_normalizer

    log_prob = logProbability  # the name torch.distributions uses

    def extra_repr(self):
        return f"shape={list(self.shape)}"


if __name__ == "__main__":
    torch.manual_seed(0)
    prior = Gaussian([2, 3])
    z = prior.sample(4)
    reference = torch.distributions.Normal(0.0, 1.0).log_prob(z).flatten(1).sum(1)
    print(f"sample shape {list(z.shape)}")
    print(f"logProbability {prior.logProbability(z).tolist()}")
    print(f"max difference to torch.distributions.Normal: {(prior.logProbability(z) - reference).abs().max():.2e}")
