"""Bijective layers beyond the tutorial's couplings, used to train faster and better.

ActNorm (Kingma & Dhariwal 2018, Glow, https://arxiv.org/abs/1807.03039) is a per-feature
affine map whose parameters are set from the data once, before training:

    z = exp(s) * x + b,    Jacobian diag(exp(s)),    logdet = sum(s)

`data_dependent_init(flow, x)` runs one batch through the flow and sets each ActNorm so
that its output has zero mean and unit variance per feature on that batch. This matters
where features have very different means and spreads: couplings that start as the
identity, with bounded log-scales, take many steps to learn per-feature scales that
ActNorm gets from one batch.

LUMixing (Glow's invertible 1x1 convolution, here over all the features) is a learned
invertible linear map, kept in LU form so that its log-det costs nothing:

    z = W x + b,    W = P L U,    U's diagonal = exp(log_scale)
    P a fixed permutation, L unit lower-triangular, U upper-triangular
    det W = +-prod(exp(log_scale)),    logdet = sum(log_scale)
    x = U^-1 L^-1 P^T (z - b)          (two triangular solves, no matrix inverse)

Between couplings it lets each one split the features along learned directions
instead of fixed halves.
"""
from contextlib import nullcontext

import torch
from torch import nn

from flow import DiagonalScaling, Flow, Permutation


class ActNorm(DiagonalScaling):
    """z = exp(s) * x + b per feature; s and b initialised from data by `data_dependent_init`."""

    def __init__(self, features):
        super().__init__(features)
        self.bias = nn.Parameter(torch.zeros(features))
        self.initialize_on_next_forward = False

    def forward(self, x, context=None):
        if self.initialize_on_next_forward:
            self._initialize(x)
        z, logdet = super().forward(x)
        return z + self.bias, logdet

    def inverse(self, z, context=None):
        return super().inverse(z - self.bias)

    @torch.no_grad()
    def _initialize(self, x):
        if x.shape[0] < 2:
            raise ValueError(f"ActNorm needs a batch of at least 2 samples to set its scale, got {x.shape[0]}")
        self.initialize_on_next_forward = False
        mean, std = x.mean(0), x.std(0)
        self.log_scale.copy_(-torch.log(std + 1e-6))
        self.bias.copy_(-mean * self.log_scale.exp())


@torch.no_grad()
def data_dependent_init(flow, x, context=None):
    """Set every ActNorm in `flow` from the batch `x`, each from the output of the layers
    before it; returns the batch's latents z [batch, ...] (a `context` is passed on, flow.py)."""
    for module in flow.modules():
        if isinstance(module, ActNorm):
            module.initialize_on_next_forward = True
    return flow(x, context)[0]


class LUMixing(Flow):
    """z = P L U x + b, a learned invertible linear map over the features: logdet = sum(log_scale).

    L and U share one square `weight`: its strictly lower triangle is L's (below a
    diagonal of ones), its strictly upper triangle U's (above the diagonal exp(log_scale)).
    It starts at L = U = I after a random permutation, and learns from there. (Glow starts
    from a random rotation; over hundreds of features the L and U factors of a rotation
    are badly conditioned.)
    Under autocast the products run in the inputs' dtype, like everything outside the
    coupling nets (flow.Coupling), so that the inverse undoes them exactly.
    """

    def __init__(self, features, generator=None):
        super().__init__()
        self.permutation = Permutation(torch.randperm(features, generator=generator))
        self.weight = nn.Parameter(torch.zeros(features, features))
        self.log_scale = nn.Parameter(torch.zeros(features))
        self.bias = nn.Parameter(torch.zeros(features))

    def _factors(self):
        identity = torch.eye(len(self.log_scale), dtype=self.weight.dtype, device=self.weight.device)
        lower = self.weight.tril(-1) + identity
        upper = self.weight.triu(1) + torch.diag(self.log_scale.exp())
        return lower, upper

    def forward(self, x, context=None):
        lower, upper = self._factors()
        with without_autocast(x.device.type):
            y = x @ upper.T @ lower.T  # row vectors [batch, n]: (L U x^T)^T
        return self.permutation(y)[0] + self.bias, self.log_scale.sum().expand(x.shape[0])

    def inverse(self, z, context=None):
        lower, upper = self._factors()
        y = self.permutation.inverse(z - self.bias)[0]
        # Solve t L^T = y, then x U^T = t.
        t = torch.linalg.solve_triangular(lower.T, y, upper=True, left=False, unitriangular=True)
        x = torch.linalg.solve_triangular(upper.T, t, upper=False, left=False)
        return x, -self.log_scale.sum().expand(z.shape[0])


def without_autocast(device_type):
    """A block where matrix products run in the inputs' dtype even inside autocast."""
    if torch.amp.is_autocast_available(device_type):
        return torch.autocast(device_type, enabled=False)
    return nullcontext()  # e.g. the meta device, which has no autocast


if __name__ == "__main__":
    torch.manual_seed(0)
    # Three features with very different means and spreads.
    x = torch.randn(256, 3, dtype=torch.float64) * torch.tensor([0.1, 1.0, 10.0]) + torch.tensor([5.0, 0.0, -3.0])
    z = data_dependent_init(ActNorm(3).double(), x)
    print(f"x: means {[round(m, 2) for m in x.mean(0).tolist()]}, standard deviations "
          f"{[round(s, 2) for s in x.std(0).tolist()]}")
    print(f"ActNorm set from that batch: z means {z.mean(0).abs().max():.1e} at most, standard deviations "
          f"{[round(s, 4) for s in z.std(0).tolist()]}")

    mixing = LUMixing(3).double()
    with torch.no_grad():
        for parameter in mixing.parameters():
            parameter.normal_()
    z, logdet = mixing(x[:1])
    matrix = torch.autograd.functional.jacobian(lambda v: mixing(v.unsqueeze(0))[0][0], x[0])  # [3, 3]: W
    print(f"LUMixing: logdet = sum(log_scale) = {logdet.item():.6f}, slogdet of W (autograd) "
          f"{torch.linalg.slogdet(matrix).logabsdet:.6f}")
    print(f"round trip max |x - inverse(forward(x))| = {(mixing.inverse(z)[0] - x[:1]).abs().max():.2e}")
