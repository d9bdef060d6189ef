"""Bad input gets a clear error that says what was expected and what came."""
import pytest
import torch
from torch import nn

from flow import Composite, Flow
from nice import NICE
from prior import Gaussian
from realnvp import AffineCoupling, RealNVP
from test import MLP


def test_mlp_activation_count_mismatch():
    with pytest.raises(ValueError, match=r"needs 2 activations.*got 1"):
        MLP([4, 8, 2], [nn.ReLU()])


@pytest.mark.parametrize("shapes", [[4, 0, 2], [4, -3, 2], [4, 2.5, 2]])
def test_mlp_non_positive_size(shapes):
    with pytest.raises(ValueError, match=r"positive integers"):
        MLP(shapes, [nn.ReLU(), None])


def test_mlp_activation_must_be_a_module():
    with pytest.raises(ValueError, match=r"nn.Module or None"):
        MLP([4, 2], [torch.relu])


def test_mlp_wrong_feature_size():
    with pytest.raises(ValueError, match=r"\[batch, 4\], got \[3, 5\]"):
        MLP([4, 2], [None])(torch.zeros(3, 5))


@pytest.mark.parametrize("build", [NICE.build, RealNVP.build], ids=["nice", "realnvp"])
def test_odd_dimension(build):
    with pytest.raises(ValueError, match=r"must be even; got 7"):
        build([7])


@pytest.mark.parametrize("build", [NICE.build, RealNVP.build], ids=["nice", "realnvp"])
def test_mismatched_input_shape(build):
    flow = build([1, 4, 4], blocks=1, hidden=8)
    with pytest.raises(ValueError, match=r"expects \[batch, 1, 4, 4\], got \[2, 16\]"):
        flow.logProbability(torch.zeros(2, 16))


def test_mismatched_net_counts():
    nets = lambda k: [MLP([2, 2], [None]) for _ in range(k)]
    with pytest.raises(ValueError, match=r"got 2, 2, 1, 2"):
        RealNVP(Gaussian([4]), nets(2), nets(2), nets(1), nets(2))
    with pytest.raises(ValueError, match=r"one u per v"):
        NICE(Gaussian([4]), nets(2), nets(3))


def test_coupling_wrong_feature_size_and_update():
    coupling = AffineCoupling(4, MLP([2, 2], [None]), MLP([2, 2], [None]), update="y")
    with pytest.raises(ValueError, match=r"\[batch, 4\], got \[3, 6\]"):
        coupling(torch.zeros(3, 6))
    with pytest.raises(ValueError, match=r"'x' \(first half\) or 'y'"):
        AffineCoupling(4, MLP([2, 2], [None]), MLP([2, 2], [None]), update="z")


def test_gaussian_wrong_shape():
    with pytest.raises(ValueError, match=r"\[batch, 3\], got \[2, 4\]"):
        Gaussian([3]).logProbability(torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"positive sizes"):
        Gaussian([0])


def test_flow_without_prior_has_no_density():
    with pytest.raises(RuntimeError, match=r"without a prior"):
        Composite([]).sample(2)
    with pytest.raises(NotImplementedError):
        Flow()(torch.zeros(1, 2))


@pytest.mark.parametrize("build", [NICE.build, RealNVP.build], ids=["nice", "realnvp"])
def test_an_input_of_another_dtype_than_the_model_is_a_clear_error(build):
    model = build([8], blocks=1, hidden=4).double()
    with pytest.raises(TypeError, match=r"holds torch.float64 parameters and got a torch.float32 input"):
        model(torch.randn(2, 8))
    with pytest.raises(TypeError, match=r"holds torch.float64 parameters and got a torch.float32 input"):
        model.inverse(torch.randn(2, 8))
