"""Step 4: one check that every bijective in the project passes.

A bijective joins by adding one line to BIJECTIVES: an id, a factory for a small
instance, and the shape of one input sample. `check_bijective` runs every check on it,
with random (not identity) weights, in float64 where exactness is the point, against
independent references: autograd Jacobians and `torch.linalg.slogdet`. (The conditional
flows of conditional.py join in tests/test_conditional.py, through the same check.)
"""
import io

import pytest
import torch

from convolution import add_image_branches
from flow import Composite, DiagonalScaling, FlowOverShape, Permutation, checkerboard_order, coupling_mlp
from layers import ActNorm, LUMixing
from multiscale import ConvCouplingNet, FactorOut, MultiScaleFlow, PerPosition, squeeze_order
from nice import NICE, AdditiveCoupling
from realnvp import RealNVP, AffineCoupling
from spline import NeuralSplineFlow, SplineCoupling, rational_quadratic_spline

BIJECTIVES = [
    pytest.param(lambda: AdditiveCoupling(8, coupling_mlp(4, 16, 2), update="x"), [8], id="additive-coupling-x"),
    pytest.param(lambda: AdditiveCoupling(8, coupling_mlp(4, 16, 2), update="y"), [8], id="additive-coupling-y"),
    pytest.param(lambda: AffineCoupling(8, coupling_mlp(4, 16, 2), coupling_mlp(4, 16, 2), update="x"), [8], id="affine-coupling-x"),
    pytest.param(lambda: AffineCoupling(6, coupling_mlp(3, 16, 1), coupling_mlp(3, 16, 1), update="y"), [6], id="affine-coupling-y"),
    pytest.param(lambda: DiagonalScaling(5), [5], id="diagonal-scaling"),
    pytest.param(lambda: Permutation(checkerboard_order([1, 4, 4])), [16], id="checkerboard-permutation"),
    pytest.param(lambda: NICE.build([4], blocks=2, hidden=16), [4], id="nice-flat-4"),
    pytest.param(lambda: NICE.build([1, 4, 4], blocks=2, hidden=16), [1, 4, 4], id="nice-image-1x4x4"),
    pytest.param(lambda: RealNVP.build([10], blocks=2, hidden=16), [10], id="realnvp-flat-10"),
    pytest.param(lambda: RealNVP.build([16], blocks=3, hidden=16, depth=1), [16], id="realnvp-flat-16"),
    pytest.param(lambda: RealNVP.build([1, 4, 4], blocks=2, hidden=16), [1, 4, 4], id="realnvp-image-1x4x4"),
    pytest.param(lambda: ActNorm(6), [6], id="actnorm"),
    pytest.param(lambda: RealNVP.build([1, 4, 4], blocks=2, hidden=16, actnorm=True, shuffle=True), [1, 4, 4],
                 id="realnvp-actnorm-shuffle"),
    pytest.param(lambda: LUMixing(6), [6], id="lu-mixing"),
    pytest.param(lambda: RealNVP.build([8], blocks=2, hidden=16, actnorm=True, mixing=True), [8],
                 id="realnvp-actnorm-mixing"),
    pytest.param(lambda: SplineCoupling(8, coupling_mlp(4, 16, 2, out_features=4 * 11), update="x"), [8],
                 id="spline-coupling-x"),
    pytest.param(lambda: SplineCoupling(6, coupling_mlp(3, 16, 1, out_features=3 * 5), update="y", bins=2, bound=3.0),
                 [6], id="spline-coupling-y-2-bins"),
    pytest.param(lambda: NeuralSplineFlow.build([1, 4, 4], blocks=2, hidden=16, actnorm=True, shuffle=True), [1, 4, 4],
                 id="spline-flow-actnorm-shuffle"),
    pytest.param(lambda: NeuralSplineFlow.build([6], blocks=1, hidden=16, mixing=True), [6], id="spline-flow-mixing"),
    pytest.param(lambda: add_image_branches(NeuralSplineFlow.build([1, 4, 4], blocks=1, hidden=16, actnorm=True,
                                                                   shuffle=True), channels=4),
                 [1, 4, 4], id="spline-flow-convolutions"),
    pytest.param(lambda: add_image_branches(RealNVP.build([2, 2, 4], blocks=1, hidden=16), channels=4),
                 [2, 2, 4], id="realnvp-convolutions-2-channels"),
    pytest.param(lambda: Permutation(squeeze_order([2, 4, 6])), [48], id="squeeze"),
    pytest.param(lambda: PerPosition(ActNorm(3), [3, 2, 2]), [12], id="actnorm-per-channel"),
    pytest.param(lambda: PerPosition(LUMixing(4), [4, 3, 2]), [24], id="1x1-convolution"),
    pytest.param(lambda: SplineCoupling(16, ConvCouplingNet([2, 2, 2], 8, 2, 11), update="y"), [16],
                 id="spline-coupling-conv-net"),
    pytest.param(lambda: FactorOut(3, LUMixing(5)), [8], id="factor-out"),
    pytest.param(lambda: MultiScaleFlow.build([1, 4, 4], blocks=2, hidden=8), [1, 4, 4], id="multiscale-1x4x4"),
    pytest.param(lambda: MultiScaleFlow.build([2, 4, 8], blocks=1, hidden=8, depth=1), [2, 4, 8],
                 id="multiscale-2x4x8"),
]


def randomized(factory, seed=0, dtype=torch.float64):
    """An instance with random weights: couplings start as the identity, which would hide bugs.

    Weights are drawn from N(0, 0.5^2), those of anything with spline couplings from
    N(0, 0.1^2): at 0.5 the random splines get slopes down to 1e-7, and their inverses
    amplify round-off (float32's, or float64's through a stack) to order 1, ill-conditioned
    rather than wrong. At 0.1 a spline flow still moves points by several units, and
    test_splines_round_trip_on_bin_edges_and_in_the_tails takes steep splines on their own.
    """
    torch.manual_seed(seed)
    module = factory().to(dtype)
    std = 0.1 if any(isinstance(m, SplineCoupling) for m in module.modules()) else 0.5
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.normal_(0.0, std)
    return module


def logdet_by_autograd(module, sample):
    """log |det dz/dx| at one sample, from the full Jacobian computed by autograd."""
    def f(v):
        return module(v.unsqueeze(0))[0].flatten()

    jacobian = torch.autograd.functional.jacobian(f, sample, vectorize=True)  # [D, *shape]
    return torch.linalg.slogdet(jacobian.reshape(jacobian.shape[0], -1)).logabsdet


def layers_of(module):
    """(the layers of a bijective, the context they take, whether they take flattened samples
    [batch, n] as a FlowOverShape hands them)."""
    if isinstance(module, FlowOverShape):
        return list(module.layers), None, True
    return (list(module.layers) if isinstance(module, Composite) else [module]), None, False


def check_bijective(factory, shape, layers_of=layers_of, frozen=()):
    """Every check a bijective must pass; `layers_of(module)` gives its layers for the
    bfloat16 check, and parameters named in `frozen` need no gradient."""
    module = randomized(factory)

    # The round trip, both ways; random weights move the points.
    x = torch.randn(5, *shape, dtype=torch.float64)
    z, logdet = module(x)
    assert (module.inverse(z)[0] - x).abs().max() <= 1e-10
    assert (module(module.inverse(x)[0])[0] - x).abs().max() <= 1e-10
    assert (z - x).abs().max() > 1e-3 or isinstance(module, Permutation), "random weights should move points"

    # log|det dz/dx| against autograd's Jacobian, and the inverse's log-det against minus the forward one.
    _, inverse_logdet = module.inverse(z)
    assert logdet.shape == (5,) and z.shape == x.shape
    assert abs(logdet[0] - logdet_by_autograd(module, x[0])) <= 1e-8
    assert (inverse_logdet + logdet).abs().max() <= 1e-10
    # The same through torch.func: jacrev over a vmap of samples, as per-sample Jacobians are taken.
    jacobians = torch.func.vmap(torch.func.jacrev(lambda v: module(v.unsqueeze(0))[0].flatten()))(x[:2])
    torch.testing.assert_close(torch.linalg.slogdet(jacobians.reshape(2, x[0].numel(), -1)).logabsdet,
                               logdet[:2], rtol=0, atol=1e-8)

    # Every parameter gets a finite, nonzero gradient.
    x.requires_grad_(True)
    z, logdet = module(x)
    (z.pow(2).sum() - logdet.sum()).backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().max() > 0
    for name, parameter in module.named_parameters():
        if name in frozen:
            continue
        assert parameter.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(parameter.grad).all() and parameter.grad.abs().max() > 0, f"{name}: {parameter.grad}"

    # A state_dict saved and loaded into another instance gives the same outputs.
    buffer = io.BytesIO()
    torch.save(module.state_dict(), buffer)
    buffer.seek(0)
    restored = randomized(factory, seed=2)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    x = x.detach()
    for got, expected in zip(restored(x), module(x)):
        assert torch.equal(got, expected)

    # float32 works too, with finite outputs in that dtype.
    module32 = randomized(factory, dtype=torch.float32)
    x32 = x.float()
    outputs = [*module32(x32), *module32.inverse(module32(x32)[0])]
    assert all(output.dtype == torch.float32 and torch.isfinite(output).all() for output in outputs)

    # Everything follows the module's device: on "meta", a tensor made on the CPU would clash.
    meta = factory().to("meta")
    z, logdet = meta(torch.empty(2, *shape, device="meta"))
    assert {t.device.type for t in (z, logdet, *meta.inverse(z))} == {"meta"}

    # Mixed precision runs only the coupling nets in bfloat16. Each layer's inverse sees the
    # conditioning half its forward saw, so the nets give the same outputs and the layer's
    # round trip stays exact to float32, with opposite log-dets. (Through a whole stack, the
    # round-off of one layer's inverse can tip an input of an earlier net to the
    # neighbouring bfloat16 value, so the stack is checked layer by layer.)
    layers, context, flatten = layers_of(module32)
    h = torch.randn(6, *shape).flatten(1) if flatten else torch.randn(6, *shape)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for layer in layers:
            out, logdet = layer(h, None if context is None else context.expand(len(h), -1))
            h_back, inverse_logdet = layer.inverse(out, None if context is None else context.expand(len(h), -1))
            assert out.dtype == h_back.dtype == logdet.dtype == torch.float32
            # float32 round-off grows with the magnitudes the random weights reach.
            assert (h_back - h).abs().max() <= 1e-5 * (1 + out.abs().max()), type(layer).__name__
            assert (logdet + inverse_logdet).abs().max() <= 1e-4 * (1 + logdet.abs().max())
            h = out


@pytest.mark.parametrize("factory, shape", BIJECTIVES)
def test_bijective(factory, shape):
    check_bijective(factory, shape)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("factory, shape", BIJECTIVES)
def test_runs_on_cuda(factory, shape):
    module = randomized(factory).cuda()
    x = torch.randn(4, *shape, dtype=torch.float64, device="cuda")
    assert (module.inverse(module(x)[0])[0] - x).abs().max() <= 1e-10


def test_permutation_gradient_matches_plain_indexing():
    # The hand-written backward of Permutation against autograd through ordinary indexing.
    torch.manual_seed(0)
    permutation = Permutation(torch.randperm(12))
    x = torch.randn(5, 12, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(5, 12, dtype=torch.float64)
    for direction, order in ((permutation, permutation.order), (permutation.inverse, permutation.inverse_order)):
        ours = torch.autograd.grad((direction(x)[0] * weights).sum(), x)[0]
        reference = torch.autograd.grad((x[:, order] * weights).sum(), x)[0]
        assert torch.equal(ours, reference)


def test_splines_round_trip_on_bin_edges_and_in_the_tails():
    """Inputs on the knots, on the bounds and far outside them: finite, exact round trips,
    the identity with log-det 0 outside [-B, B], and log-dets equal to autograd's slope."""
    torch.manual_seed(0)
    bound, bins, n = 3.0, 4, 9
    edges = torch.linspace(-bound, bound, bins + 1, dtype=torch.float64)  # equal widths: the knots
    h = torch.cat([edges, torch.tensor([-1e4, -bound - 1e-9, bound + 1e-9, 1e4], dtype=torch.float64)])
    h = h.expand(n, -1).clone().requires_grad_(True)  # [n, 9]
    shape = (n, h.shape[1])
    widths = torch.zeros(*shape, bins, dtype=torch.float64)  # softmax(0): equal bins
    heights = 2 * torch.randn(*shape, bins, dtype=torch.float64)
    derivatives = 2 * torch.randn(*shape, bins - 1, dtype=torch.float64)
    out, log_slope = rational_quadratic_spline(h, widths, heights, derivatives, bound)
    back, inverse_log_slope = rational_quadratic_spline(out, widths, heights, derivatives, bound, inverse=True)
    assert torch.isfinite(out).all() and torch.isfinite(log_slope).all() and torch.isfinite(back).all()
    assert (back - h).abs().max() <= 1e-10
    assert (log_slope + inverse_log_slope).abs().max() <= 1e-10
    tails = h.abs() > bound
    assert torch.equal(out[tails], h[tails]) and not log_slope[tails].any()
    assert torch.allclose(out[:, [0, bins]], h[:, [0, bins]])  # the ends of [-B, B] stay put
    slope = torch.autograd.grad(out.sum(), h)[0]  # elementwise map: the Jacobian's diagonal
    torch.testing.assert_close(log_slope, slope.log(), rtol=0, atol=1e-9)
