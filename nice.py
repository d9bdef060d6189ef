"""Step 3: NICE, a bijection built from additive couplings (Dinh et al. 2014,
https://arxiv.org/abs/1410.8516).

Split the input into halves x, y in R^{n/2}. One block is F = f0 o f1 with

    f1(x, y) = (x, y + u(x))
    f0(x, y) = (x + v(y), y)

and NICE stacks such blocks. Each coupling is inverted by subtracting what it added:

    f1^-1(x, y') = (x, y' - u(x)),    f0^-1(x', y) = (x' - v(y), y)

and its Jacobian is unit triangular, e.g. for f1  [[I, 0], [du/dx, I]],  so det = 1 and
logdet = 0: NICE's couplings preserve volume. As in the paper, a learned diagonal
scaling z = exp(s) * h (logdet = sum(s)) at the end lets the model change volume at all;
without it every density NICE can express is the prior's, rearranged.

`v` and `u` are MLPs from test.py, one pair per block; the prior comes at init.
"""
import torch

from flow import Coupling, CouplingFlow, DiagonalScaling, check_even, coupling_mlp, zero_last_layer
from prior import Gaussian


class AdditiveCoupling(Coupling):
    """g(h; c) = h + shift_net(c): one of f0 / f1 above, logdet = 0."""

    def __init__(self, features, shift_net, update, context_features=0):
        super().__init__(features, update, context_features)
        self.shift_net = zero_last_layer(shift_net)  # starts as the identity

    def couple(self, half, condition):
        # .to: the net may compute in a lower precision such as bfloat16; the sum stays in the data's dtype.
        shifted = half + self.shift_net(condition).to(half.dtype)
        return shifted, half.new_zeros(half.shape[0])

    def uncouple(self, half, condition):
        return half - self.shift_net(condition).to(half.dtype), half.new_zeros(half.shape[0])


class NICE(CouplingFlow):
    """Stacked blocks F = f0 o f1 of additive couplings over the prior's shape.

    prior: a `Gaussian` (its shape is the data's shape, n = its size, n even).
    vNets, uNets: one MLP R^{n/2} -> R^{n/2} per block for v and u
    (R^{n/2 + c} -> R^{n/2} for a flow conditioned on a context of c = context_features).
    """

    def __init__(self, prior, vNets, uNets, scaling=True, context_features=0):
        check_even(prior.dim, "NICE")
        if len(vNets) != len(uNets):
            raise ValueError(f"NICE needs one u per v, got {len(vNets)} v nets and {len(uNets)} u nets")
        n = prior.dim
        couplings = []
        for v, u in zip(vNets, uNets):
            # F = f0 o f1: data to latent applies f1 (y += u(x)) first, then f0 (x += v(y)).
            couplings += [AdditiveCoupling(n, u, "y", context_features), AdditiveCoupling(n, v, "x", context_features)]
        if scaling:
            couplings.append(DiagonalScaling(n))
        super().__init__(prior, couplings, context_features)

    @classmethod
    def build(cls, shape, blocks=4, hidden=1000, depth=2, context_features=0, nets_see_context=True):
        """NICE over data of `shape` with MLP couplings n/2 (+ c) -> hidden (x depth) -> n/2.

        c = context_features; with nets_see_context=False the nets take n/2 and only the prior
        sees the context.
        """
        prior = Gaussian(shape, context_features)
        half = prior.dim // 2
        nets_context = context_features if nets_see_context else 0  # the context features the nets see
        nets = lambda: [coupling_mlp(half + nets_context, hidden, depth, out_features=half) for _ in range(blocks)]
        return cls(prior, nets(), nets(), context_features=nets_context)


if __name__ == "__main__":
    from flow import demonstrate

    torch.manual_seed(0)
    demonstrate(NICE.build([8], blocks=2, hidden=32))
