"""Beyond coupling MLPs: the multi-scale convolutional flow of image models (RealNVP's
image architecture, Dinh et al. 2016; Glow, Kingma & Dhariwal 2018).

The flows so far see an image [C, H, W] as one vector. This one keeps it an image and
works on it at two or more scales, with small convolutional nets that reuse their filters
at every position. Each scale is

    squeeze     [C, H, W] -> [4C, H/2, W/2]: each 2 x 2 patch of a channel becomes 4
                channels of one position. A reordering of the values: logdet = 0.
    K steps of
      ActNorm   per channel, z = exp(s_c) x + b_c at every position:
                logdet = H W sum_c s_c              (layers.ActNorm over the channels)
      1 x 1 convolution   z[:, h, w] = W x[:, h, w] at every position, W = P L U:
                logdet = H W sum_c log_scale_c      (layers.LUMixing over the channels)
      coupling  the last (or first) half of the channels through a spline (spline.py)
                whose parameters a conv net computes from the other half:
                logdet = sum over the updated values of log dg/dh
    factor out  half of the channels are final: they go straight to z, and only the other
                half goes on to the next scale (its squeeze and steps).

On a 28 x 28 image: [1, 28, 28] -> squeeze [4, 14, 14] -> K steps -> 2 channels out,
[2, 14, 14] -> squeeze [8, 7, 7] -> K steps. Every step's Jacobian is block-triangular or
a per-position linear map, so the log-dets add as in every flow here, and z (all the
factored parts together, 784 numbers) has the standard Gaussian prior: log N(z; 0, I) is
the sum of the factored parts' log N, the multi-scale prior of RealNVP. A value factored
out early is modelled given nothing after it, which halves the work of every later scale.

The coupling nets are conv 3 x 3 -> ReLU -> (conv 1 x 1 -> ReLU) x (depth - 1) -> conv 3 x 3,
the last one zero, so that every coupling starts as the identity (flow.zero_last_layer).
A context [B, c] (conditional.py) enters them as c channels, each constant over the image.
"""
import torch
from torch import nn
from torch.nn import functional

from flow import Composite, Flow, FlowOverShape, Permutation
from layers import ActNorm, LUMixing
from prior import Gaussian
from spline import SplineCoupling


def squeeze_order(shape):
    """The permutation of a flattened [C, H, W] that gives the flattened [4C, H/2, W/2]."""
    return functional.pixel_unshuffle(torch.arange(shape[0] * shape[1] * shape[2]).view(1, *shape), 2).flatten()


class PerPosition(Flow):
    """A layer over C features applied at each of the H W positions of [C, H, W] (a 1 x 1
    convolution): the log-det is the sum of its log-dets over the positions."""

    def __init__(self, layer, shape):
        super().__init__()
        self.layer, self.shape = layer, tuple(shape)

    def forward(self, x, context=None):
        return self._at_each_position(x, self.layer)

    def inverse(self, z, context=None):
        return self._at_each_position(z, self.layer.inverse)

    def _at_each_position(self, inputs, transform):
        channels, height, width = self.shape
        rows = inputs.view(-1, channels, height * width).transpose(1, 2).reshape(-1, channels)  # [B H W, C]
        out, logdet = transform(rows)
        out = out.view(-1, height * width, channels).transpose(1, 2).reshape(inputs.shape)
        return out, logdet.view(-1, height * width).sum(1)


class ConvCouplingNet(nn.Module):
    """The conditioning half [B, C/2 * H * W (+ c)] -> [B, C/2 * H * W * outputs], by
    convolutions over the half as an image [C/2, H, W] (and the context as c constant channels)."""

    def __init__(self, shape, hidden, depth, outputs, context_features=0):
        super().__init__()
        self.shape, self.outputs = tuple(shape), outputs
        channels = shape[0]
        layers = [nn.Conv2d(channels + context_features, hidden, 3, padding=1), nn.ReLU()]
        for _ in range(depth - 1):
            layers += [nn.Conv2d(hidden, hidden, 1), nn.ReLU()]
        self.net = nn.Sequential(*layers, nn.Conv2d(hidden, channels * outputs, 3, padding=1))

    def forward(self, condition):
        batch, (channels, height, width) = condition.shape[0], self.shape
        values, context = condition.split([channels * height * width, condition.shape[1] - channels * height * width], 1)
        image = values.view(batch, channels, height, width)
        if context.shape[1]:
            image = torch.cat([image, context[:, :, None, None].expand(-1, -1, height, width)], 1)
        out = self.net(image).view(batch, channels, self.outputs, height, width)
        return out.permute(0, 1, 3, 4, 2).reshape(batch, -1)  # each value's `outputs` side by side


class FactorOut(Flow):
    """The first `passed` features go to z as they are; `rest` (a flow) transforms the others."""

    def __init__(self, passed, rest):
        super().__init__()
        self.passed, self.rest = passed, rest

    def forward(self, x, context=None):
        return self._transform_rest(x, context, self.rest)

    def inverse(self, z, context=None):
        return self._transform_rest(z, context, self.rest.inverse)

    def _transform_rest(self, inputs, context, transform):
        passed, rest = inputs.split([self.passed, inputs.shape[1] - self.passed], 1)
        rest, logdet = transform(rest, context)
        return torch.cat([passed, rest], 1), logdet


class MultiScaleFlow(FlowOverShape):
    """The multi-scale flow over images [C, H, W]: as many scales as H and W halve evenly."""

    @classmethod
    def build(cls, shape, blocks=4, hidden=64, depth=2, context_features=0, bins=4, bound=16.0):
        """`blocks` steps at each scale, each coupling net `hidden` channels wide with `depth`
        hidden layers; c = context_features, the size of a context the nets also see."""
        if len(shape) != 3 or shape[1] % 2 or shape[2] % 2:
            raise ValueError(f"MultiScaleFlow needs images [C, H, W] of even height and width, got {list(shape)}")
        return cls(scale_layers(tuple(shape), blocks, hidden, depth, context_features, bins, bound), Gaussian(shape))


def scale_layers(shape, blocks, hidden, depth, context_features, bins, bound):
    """The layers of the scale that takes data of `shape` [C, H, W], and of every scale after it."""
    channels, height, width = shape[0] * 4, shape[1] // 2, shape[2] // 2
    features = channels * height * width
    layers = [Permutation(squeeze_order(shape))]
    for index in range(blocks):
        net = ConvCouplingNet((channels // 2, height, width), hidden, depth, 3 * bins - 1, context_features)
        # ActNorm then the 1 x 1 convolution, both at every position: one reshape to rows for the two.
        per_position = Composite([ActNorm(channels), LUMixing(channels, generator=torch.Generator().manual_seed(index))])
        layers += [PerPosition(per_position, (channels, height, width)),
                   SplineCoupling(features, net, "y" if index % 2 == 0 else "x", bins, bound)]
    if height % 2 == 0 and width % 2 == 0:
        rest = scale_layers((channels // 2, height, width), blocks, hidden, depth, context_features, bins, bound)
        layers.append(FactorOut(features // 2, Composite(rest)))
    return layers


if __name__ == "__main__":
    from flow import demonstrate

    torch.manual_seed(0)
    flow = MultiScaleFlow.build([1, 4, 4], blocks=2, hidden=8)
    # Weights drawn small, as for the spline flow: large ones make the splines too steep to invert to round-off.
    demonstrate(flow, weight_std=0.1)
