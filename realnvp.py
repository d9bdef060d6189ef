"""Step 6: RealNVP, a bijection built from affine couplings (Dinh et al. 2016,
https://arxiv.org/abs/1605.08803).

Split the input into halves x, y in R^{n/2}. One block is F = f0 o f1 with

    f1(x, y) = (x, exp(su(x)) * y + u(x))
    f0(x, y) = (exp(sv(y)) * x + v(y), y)

and RealNVP stacks such blocks. Each coupling is inverted without inverting a net:

    f1^-1(x, y') = (x, (y' - u(x)) * exp(-su(x)))

The Jacobian of f1 is block lower-triangular,

    d f1 / d(x, y) = [[I,                           0              ],
                      [d(exp(su(x)) y + u(x))/dx,   diag(exp(su(x)))]]

so det = prod(exp(su(x))) and logdet = sum(su(x)); likewise logdet(f0) = sum(sv(y)).

Two guards keep training stable: each log-scale is soft-bounded, s = a * tanh(raw),
so |s| <= |a| for a learned per-feature a (initially 1) that moves only as fast as the
optimizer lets it, whatever the net outputs; and the last layer of every net starts at
zero, so each coupling starts as the identity.

`v`, `u` and the raw log-scales of `sv`, `su` are MLPs from test.py, one of each per block
(so su(x) = a * tanh(mlp(x))); the prior comes at init.
"""
import torch
from torch import nn

from flow import Coupling, CouplingFlow, Permutation, zero_last_layer
from layers import ActNorm, LUMixing


class AffineCoupling(Coupling):
    """g(h; c) = exp(s(c)) * h + t(c) with s = a * tanh(log_scale_net(c)): logdet = sum(s)."""

    def __init__(self, features, shift_net, log_scale_net, update):
        super().__init__(features, update)
        self.shift_net = zero_last_layer(shift_net)
        self.log_scale_net = zero_last_layer(log_scale_net)
        self.log_scale_bound = nn.Parameter(torch.ones(features // 2))

    def _shift_and_log_scale(self, half, condition):
        shift = self.shift_net(condition).to(half.dtype)
        log_scale = self.log_scale_bound * torch.tanh(self.log_scale_net(condition).to(half.dtype))
        return shift, log_scale

    def couple(self, half, condition):
        shift, log_scale = self._shift_and_log_scale(half, condition)
        return half * log_scale.exp() + shift, log_scale.sum(1)

    def uncouple(self, half, condition):
        shift, log_scale = self._shift_and_log_scale(half, condition)
        return (half - shift) * (-log_scale).exp(), -log_scale.sum(1)


class RealNVP(CouplingFlow):
    """Stacked blocks F = f0 o f1 of affine couplings over the prior's shape.

    prior: a `Gaussian` (its shape is the data's shape, n = its size, n even).
    vNets, uNets, svNets, suNets: one MLP R^{n/2} -> R^{n/2} per block for each of
    v, u, sv, su (`RealNVP.build(shape, blocks, hidden, depth, ...)` makes them).
    actnorm: put an ActNorm (layers.py) before each block; call
    `layers.data_dependent_init` with a batch of data before training.
    shuffle: reorder the features by a fixed random permutation between blocks (logdet 0).
    mixing: put a learned invertible linear map (`layers.LUMixing`) between blocks; it
    starts as such a permutation and replaces it.
    """

    NETS_PER_BLOCK = 4

    def __init__(self, prior, vNets, uNets, svNets, suNets, actnorm=False, shuffle=False, mixing=False):
        counts = {len(vNets), len(uNets), len(svNets), len(suNets)}
        if len(counts) != 1:
            raise ValueError(
                "RealNVP needs one v, u, sv and su net per block, got "
                f"{len(vNets)}, {len(uNets)}, {len(svNets)}, {len(suNets)}"
            )
        n = prior.dim
        couplings = []
        for index, (v, u, sv, su) in enumerate(zip(vNets, uNets, svNets, suNets)):
            couplings += layers_between_blocks(index, n, actnorm, shuffle, mixing)
            # F = f0 o f1: data to latent applies f1 (transforms y) first, then f0 (x).
            couplings += [AffineCoupling(n, u, su, "y"), AffineCoupling(n, v, sv, "x")]
        super().__init__(prior, couplings)


def layers_between_blocks(index, n, actnorm=False, shuffle=False, mixing=False):
    """The layers that come before block `index` (from 0) of n features.

    mixing: a learned linear map (layers.LUMixing), so that each block splits along new
    directions; else shuffle: a fixed random order, so that each block splits the
    features anew (the first block takes the checkerboard as it is); actnorm: a
    per-feature affine map set from data (layers.py) before every block.
    """
    generator = torch.Generator().manual_seed(index)  # the same model from the same arguments
    layers = []
    if mixing and index > 0:
        layers.append(LUMixing(n, generator=generator))
    elif shuffle and index > 0:
        layers.append(Permutation(torch.randperm(n, generator=generator)))
    if actnorm:
        layers.append(ActNorm(n))
    return layers


if __name__ == "__main__":
    from flow import demonstrate

    torch.manual_seed(0)
    demonstrate(RealNVP.build([8], blocks=2, hidden=32))
