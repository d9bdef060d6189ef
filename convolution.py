"""Beyond RealNVP: coupling nets that also see the image as an image.

A coupling net (flow.coupling_mlp) takes the conditioning half as a list of n/2 numbers:
it learns what a shape looks like at each position anew, and the same shape one pixel
to the side is new to it. A convolution slides the same small filter over every
position, so what it learns in one place it knows everywhere. `ImageCouplingNet` adds
such a branch to a coupling's MLP, for a flow over images [C, H, W]:

    net(c) = mlp(c) + conv(grid(c)) read at the updated half's pixels

    grid(c):  [B, 2C, H, W], the conditioning half's values at their pixels and 0 at the
              updated half's, beside a mask that is 1 where a value is given (a 0 pixel and
              a hidden one must differ); with a context [B, k] beside the half (flow.py),
              k more channels, each constant over the image
    conv:     squeeze 2 x 2 (H/2 x W/2 positions, 4 times the channels), three 3 x 3
              convolutions with ReLUs between them, unsqueeze: [B, outputs * C, H, W]

so each updated pixel gets its `outputs` parameters (3 bins - 1 for a spline coupling, 1
for a shift or a log-scale) from the values around it. The log-det keeps its formula:
the net still sees only the conditioning half (and the context), never the half it
changes, so the Jacobian stays block-triangular. The branch's last convolution starts at
zero, so a coupling starts as its MLP alone does: the identity.

The branch needs to know which pixel each feature is. The checkerboard and the shuffles
between blocks are permutations (and ActNorm acts on each feature where it is), so
`add_image_branches(flow, channels)` follows them through the flow and gives each
coupling's nets a branch that knows where its halves lie. A learned mixing
(layers.LUMixing) makes each feature a blend of all the pixels, which no grid can hold.

Run `python convolution.py` to see the grid a coupling's convolution sees.
"""
import math

import torch
from torch import nn
from torch.nn import functional

from flow import Coupling, DiagonalScaling, Permutation


class ImageCouplingNet(nn.Module):
    """mlp(c) + conv(grid(c)): a coupling net with a convolutional branch over the image.

    mlp: the coupling's net, condition [B, n/2 + k] -> [B, n/2 * outputs] (k = 0 without a
    context). shape: the image's [C, H, W], H and W even. channels: the convolutions' width.
    condition_pixels, updated_pixels [n/2]: which pixel of the flattened image each
    feature of the conditioning half and of the updated half is.
    """

    def __init__(self, mlp, shape, channels, condition_pixels, updated_pixels):
        super().__init__()
        image_channels, height, width = shape
        if height % 2 or width % 2:
            raise ValueError(f"ImageCouplingNet squeezes 2 x 2 blocks of pixels: H and W must be even, got {list(shape)}")
        self.mlp, self.shape = mlp, tuple(shape)
        self.half = image_channels * height * width // 2
        linears = [m for m in mlp.modules() if isinstance(m, nn.Linear)]
        first, last = linears[0], linears[-1]
        self.context_features = first.in_features - self.half  # what the net sees beyond the half
        if last.out_features % self.half:
            raise ValueError(f"the MLP's {last.out_features} outputs are not a whole number per updated feature "
                             f"({self.half})")
        self.outputs = last.out_features // self.half  # parameters per updated feature
        squeezed = 4 * (2 * image_channels + self.context_features)  # values, mask and context, 2 x 2 blocks
        self.conv = nn.Sequential(nn.Conv2d(squeezed, channels, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(channels, 4 * self.outputs * image_channels, 3, padding=1))
        nn.init.zeros_(self.conv[-1].weight)  # the branch adds nothing at first
        nn.init.zeros_(self.conv[-1].bias)
        mask = torch.zeros(2 * self.half)
        mask[condition_pixels] = 1
        # Buffers, saved with the weights: a checkpoint keeps the layout its permutations make.
        self.register_buffer("condition_pixels", torch.as_tensor(condition_pixels).clone())
        self.register_buffer("updated_pixels", torch.as_tensor(updated_pixels).clone())
        self.register_buffer("mask", mask.view(1, *self.shape))

    def grid(self, condition):
        """condition [B, n/2 + k] -> [B, 2C + k, H, W]: values in place, the mask, the context."""
        batch, (height, width) = condition.shape[0], self.shape[1:]
        values = condition.new_zeros(batch, 2 * self.half).index_copy(1, self.condition_pixels, condition[:, :self.half])
        planes = [values.view(batch, *self.shape), self.mask.to(condition.dtype).expand(batch, *self.shape)]
        if self.context_features:
            planes.append(condition[:, self.half:, None, None].expand(-1, -1, height, width))
        return torch.cat(planes, dim=1)

    def forward(self, condition):
        batch = condition.shape[0]
        per_pixel = functional.pixel_shuffle(self.conv(functional.pixel_unshuffle(self.grid(condition), 2)), 2)
        # [B, outputs * C, H, W] -> [B, outputs, n] -> the updated features' [B, n/2, outputs], flattened
        per_feature = per_pixel.reshape(batch, self.outputs, -1)[:, :, self.updated_pixels].transpose(1, 2)
        return self.mlp(condition) + per_feature.reshape(batch, -1)


def add_image_branches(flow, channels):
    """Give every coupling net of a CouplingFlow over images a convolutional branch of
    `channels` (ImageCouplingNet), on the device and in the dtype of that net; returns the
    flow. A ValueError, before anything changes, for a flow whose features are not all
    pixels at some point (a learned mixing) or whose nets have branches already."""
    if len(flow.shape) != 3:
        raise ValueError(f"convolutional branches need images [C, H, W], not data of shape {list(flow.shape)}")
    for layer in flow.layers:
        if not isinstance(layer, (Permutation, Coupling, DiagonalScaling)):  # ActNorm is a DiagonalScaling
            raise ValueError(f"convolutional branches need every feature to stay a pixel; {type(layer).__name__} "
                             "blends them")
        if any(isinstance(net, ImageCouplingNet) for net in layer.children()):
            raise ValueError("this flow's coupling nets have convolutional branches already")
    pixels = torch.arange(math.prod(flow.shape))  # pixels[i]: the pixel of the image that feature i is
    for layer in flow.layers:
        if isinstance(layer, Permutation):
            pixels = pixels[layer.order.cpu()]  # its output feature i is its input feature order[i]
        elif isinstance(layer, Coupling):
            condition, updated = layer.halves(pixels)
            for name, mlp in list(layer.named_children()):
                net = ImageCouplingNet(mlp, flow.shape, channels, condition, updated)
                setattr(layer, name, net.to(next(mlp.parameters())))  # the MLP's device and dtype
    return flow


if __name__ == "__main__":
    from spline import NeuralSplineFlow

    torch.manual_seed(0)
    flow = add_image_branches(NeuralSplineFlow.build([1, 4, 4], blocks=2, hidden=16, shuffle=True), channels=8)
    image = torch.arange(1.0, 17.0).view(1, 1, 4, 4)  # pixel values 1..16, so each shows where it is
    print("an image of 4 x 4 pixels numbered 1..16:\n", image[0, 0].int().tolist())
    seen = []
    for layer in flow.layers:
        if isinstance(layer, Coupling):
            layer.net.register_forward_hook(lambda net, inputs, output: seen.append(net.grid(inputs[0])))
    flow(image)  # at the start every coupling is the identity, so each sees the image's own values
    for index, grid in enumerate(seen):
        print(f"coupling {index} sees (0: a pixel it changes):", grid[0, 0].round().int().tolist())
    in_place = all(torch.allclose(grid[:, :1], image * grid[:, 1:2]) for grid in seen)  # values x mask
    print("each sees the image's own value at each pixel it is given, 0 elsewhere:", in_place)
    covered = sum(grid[0, 1] for grid in seen[:2])
    print("the two couplings of the first block are given complementary halves:", bool((covered == 1).all()))
    print("parameters of the branches:", sum(p.numel() for layer in flow.layers if isinstance(layer, Coupling)
                                            for p in layer.net.conv.parameters()))
