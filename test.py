"""Step 1: a multi-layer perceptron (MLP), the building block of every coupling net.

Each layer maps a batch of row vectors x of shape [batch, in] to

    y = act(x W + b),    W: [in, out],  b: [out]

`MLP(shapes, activations)` stacks such layers: `shapes` lists the size of every layer,
input first, and `activations[i]` is applied after layer i (an `nn.Module`, or `None`
for the identity), so `len(activations) == len(shapes) - 1`.

    >>> net = MLP([784, 50, 1], [nn.ReLU(), None])
    >>> net(torch.randn(32, 784)).shape
    torch.Size([32, 1])

Run `python test.py` to see it work. (The file is named `test.py` because the tutorial's
steps import it under that name.)
"""
import torch
from torch import nn


class MLP(nn.Module):
    """A fully connected net: y = act_k(... act_1(x W_1 + b_1) ... W_k + b_k)."""

    def __init__(self, shapes, activations):
        super().__init__()
        shapes, activations = list(shapes), list(activations)
        if len(shapes) < 2:
            raise ValueError(f"MLP needs at least an input and an output size, got shapes={shapes}")
        if len(activations) != len(shapes) - 1:
            raise ValueError(
                f"MLP with shapes={shapes} has {len(shapes) - 1} layers and needs "
                f"{len(shapes) - 1} activations (a module or None each), got {len(activations)}"
            )
        bad = [s for s in shapes if not isinstance(s, int) or s <= 0]
        if bad:
            raise ValueError(f"MLP layer sizes must be positive integers, got shapes={shapes}")
        for act in activations:
            if act is not None and not isinstance(act, nn.Module):
                raise ValueError(f"each activation must be an nn.Module or None, got {act!r}")

        self.shapes = shapes
        layers = []
        for (n_in, n_out), act in zip(zip(shapes[:-1], shapes[1:]), activations):
            layers.append(nn.Linear(n_in, n_out))
            layers.append(act if act is not None else nn.Identity())
        self.layers = nn.Sequential(*layers)

    def forward(self, x):
        if x.dim() != 2 or x.shape[1] != self.shapes[0]:
            raise ValueError(
                f"MLP expects input of shape [batch, {self.shapes[0]}], got {list(x.shape)}"
            )
        return self.layers(x)


if __name__ == "__main__":
    torch.manual_seed(0)
    net = MLP([4, 16, 16, 2], [nn.ReLU(), nn.ReLU(), None])
    x = torch.randn(8, 4)
    print(net)
    print(f"input {list(x.shape)} -> output {list(net(x).shape)}")
    print(f"parameters: {sum(p.numel() for p in net.parameters())}")
