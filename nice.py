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

from flow import Coupling, CouplingFlow, DiagonalScaling, zero_last_layer


class AdditiveCoupling(Coupling):
    """g(h; c) = h + shift_net(c): one of f0 / f1 above, logdet = 0."""

    def __init__(self, features, shift_net, update):
        super().__init__(features, update)
        self.shift_net = zero_last_layer(shift_net)  # starts as the identity

    def couple(self, half, condition):
        shifted = half + self.shift_net(condition).to(half.dtype)
        return shifted, half.new_zeros(half.shape[0])

    def uncouple(self, half, condition):
        return half - self.shift_net(condition).to(half.dtype), half.new_zeros(half.shape[0])


class NICE(CouplingFlow):
    """Stacked blocks F = f0 o f1 of additive couplings over the prior's shape.

    prior: a `Gaussian` (its shape is the data's shape, n = its size, n even).
    vNets, uNets: one MLP R^{n/2} -> R^{n/2} per block for v and u
    (`NICE.build(shape, blocks, hidden, depth)` makes them).
    """

    def __init__(self, prior, vNets, uNets, scaling=True):
        if len(vNets) != len(uNets):
            raise ValueError(f"NICE needs one u per v, got {len(vNets)} v nets and {len(uNets)} u nets")
        n = prior.dim
        couplings = []
        for v, u in zip(vNets, uNets):
            # F = f0 o f1: data to latent applies f1 (y += u(x)) first, then f0 (x += v(y)).
            couplings += [AdditiveCoupling(n, u, "y"), AdditiveCoupling(n, v, "x")]
        if scaling:
            couplings.append(DiagonalScaling(n))
        super().__init__(prior, couplings)


if __name__ == "__main__":
    from flow import demonstrate

    torch.manual_seed(0)
    demonstrate(NICE.build([8], blocks=2, hidden=32))
