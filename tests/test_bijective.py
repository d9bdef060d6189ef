"""Step 4: one check that every bijective in the project passes.

A bijective joins by adding one line to BIJECTIVES: an id, a factory for a small
instance, and the shape of one input sample. Each is checked with random (not identity)
weights, in float64 where exactness is the point, against independent references:
autograd Jacobians and `torch.linalg.slogdet`. A conditional flow joins with its context
held fixed (`GivenContext`): for each context it must be a bijection of x on its own.
"""
import io

import pytest
import torch

from conditional import DIGITS, label_context
from convolution import add_image_branches
from flow import Composite, CouplingFlow, DiagonalScaling, Permutation, checkerboard_order, coupling_mlp
from layers import ActNorm, LUMixing
from nice import NICE, AdditiveCoupling
from realnvp import RealNVP, AffineCoupling
from spline import NeuralSplineFlow, SplineCoupling, rational_quadratic_spline


class GivenContext(torch.nn.Module):
    """A conditional flow with its context fixed to one row: x -> z for that context alone."""

    def __init__(self, flow, context):
        super().__init__()
        self.flow = flow
        self.register_buffer("context", torch.tensor(context, dtype=torch.float32).view(1, -1))

    def forward(self, x):
        return self.flow(x, self.context.expand(len(x), -1))

    def inverse(self, z):
        return self.flow.inverse(z, self.context.expand(len(z), -1))


CONTEXT = [0.5, -1.0, 2.0]  # any vector can be a context; main.py's is a one-hot digit
DIGIT_3 = label_context(torch.tensor([3])).tolist()

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
    pytest.param(lambda: GivenContext(AdditiveCoupling(8, coupling_mlp(4 + 3, 16, 2, out_features=4), "x",
                                                       context_features=3), CONTEXT), [8], id="conditional-additive"),
    pytest.param(lambda: GivenContext(AffineCoupling(6, coupling_mlp(3 + 3, 16, 1, out_features=3),
                                                     coupling_mlp(3 + 3, 16, 1, out_features=3), "y",
                                                     context_features=3), CONTEXT), [6], id="conditional-affine"),
    pytest.param(lambda: GivenContext(SplineCoupling(8, coupling_mlp(4 + 3, 16, 2, out_features=4 * 11), "x",
                                                     context_features=3), CONTEXT), [8], id="conditional-spline"),
    pytest.param(lambda: GivenContext(RealNVP.build([1, 4, 4], blocks=2, hidden=16, actnorm=True, shuffle=True,
                                                    context_features=DIGITS), DIGIT_3),
                 [1, 4, 4], id="conditional-realnvp-actnorm-shuffle"),
    pytest.param(lambda: GivenContext(NeuralSplineFlow.build([1, 4, 4], blocks=2, hidden=16, actnorm=True, mixing=True,
                                                             context_features=DIGITS), DIGIT_3),
                 [1, 4, 4], id="conditional-spline-flow-mixing"),
    pytest.param(lambda: add_image_branches(NeuralSplineFlow.build([1, 4, 4], blocks=2, hidden=16, actnorm=True,
                                                                   shuffle=True), channels=4),
                 [1, 4, 4], id="spline-flow-convolutions"),
    pytest.param(lambda: GivenContext(add_image_branches(RealNVP.build([2, 4, 6], blocks=1, hidden=16,
                                                                       context_features=3), channels=4), CONTEXT),
                 [2, 4, 6], id="conditional-realnvp-convolutions"),
    # Dropout is a training-time regulariser; in eval mode the flow is a deterministic bijection.
    pytest.param(lambda: RealNVP.build([1, 4, 4], blocks=2, hidden=16, dropout=0.5).eval(), [1, 4, 4],
                 id="realnvp-dropout-eval"),
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

    jacobian = torch.autograd.functional.jacobian(f, sample)  # [D, *shape]
    return torch.linalg.slogdet(jacobian.reshape(jacobian.shape[0], -1)).logabsdet


@pytest.mark.parametrize("factory, shape", BIJECTIVES)
def test_round_trip_both_ways(factory, shape):
    module = randomized(factory)
    x = torch.randn(7, *shape, dtype=torch.float64)
    z, _ = module(x)
    assert (module.inverse(z)[0] - x).abs().max() <= 1e-10
    assert (module(module.inverse(x)[0])[0] - x).abs().max() <= 1e-10
    assert (z - x).abs().max() > 1e-3 or isinstance(module, Permutation), "random weights should move points"


@pytest.mark.parametrize("factory, shape", BIJECTIVES)
def test_logdet_matches_autograd_jacobian(factory, shape):
    module = randomized(factory)
    x = torch.randn(3, *shape, dtype=torch.float64)
    z, logdet = module(x)
    _, inverse_logdet = module.inverse(z)
    assert logdet.shape == (3,)
    for i in range(3):
        assert abs(logdet[i] - logdet_by_autograd(module, x[i])) <= 1e-8
        # the inverse's log-det is log|det dx/dz| = -log|det dz/dx| at the same point
        assert abs(inverse_logdet[i] + logdet[i]) <= 1e-10


@pytest.mark.parametrize("factory, shape", BIJECTIVES)
def test_logdet_matches_torch_func_jacobian(factory, shape):
    """The same through torch.func: jacrev over a vmap of samples, as per-sample Jacobians are taken."""
    module = randomized(factory)
    x = torch.randn(3, *shape, dtype=torch.float64)
    _, logdet = module(x)
    jacobians = torch.func.vmap(torch.func.jacrev(lambda v: module(v.unsqueeze(0))[0].flatten()))(x)
    slogdet = torch.linalg.slogdet(jacobians.reshape(3, x[0].numel(), -1)).logabsdet
    torch.testing.assert_close(slogdet, logdet, rtol=0, atol=1e-8)


@pytest.mark.parametrize("factory, shape", BIJECTIVES)
def test_every_parameter_gets_a_gradient(factory, shape):
    module = randomized(factory)
    x = torch.randn(5, *shape, dtype=torch.float64, requires_grad=True)
    z, logdet = module(x)
    (z.pow(2).sum() - logdet.sum()).backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().max() > 0
    for name, parameter in module.named_parameters():
        if name.startswith("flow.prior."):  # a conditional prior's means: not part of the bijection
            continue
        assert parameter.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(parameter.grad).all(), f"{name} has a non-finite gradient"
        assert parameter.grad.abs().max() > 0, f"{name} has an all-zero gradient"


@pytest.mark.parametrize("factory, shape", BIJECTIVES)
def test_state_dict_round_trip(factory, shape):
    original = randomized(factory, seed=1)
    buffer = io.BytesIO()
    torch.save(original.state_dict(), buffer)
    buffer.seek(0)
    restored = randomized(factory, seed=2)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    x = torch.randn(4, *shape, dtype=torch.float64)
    for got, expected in zip(restored(x), original(x)):
        assert torch.equal(got, expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("factory, shape", BIJECTIVES)
def test_runs_in_dtype_with_finite_outputs(factory, shape, dtype):
    module = randomized(factory, dtype=dtype)
    x = torch.randn(6, *shape, dtype=dtype)
    z, logdet = module(x)
    x_back, inverse_logdet = module.inverse(z)
    for output in (z, logdet, x_back, inverse_logdet):
        assert output.dtype == dtype
        assert torch.isfinite(output).all()
    assert z.shape == x.shape and logdet.shape == (6,)


@pytest.mark.parametrize("factory, shape", BIJECTIVES)
def test_follows_the_module_device(factory, shape):
    # On the meta device any tensor made on the CPU inside forward/inverse would clash.
    module = factory().to("meta")
    x = torch.empty(2, *shape, device="meta")
    z, logdet = module(x)
    x_back, inverse_logdet = module.inverse(z)
    assert {t.device.type for t in (z, logdet, x_back, inverse_logdet)} == {"meta"}


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


@pytest.mark.parametrize("factory, shape", BIJECTIVES)
def test_each_layer_stays_exact_with_bfloat16_nets(factory, shape):
    # Mixed precision runs only the coupling nets in bfloat16. Each layer's inverse sees
    # the conditioning half its forward saw, so the nets give the same outputs and the
    # layer's round trip stays exact to float32, with opposite log-dets. (Through a whole
    # stack, the round-off of one layer's inverse can tip an input of an earlier net to
    # the neighbouring bfloat16 value, so the stack is checked layer by layer.)
    module = randomized(factory, dtype=torch.float32)
    flow, context = (module.flow, module.context.expand(6, -1)) if isinstance(module, GivenContext) else (module, None)
    h = torch.randn(6, *shape)
    if isinstance(flow, CouplingFlow):  # its layers work on flattened samples
        h = h.flatten(1)
    layers = flow.layers if isinstance(flow, Composite) else [flow]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for layer in layers:  # the layers without nets take the context and ignore it
            out, logdet = layer(h, context)
            h_back, inverse_logdet = layer.inverse(out, context)
            assert out.dtype == h_back.dtype == logdet.dtype == torch.float32
            # float32 round-off grows with the magnitudes the random weights reach.
            assert (h_back - h).abs().max() <= 1e-5 * (1 + out.abs().max()), type(layer).__name__
            assert (logdet + inverse_logdet).abs().max() <= 1e-4 * (1 + logdet.abs().max())
            h = out


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


def test_the_context_changes_the_density_and_must_fit():
    flow = randomized(lambda: RealNVP.build([6], blocks=2, hidden=16, context_features=DIGITS))
    x = torch.randn(5, 6, dtype=torch.float64)
    three, seven = label_context(torch.full((5,), 3)), label_context(torch.full((5,), 7))
    assert (flow.logProbability(x, three) - flow.logProbability(x, seven)).abs().min() > 1e-3
    # Each context has its own bijection: a sample drawn for 7 maps back to the prior's draw under 7 only.
    torch.manual_seed(1)
    z = torch.randn(5, 6, dtype=torch.float64)
    x_seven, _ = flow.inverse(z, seven)
    assert (flow(x_seven, seven)[0] - z).abs().max() <= 1e-10
    assert (flow(x_seven, three)[0] - z).abs().max() > 1e-3
    assert flow.sample(5, context=seven).shape == (5, 6)
    with pytest.raises(ValueError, match=r"is conditional: give a context \[batch, 10\]"):
        flow(x)
    with pytest.raises(ValueError, match=r"expects a context \[5, 10\], got \[5, 3\]"):
        flow(x, torch.zeros(5, 3))
    with pytest.raises(ValueError, match="takes no context"):
        RealNVP.build([6], blocks=1, hidden=8).double()(x, three)
