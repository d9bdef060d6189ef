"""The convolutional branches of convolution.py see each pixel at its place.

The flows' round trips and log-dets with branches are in test_bijective.py. Here the
reference is the image itself: at the start every coupling is the identity, so the
features a coupling gets are the image's pixel values, reordered, and each one's pixel
can be found by its value, without the bookkeeping of add_image_branches.
"""
import pytest
import torch

from convolution import add_image_branches
from flow import Coupling
from realnvp import RealNVP
from spline import NeuralSplineFlow


def coupling_inputs(flow, x, context=None):
    """The input [B, n] of each coupling of `flow` on x, in order."""
    seen = []
    hooks = [layer.register_forward_pre_hook(lambda layer, inputs: seen.append(inputs[0].detach()))
             for layer in flow.layers if isinstance(layer, Coupling)]
    flow(x, context)
    for hook in hooks:
        hook.remove()
    return seen


def halves(layer, inputs):
    """(conditioning half, updated half) of a coupling's input."""
    first, second = inputs.split(layer.half, dim=1)
    return (first, second) if layer.update == "y" else (second, first)


def pixels_of(values, image):
    """The pixel index of `image` [n] (distinct values) that each of `values` [m] is: the
    nearest, as identity couplings may round a value off."""
    return (values.unsqueeze(1) - image.unsqueeze(0)).abs().argmin(1)


def test_the_grid_holds_the_conditioning_pixels_in_place_and_hides_the_others():
    torch.manual_seed(0)
    flow = add_image_branches(RealNVP.build([2, 4, 6], blocks=3, hidden=8, shuffle=True, context_features=3), channels=4)
    x, context = torch.randn(5, 2, 4, 6), torch.randn(5, 3)
    couplings, given_by_coupling = [layer for layer in flow.layers if isinstance(layer, Coupling)], []
    for layer, inputs in zip(couplings, coupling_inputs(flow, x, context)):
        condition, _ = halves(layer, inputs)
        given = torch.zeros(48)
        given[pixels_of(condition[0], x[0].flatten())] = 1  # the pixels this coupling is given
        for net in (layer.shift_net, layer.log_scale_net):
            grid = net.grid(torch.cat([condition, context], dim=1))  # [5, 2 + 2 + 3, 4, 6]
            assert torch.equal(grid[:, 2:4], given.view(1, 2, 4, 6).expand(5, -1, -1, -1))  # the mask
            assert torch.equal(grid[:, :2], x * given.view(1, 2, 4, 6))  # values in place, the others 0
            assert torch.equal(grid[:, 4:], context[:, :, None, None].expand(-1, -1, 4, 6))
        given_by_coupling.append(given)
    for first, second in zip(given_by_coupling[::2], given_by_coupling[1::2]):  # a block's two couplings
        assert torch.equal(first + second, torch.ones(48))  # are given complementary halves


def test_each_updated_pixel_is_read_from_the_convolutions_at_its_place():
    # Three 3 x 3 convolutions over 2 x 2 blocks: an output reads the blocks up to 3 away from its own.
    torch.manual_seed(0)
    flow = add_image_branches(NeuralSplineFlow.build([1, 24, 24], blocks=2, hidden=8, shuffle=True), channels=8)
    flow = flow.double()  # the spline's identity rounds a value off by 1e-16, far less than two pixels differ
    x = torch.randn(1, 1, 24, 24, dtype=torch.float64)
    couplings = [layer for layer in flow.layers if isinstance(layer, Coupling)]
    layer, inputs = couplings[2], coupling_inputs(flow, x)[2]  # the second block's first: after a shuffle
    net = layer.net
    with torch.no_grad():
        for parameter in net.conv.parameters():
            parameter.normal_(0.0, 0.5)
    condition, updated = halves(layer, inputs)
    condition_pixels, updated_pixels = pixels_of(condition[0], x.flatten()), pixels_of(updated[0], x.flatten())
    block = lambda pixels: torch.stack([pixels // 24 // 2, pixels % 24 // 2], dim=1)  # [m, 2]: row, column of its block
    for feature in (0, 100, 287):
        given = condition.clone().requires_grad_()
        net(given).view(1, layer.half, -1)[0, feature].sum().backward()
        apart = (block(condition_pixels) - block(updated_pixels[feature : feature + 1])).abs().amax(1)
        read = given.grad[0] != 0
        assert read.any() and (apart[read] <= 3).all()  # nothing from farther than the convolutions reach
        assert read[apart <= 1].all()  # and everything given close by


@pytest.mark.parametrize("build, message", [
    (lambda: RealNVP.build([16], blocks=1, hidden=8), "need images"),
    (lambda: RealNVP.build([1, 4, 5], blocks=1, hidden=8), "H and W must be even"),
    (lambda: RealNVP.build([1, 4, 4], blocks=2, hidden=8, mixing=True), "LUMixing blends them"),
    (lambda: add_image_branches(RealNVP.build([1, 4, 4], blocks=1, hidden=8), 4), "have convolutional branches already"),
])
def test_a_flow_that_cannot_take_branches_is_refused_and_left_as_it_was(build, message):
    flow = build()
    before = {name: tensor.clone() for name, tensor in flow.state_dict().items()}
    with pytest.raises(ValueError, match=message):
        add_image_branches(flow, 4)
    after = flow.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[name], after[name]) for name in before)


def test_branches_join_a_flow_on_its_device_and_in_its_dtype():
    flow = add_image_branches(RealNVP.build([1, 4, 4], blocks=1, hidden=8).double(), 4)
    assert {p.dtype for p in flow.parameters()} == {torch.float64}
    device = "cuda" if torch.cuda.is_available() else "cpu"
    on_device = add_image_branches(RealNVP.build([1, 4, 4], blocks=1, hidden=8).to(device), 4)
    assert {p.device.type for p in on_device.parameters()} == {torch.device(device).type}
    z, logdet = on_device(torch.randn(2, 1, 4, 4, device=device))
    assert z.device.type == logdet.device.type == torch.device(device).type
