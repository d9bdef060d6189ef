"""Beyond RealNVP: rational-quadratic spline couplings (Durkan et al. 2019, "Neural Spline
Flows", https://arxiv.org/abs/1906.04032).

An affine coupling can only move and scale each feature's distribution, so it takes many
affine layers to carve a feature with two modes (say a sharp one and a broad one) out of
a Gaussian. A spline coupling transforms each feature of the updated half by its own
monotone curve, which can bend one mode into two in a single layer:

    g(h; c) = spline_{theta(c)}(h),    theta = net(c): per feature K widths, K heights, K-1 derivatives

The curve on [-B, B] is made of K bins. The net's outputs become
  bin widths   w_k = 2B * (m + (1 - K m) softmax(raw widths)_k)      (each at least 2B m)
  bin heights  h_k = 2B * (m + (1 - K m) softmax(raw heights)_k)
  knots        x_0 = -B,  x_{k+1} = x_k + w_k;  likewise y_k from the heights
  derivatives  d_k = m + softplus(raw_k) at the K-1 inner knots;  d_0 = d_K = 1
and inside bin k, with xi = (h - x_k) / w_k in [0, 1] and the bin's slope s_k = h_k / w_k,

    g(h) = y_k + h_k [s_k xi^2 + d_k xi (1 - xi)] / [s_k + (d_k + d_{k+1} - 2 s_k) xi (1 - xi)]

    dg/dh = s_k^2 [d_{k+1} xi^2 + 2 s_k xi (1 - xi) + d_k (1 - xi)^2]
            / [s_k + (d_k + d_{k+1} - 2 s_k) xi (1 - xi)]^2  > 0

so g is monotone and the coupling's log-det is sum_i log dg/dh_i (the Jacobian is
block-triangular, as for every coupling). The inverse solves the same equation for xi:
with t = g - y_k and delta = d_k + d_{k+1} - 2 s_k it is the root in [0, 1] of the quadratic

    a xi^2 + b xi + c = 0,   a = h_k (s_k - d_k) + t delta,   b = h_k d_k - t delta,   c = -s_k t
    xi = 2c / (-b - sqrt(b^2 - 4ac))          (the form that does not cancel)

Outside [-B, B] the map is the identity (log-det 0), which the end derivatives d_0 = d_K = 1
join smoothly. B is chosen wider than the data's range (the default 16 is), so that the
tails see only rare outliers.
A zero-initialised last layer gives equal bins and d = 1 everywhere: the identity.
"""
import math

import torch
from torch.nn import functional

from flow import Coupling, CouplingFlow, zero_last_layer
from realnvp import layers_between_blocks

MIN_BIN = 1e-3  # m above: the smallest bin width or height, and the smallest inner derivative


def rational_quadratic_spline(h, widths, heights, derivatives, bound, inverse=False):
    """The spline above (or its inverse) for each element of h [batch, n].

    widths, heights: raw net outputs [batch, n, K]; derivatives: raw [batch, n, K - 1].
    Returns (g(h), log dg/dh) elementwise; with `inverse`, (g^-1(h), log dg^-1/dh).
    """
    inside = (h >= -bound) & (h <= bound)
    h_in = torch.where(inside, h, 0.0)  # (a clamp would stop the gradient at h = +-B)
    bins = widths.shape[-1]
    widths = 2 * bound * (MIN_BIN + (1 - bins * MIN_BIN) * torch.softmax(widths, -1))
    heights = 2 * bound * (MIN_BIN + (1 - bins * MIN_BIN) * torch.softmax(heights, -1))
    ones = derivatives.new_ones(derivatives.shape[:-1] + (1,))
    derivatives = torch.cat([ones, MIN_BIN + functional.softplus(derivatives), ones], -1)  # [batch, n, K + 1]
    x_knots = functional.pad(torch.cumsum(widths, -1), (1, 0)) - bound  # [batch, n, K + 1], -B to B
    y_knots = functional.pad(torch.cumsum(heights, -1), (1, 0)) - bound

    knots = y_knots if inverse else x_knots
    k = (h_in.unsqueeze(-1) >= knots[..., 1:-1]).sum(-1, keepdim=True)  # the bin of each element [batch, n, 1]
    x_k, y_k = x_knots.gather(-1, k).squeeze(-1), y_knots.gather(-1, k).squeeze(-1)
    w_k, h_k = widths.gather(-1, k).squeeze(-1), heights.gather(-1, k).squeeze(-1)
    d_k, d_k1 = derivatives.gather(-1, k).squeeze(-1), derivatives.gather(-1, k + 1).squeeze(-1)
    s_k = h_k / w_k
    delta = d_k + d_k1 - 2 * s_k

    if inverse:
        t = h_in - y_k
        a = h_k * (s_k - d_k) + t * delta
        b = h_k * d_k - t * delta
        c = -s_k * t
        xi = (2 * c / (-b - torch.sqrt((b * b - 4 * a * c).clamp(min=0)))).clamp(0, 1)
    else:
        xi = (h_in - x_k) / w_k
    one_minus = 1 - xi
    cross = xi * one_minus  # xi (1 - xi)
    denominator = s_k + delta * cross
    out = x_k + xi * w_k if inverse else y_k + h_k * (s_k * xi**2 + d_k * cross) / denominator
    log_slope = (2 * torch.log(s_k) + torch.log(d_k1 * xi**2 + 2 * s_k * cross + d_k * one_minus**2)
                 - 2 * torch.log(denominator))  # log dg/dh at the forward point
    log_slope = -log_slope if inverse else log_slope
    return torch.where(inside, out, h), torch.where(inside, log_slope, torch.zeros_like(log_slope))


class SplineCoupling(Coupling):
    """g(h; c) = spline_{net(c)}(h) per feature of the updated half: logdet = sum log dg/dh.

    net: an MLP from the conditioning half (n/2 features) to n/2 * (3 bins - 1) raw parameters.
    """

    def __init__(self, features, net, update, bins=4, bound=16.0):
        super().__init__(features, update)
        self.net, self.bins, self.bound = zero_last_layer(net), bins, bound
        # softplus(raw) + MIN_BIN = 1 at raw = this: a zero net output means derivative 1.
        self.derivative_shift = math.log(math.expm1(1 - MIN_BIN))

    def _transform(self, half, condition, inverse):
        raw = self.net(condition).to(half.dtype).view(half.shape[0], half.shape[1], 3 * self.bins - 1)
        widths, heights, derivatives = raw.split([self.bins, self.bins, self.bins - 1], dim=-1)
        out, log_slope = rational_quadratic_spline(half, widths, heights, derivatives + self.derivative_shift,
                                                   self.bound, inverse)
        return out, log_slope.sum(1)

    def couple(self, half, condition):
        return self._transform(half, condition, inverse=False)

    def uncouple(self, half, condition):
        return self._transform(half, condition, inverse=True)

    def extra_repr(self):
        return f"{super().extra_repr()}, bins={self.bins}, bound={self.bound}"


class NeuralSplineFlow(CouplingFlow):
    """Blocks F = f0 o f1 of spline couplings over the prior's shape, with RealNVP's
    ActNorm, shuffles or LU mixing between blocks (realnvp.layers_between_blocks).

    vNets, uNets: one MLP R^{n/2} -> R^{n/2 * (3 bins - 1)} per block for f0 and f1
    (`NeuralSplineFlow.build(shape, blocks, hidden, depth, bins=...)` makes them).
    """

    def __init__(self, prior, vNets, uNets, bins=4, bound=16.0, actnorm=False, shuffle=False, mixing=False):
        if len(vNets) != len(uNets):
            raise ValueError(f"NeuralSplineFlow needs one u per v, got {len(vNets)} v nets and {len(uNets)} u nets")
        n, layers = prior.dim, []
        for index, (v, u) in enumerate(zip(vNets, uNets)):
            layers += layers_between_blocks(index, n, actnorm, shuffle, mixing)
            layers += [SplineCoupling(n, u, "y", bins, bound), SplineCoupling(n, v, "x", bins, bound)]
        super().__init__(prior, layers)

    @staticmethod
    def outputs_per_feature(bins=4, **options):
        """K widths, K heights and K - 1 inner derivatives per updated feature."""
        return 3 * bins - 1


if __name__ == "__main__":
    from flow import demonstrate

    torch.manual_seed(0)
    # Small random weights: large ones make splines so steep that a round trip loses precision.
    demonstrate(NeuralSplineFlow.build([8], blocks=2, hidden=32), weight_std=0.1)
