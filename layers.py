"""Bijective layers beyond the tutorial's couplings, used to train faster and better.

ActNorm (Kingma & Dhariwal 2018, Glow, https://arxiv.org/abs/1807.03039) is a per-feature
affine map whose parameters are set from the data once, before training:

    z = exp(s) * x + b,    Jacobian diag(exp(s)),    logdet = sum(s)

`data_dependent_init(flow, x)` runs one batch through the flow and sets each ActNorm so
that its output has zero mean and unit variance per feature on that batch. On MNIST this
matters: the logits of background pixels and of stroke pixels have very different
means and spreads, and couplings that start as the identity, with bounded log-scales,
take many steps to learn per-pixel scales that ActNorm gets from one batch.
"""
import torch
from torch import nn

from flow import DiagonalScaling


class ActNorm(DiagonalScaling):
    """z = exp(s) * x + b per feature; s and b initialised from data by `data_dependent_init`."""

    def __init__(self, features):
        super().__init__(features)
        self.bias = nn.Parameter(torch.zeros(features))
        self.initialize_on_next_forward = False

    def forward(self, x):
        if self.initialize_on_next_forward:
            self._initialize(x)
        z, logdet = super().forward(x)
        return z + self.bias, logdet

    def inverse(self, z):
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
def data_dependent_init(flow, x):
    """Set every ActNorm in `flow` from the batch `x` (each sees the output of the layers before it)."""
    actnorms = [m for m in flow.modules() if isinstance(m, ActNorm)]
    for actnorm in actnorms:
        actnorm.initialize_on_next_forward = True
    flow(x)
    return len(actnorms)
