"""models.py and command_line.py: the flags, the config they make, and the flow built from it."""
import pytest
from torch import nn

from command_line import parse_args
from conditional import ConditionalFlow
from convolution import ImageCouplingNet
from flow import Coupling
from layers import ActNorm
from models import build_model
from multiscale import MultiScaleFlow
from nice import NICE
from realnvp import RealNVP
from spline import NeuralSplineFlow, SplineCoupling


def config_from(*flags):
    return parse_args(list(flags)).model_config


def test_the_default_is_the_multiscale_flow_with_four_steps_a_scale_and_64_channels():
    config = config_from()
    assert config == {"model": "multiscale", "shape": [1, 28, 28], "alpha": 1e-6, "blocks": 4, "hidden": 64,
                      "conv_channels": 0, "conditional": None}
    flow = build_model(config)
    assert isinstance(flow, MultiScaleFlow) and sum(isinstance(m, SplineCoupling) for m in flow.modules()) == 8
    assert config_from("--conditional")["conv_channels"] == 0  # the recipe's branches are for MLP nets


def test_spline_is_four_blocks_of_spline_couplings_with_actnorm_and_shuffles():
    config = config_from("--model", "spline")
    assert config == {"model": "spline", "shape": [1, 28, 28], "alpha": 1e-6, "blocks": 4, "hidden": 512,
                      "conv_channels": 0, "conditional": None}
    flow = build_model(config_from("--model", "spline", "--blocks", "3", "--hidden", "8"))
    assert isinstance(flow, NeuralSplineFlow) and sum(isinstance(m, ActNorm) for m in flow.layers) == 3
    assert len(flow.layers) == 3 * 3 + 2 + 2  # ActNorm and two couplings a block, two shuffles, the checkerboard's two


@pytest.mark.parametrize("model, cls, nets_per_coupling", [("spline", NeuralSplineFlow, 1), ("realnvp", RealNVP, 2),
                                                            ("nice", NICE, 1)])
def test_each_model_builds_and_conv_channels_give_every_coupling_net_a_branch(model, cls, nets_per_coupling):
    plain = config_from("--model", model, "--blocks", "1", "--hidden", "8")
    assert isinstance(build_model(plain), cls)
    assert not any(isinstance(m, ImageCouplingNet) for m in build_model(plain).modules())
    config = config_from("--model", model, "--blocks", "1", "--hidden", "8", "--conv-channels", "4")
    assert config == {**plain, "conv_channels": 4}
    nets = [net for layer in build_model(config).layers if isinstance(layer, Coupling) for net in layer.children()]
    assert len(nets) == 2 * nets_per_coupling and all(isinstance(net, ImageCouplingNet) for net in nets)
    assert all(net.conv[0].out_channels == 4 for net in nets)


@pytest.mark.parametrize("where, nets_context, branches", [("prior", 0, 32), ("nets", 10, 0)])
def test_conditional_wraps_the_flow_and_feeds_the_digit_where_its_recipe_says(where, nets_context, branches):
    config = config_from("--model", "spline", "--blocks", "1", "--hidden", "8", "--conditional", where)
    assert config["conditional"] == where and config["conv_channels"] == branches  # the recipe's branches
    flow = build_model(config)
    assert isinstance(flow, ConditionalFlow) and flow.prior.context_features == 10
    assert flow.nets_see_context == (where == "nets") and flow.flow.prior is None
    first_linears = [next(m for m in net.modules() if isinstance(m, nn.Linear)) for layer in flow.flow.layers
                     if isinstance(layer, Coupling) for net in layer.children()]
    assert first_linears and all(linear.in_features == 392 + nets_context for linear in first_linears)


def test_a_config_that_describes_no_model_is_refused():
    config = config_from("--blocks", "1", "--hidden", "8")
    with pytest.raises(ValueError, match="no model 'multiscale' conditioned in 'everywhere'"):
        build_model({**config, "conditional": "everywhere"})
    with pytest.raises(ValueError, match="a model config has the keys"):
        build_model({**config, "depth": 2})
