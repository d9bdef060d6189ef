"""Steps 5 and 9: the bijective net every flow in this tutorial subclasses.

A normalizing flow is an invertible map between data x and a latent z with a simple
prior p(z). The change of variables gives the exact density of the data:

    log p(x) = log p(z) + log |det dz/dx|,    z = f(x)

The one convention, followed by every class in the project:

    forward(x) -> (z, logdet)    data to latent,  logdet = log |det dz/dx|, shape [batch]
    inverse(z) -> (x, logdet)    latent to data,  logdet = log |det dx/dz| = -(forward's)

    logProbability(x) = prior.logProbability(z) + logdet,   (z, logdet) = forward(x)
    sample(batchSize) = inverse(prior.sample(batchSize))[0]

`forward` and `inverse` also take an optional `context` c, left at None until
conditional.py: where it is given, each coupling hands it to its nets beside the
conditioning half and every other layer passes it on untouched, so that one flow models
p(x | c) for every c. The Jacobian is that of x -> z at the given c. Until then, ignore it.

`sample` and `logProbability` are written once, here. A subclass writes `forward` and
`inverse`; a flow made of layers (`Composite`) adds their log-determinants and runs the
inverses in reverse order.

This file also holds the pieces NICE (nice.py), RealNVP (realnvp.py) and the spline flow
(spline.py) share: `Coupling`, which splits the features into two halves and transforms
one given the other, `Permutation`, a fixed reordering of the features (on images, the one
that makes the halves a checkerboard), and `CouplingFlow`, the frame of stacked couplings
with one `build` for all.

Papers: NICE, Dinh et al. 2014, https://arxiv.org/abs/1410.8516;
RealNVP, Dinh et al. 2016, https://arxiv.org/abs/1605.08803.
"""
import torch
from torch import nn

from prior import Gaussian
from test import MLP


class Flow(nn.Module):
    """A bijection x <-> z, optionally with a prior over z that makes it a distribution."""

    def __init__(self, prior=None):
        super().__init__()
        self.prior = prior

    def forward(self, x, context=None):
        """Data to latent: returns (z, log |det dz/dx|)."""
        raise NotImplementedError

    def inverse(self, z, context=None):
        """Latent to data: returns (x, log |det dx/dz|)."""
        raise NotImplementedError

    def logProbability(self, x):
        """Exact log-density of each sample: [batch, ...] -> [batch]."""
        z, logdet = self.forward(x)
        return self._prior().logProbability(z) + logdet

    log_prob = logProbability  # the name torch.distributions uses

    def sample(self, batchSize, temperature=1.0):
        """Draw `batchSize` samples by pushing prior samples through the inverse
        (temperature < 1: from a narrower prior)."""
        z = self._prior().sample(batchSize, temperature=temperature)
        return self.inverse(z)[0]

    def _prior(self):
        if self.prior is None:
            raise RuntimeError(f"{type(self).__name__} was built without a prior, so it has no density")
        return self.prior


class Composite(Flow):
    """Layers applied in order: z = f_k(... f_1(x)), log-dets add up, inverses run backwards."""

    def __init__(self, layers, prior=None):
        super().__init__(prior)
        self.layers = nn.ModuleList(layers)

    def forward(self, x, context=None):
        logdet = x.new_zeros(x.shape[0])
        for layer in self.layers:
            x, layer_logdet = layer(x, context)
            logdet = logdet + layer_logdet
        return x, logdet

    def inverse(self, z, context=None):
        logdet = z.new_zeros(z.shape[0])
        for layer in reversed(self.layers):
            z, layer_logdet = layer.inverse(z, context)
            logdet = logdet + layer_logdet
        return z, logdet


class Coupling(Flow):
    """Transform one half of the features given the other: a coupling layer.

    The input [batch, n] is split into x = its first n/2 features and y = the rest, and
    one half is changed by an invertible map g whose parameters depend on the other half:

        update="y":  f1(x, y) = (x, g(y; x))     (the transformed half is y)
        update="x":  f0(x, y) = (g(x; y), y)     (the transformed half is x)

    NICE (nice.py) takes g(h; c) = h + net(c); RealNVP (realnvp.py) g(h; c) = exp(s(c)) h + t(c).

    The Jacobian is block-triangular (the kept half passes through unchanged), so its
    determinant is the determinant of dg/d(half) alone. Only the conditioning half goes
    into the coupling nets (with the context beside it, where one is given: the nets then
    take n/2 + c inputs, and g still changes only the updated half). Subclasses write
    `couple(half, condition) -> (half', logdet)` and `uncouple(half', condition) -> (half, logdet)`.

    The nets may compute in a lower precision (mixed precision, torch.autocast): a coupling casts
    their outputs to the data's dtype first, so that g, its log-det and its inverse are
    computed in the data's precision and the inverse undoes the forward exactly.
    """

    def __init__(self, features, update):
        super().__init__()
        if update not in ("x", "y"):
            raise ValueError(f"update must be 'x' (first half) or 'y' (second half), got {update!r}")
        check_even(features, type(self).__name__)
        self.features = features
        self.half = features // 2
        self.update = update

    def forward(self, x, context=None):
        return self._split_and_transform(x, context, self.couple)

    def inverse(self, z, context=None):
        return self._split_and_transform(z, context, self.uncouple)

    def _split_and_transform(self, inputs, context, transform):
        if inputs.dim() != 2 or inputs.shape[1] != self.features:
            raise ValueError(
                f"{type(self).__name__} expects [batch, {self.features}], got {list(inputs.shape)}"
            )
        kept, half = self.halves(inputs)
        condition = kept if context is None else torch.cat([kept, context.to(kept.dtype)], dim=1)
        half, logdet = transform(half, condition)
        return torch.cat([kept, half] if self.update == "y" else [half, kept], dim=1), logdet

    def halves(self, features):
        """(kept half, updated half) of features [..., n], split along the last dimension.
        One split, whose gradient is one cat (two slices would each need a zero-filled copy)."""
        first, second = features.split(self.half, dim=-1)
        return (first, second) if self.update == "y" else (second, first)

    def couple(self, half, condition):
        raise NotImplementedError

    def uncouple(self, half, condition):
        raise NotImplementedError

    def extra_repr(self):
        return f"features={self.features}, update={self.update!r}"


class Permutation(Flow):
    """Reorder the features by a fixed permutation: |det| = 1, logdet = 0."""

    def __init__(self, order):
        super().__init__()
        order = torch.as_tensor(order, dtype=torch.long)
        if not torch.equal(order.sort().values, torch.arange(len(order))):
            raise ValueError("Permutation needs each index 0..n-1 exactly once")
        # Buffers: they follow .to(device) and are saved in the state_dict.
        self.register_buffer("order", order)
        self.register_buffer("inverse_order", order.argsort())

    def forward(self, x, context=None):
        return _Reorder.apply(x, self.order, self.inverse_order), x.new_zeros(x.shape[0])

    def inverse(self, z, context=None):
        return _Reorder.apply(z, self.inverse_order, self.order), z.new_zeros(z.shape[0])


class _Reorder(torch.autograd.Function):
    """x[:, order], whose gradient is the reverse reordering: a gather both ways.

    Plain indexing would scatter-add the gradient back, several times slower. Forward
    too, `torch.gather` with the order broadcast over the batch is about four times
    faster on a CPU than `x[:, order]`. Written with `setup_context`, so that torch.func
    (jacrev, vmap) can transform it too.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x, order, inverse_order):
        return _gather_features(x, order)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[2])

    @staticmethod
    def backward(ctx, grad):
        (inverse_order,) = ctx.saved_tensors
        return _gather_features(grad, inverse_order), None, None


def _gather_features(x, order):
    """x[:, order] for x of shape [batch, n]."""
    return torch.gather(x, 1, order.expand(x.shape[0], -1))


class DiagonalScaling(Flow):
    """z = exp(s) * h with a learned vector s: Jacobian diag(exp(s)), logdet = sum(s)."""

    def __init__(self, features):
        super().__init__()
        self.log_scale = nn.Parameter(torch.zeros(features))

    def forward(self, x, context=None):
        return x * self.log_scale.exp(), self.log_scale.sum().expand(x.shape[0])

    def inverse(self, z, context=None):
        return z * (-self.log_scale).exp(), -self.log_scale.sum().expand(z.shape[0])


class FlowOverShape(Composite):
    """Layers over data of a shape, with the prior over it: inputs [batch, *shape] are
    flattened to [batch, n] for the layers, and z has the shape of x."""

    def __init__(self, layers, prior):
        super().__init__(layers, prior)
        self.shape = prior.shape

    def forward(self, x, context=None):
        z, logdet = super().forward(self._flatten(x), context)
        return z.reshape(x.shape), logdet

    def inverse(self, z, context=None):
        x, logdet = super().inverse(self._flatten(z), context)
        return x.reshape(z.shape), logdet

    def _flatten(self, inputs):
        if inputs.shape[1:] != self.shape:
            raise ValueError(
                f"{type(self).__name__} expects [batch, {', '.join(map(str, self.shape))}], "
                f"got {list(inputs.shape)}"
            )
        dtype = next(self.parameters()).dtype  # the model's dtype: float64 after .double()
        if inputs.dtype != dtype:
            raise TypeError(f"{type(self).__name__} holds {dtype} parameters and got a {inputs.dtype} input; "
                            f"convert one of them (inputs.to({dtype}) or model.to({inputs.dtype}))")
        return inputs.flatten(1)


class CouplingFlow(FlowOverShape):
    """Couplings over a data shape, with the prior: the common frame of NICE, RealNVP and
    the spline flow.

    For images ([C, H, W]), a fixed permutation puts the "white" squares of a checkerboard first and the "black"
    ones second, so that each coupling transforms half the positions given their
    neighbours, and its inverse permutation comes last (which puts every value back in
    place unless the layers in between reorder them too). z has the shape of x, and
    permutations cost no log-det.

    A subclass says how many nets a block has (`NETS_PER_BLOCK`, in the order its
    constructor takes them) and how many outputs each net gives per updated feature
    (`outputs_per_feature`); `build` then makes them all.
    """

    NETS_PER_BLOCK = 2

    def __init__(self, prior, couplings):
        check_even(prior.dim, type(self).__name__)
        layers = list(couplings)
        if len(prior.shape) == 3:
            order = checkerboard_order(prior.shape)
            layers = [Permutation(order)] + layers + [Permutation(order.argsort())]
        super().__init__(layers, prior)

    @classmethod
    def build(cls, shape, blocks=4, hidden=512, depth=2, context_features=0, **options):
        """The flow over data of `shape`: a standard Gaussian prior and `blocks` blocks whose
        nets are MLPs n/2 (+ c) -> hidden (x depth) -> n/2 * outputs_per_feature; `options`
        go to the constructor. c = context_features: the size of a context the nets also see
        (conditional.py), 0 for none."""
        prior = Gaussian(shape)
        half = prior.dim // 2
        outputs = half * cls.outputs_per_feature(**options)

        def nets():
            return [coupling_mlp(half + context_features, hidden, depth, out_features=outputs) for _ in range(blocks)]

        return cls(prior, *(nets() for _ in range(cls.NETS_PER_BLOCK)), **options)

    @staticmethod
    def outputs_per_feature(**options):
        """Outputs of each net per feature of the updated half: 1 for a shift or a log-scale."""
        return 1


def checkerboard_order(shape):
    """Indices of a flattened [C, H, W] tensor: checkerboard 'white' squares first, then 'black'."""
    channels, height, width = shape
    rows = torch.arange(height).view(1, height, 1)
    cols = torch.arange(width).view(1, 1, width)
    black = ((rows + cols) % 2).expand(channels, height, width).flatten()
    return torch.cat([torch.nonzero(black == 0).flatten(), torch.nonzero(black == 1).flatten()])


def coupling_mlp(features, hidden, depth, out_features=None):
    """An MLP features -> hidden (x depth, ReLU) -> out_features (default: features), the
    shape of every coupling net."""
    shapes = [features] + [hidden] * depth + [out_features or features]
    return MLP(shapes, [nn.ReLU() for _ in range(depth)] + [None])


def zero_last_layer(net):
    """Zero the last linear (or convolutional) layer of a net, so that it outputs 0 and its
    coupling starts as the identity."""
    last = [m for m in net.modules() if isinstance(m, (nn.Linear, nn.Conv2d))][-1]
    nn.init.zeros_(last.weight)
    nn.init.zeros_(last.bias)
    return net


def check_even(features, name):
    if features % 2 != 0:
        raise ValueError(
            f"{name} splits the features into two equal halves, so their number must be even; got {features}"
        )


def demonstrate(flow, weight_std=0.3):
    """Print what a flow does on a few samples: shapes, round trip, log-det vs autograd, density."""
    flow = flow.double()
    with torch.no_grad():  # random weights, so the flow is not the identity
        for p in flow.parameters():
            p.normal_(0.0, weight_std)
    parameters = sum(p.numel() for p in flow.parameters())
    print(f"{type(flow).__name__} over {list(flow.shape)}: {len(flow.layers)} layers, {parameters} parameters")
    x = torch.randn(3, *flow.shape, dtype=torch.double)
    z, logdet = flow(x)
    x_back, inverse_logdet = flow.inverse(z)
    print(f"x {list(x.shape)} -> z {list(z.shape)}, logdet {list(logdet.shape)}")
    print(f"round trip max |x - inverse(forward(x))| = {(x - x_back).abs().max():.2e}")
    print(f"forward logdet + inverse logdet = {(logdet + inverse_logdet).abs().max():.2e}")
    jacobian = torch.autograd.functional.jacobian(lambda v: flow(v.view(1, *flow.shape))[0].flatten(), x[0])
    autograd_logdet = torch.linalg.slogdet(jacobian.reshape(z[0].numel(), -1)).logabsdet
    print(f"logdet {logdet[0]:.6f}, autograd slogdet {autograd_logdet:.6f}")
    samples = flow.sample(2)
    print(f"sample {list(samples.shape)}, logProbability {flow.logProbability(samples).tolist()}")


if __name__ == "__main__":
    torch.manual_seed(0)
    # z = P(exp(s) * x) with s = (0.5, -1) and P swapping the two features: if z ~ N(0, I),
    # then x_i ~ N(0, exp(-s_i)^2), a density torch.distributions can write down.
    log_scale = torch.tensor([0.5, -1.0])
    flow = Composite([DiagonalScaling(2), Permutation([1, 0])], prior=Gaussian([2]))
    with torch.no_grad():
        flow.layers[0].log_scale.copy_(log_scale)
    x = torch.randn(3, 2)
    z, logdet = flow(x)
    print(f"Composite of {len(flow.layers)} layers: x {list(x.shape)} -> z {list(z.shape)}, "
          f"logdet = sum(s) = {logdet.tolist()}")
    print(f"round trip max |x - inverse(forward(x))| = {(flow.inverse(z)[0] - x).abs().max():.2e}")
    reference = torch.distributions.Normal(0.0, (-log_scale).exp()).log_prob(x).sum(1)
    print(f"logProbability {[round(v, 4) for v in flow.logProbability(x).tolist()]}, "
          f"max difference to torch.distributions: {(flow.logProbability(x) - reference).abs().max():.2e}")
    print(f"sample(10000): standard deviations {[round(v, 3) for v in flow.sample(10000).std(0).tolist()]}, "
          f"expected exp(-s) = {[round(v, 3) for v in (-log_scale).exp().tolist()]}")
