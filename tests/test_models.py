"""models.py: the model flags, the config they make, and the flow built from it."""
import argparse

import pytest
from torch import nn

from convolution import ImageCouplingNet
from flow import Coupling
from models import CONDITIONAL_CONV_CHANNELS, add_model_arguments, build_model, model_config
from nice import NICE
from realnvp import RealNVP


def config_from(*flags):
    parser = argparse.ArgumentParser()
    add_model_arguments(parser)
    return model_config(parser.parse_args(flags), parser)


def test_defaults_are_spline_couplings_with_actnorm_and_shuffle():
    config = config_from()
    assert config == {"model": "spline", "shape": [1, 28, 28], "alpha": 1e-6, "blocks": 4, "hidden": 512,
                      "depth": 2, "actnorm": True, "shuffle": True, "mixing": False, "dropout": 0.0,
                      "bins": 4, "bound": 16.0}
    assert config_from("--model", "realnvp")["blocks"] == 8


def test_blocks_count_blocks_of_two_couplings_and_the_old_name_still_works():
    flow = build_model(config_from("--model", "realnvp", "--blocks", "3", "--hidden", "8", "--no-actnorm",
                                   "--no-shuffle"))
    assert isinstance(flow, RealNVP) and len(flow.layers) == 2 * 3 + 2  # couplings, and the checkerboard's two
    assert config_from("--couplings", "3") == config_from("--blocks", "3")


def test_nice_config_holds_only_what_nice_takes():
    config = config_from("--model", "nice", "--blocks", "2", "--hidden", "8")
    assert set(config) == {"model", "shape", "alpha", "blocks", "hidden", "depth"}
    assert isinstance(build_model(config), NICE)


@pytest.mark.parametrize("flags, message", [
    (["--model", "nice", "--mixing"], "--mixing applies to --model realnvp or spline, not --model nice"),
    (["--model", "nice", "--no-actnorm"], "--actnorm applies to --model realnvp or spline"),
    (["--model", "nice", "--dropout", "0.1"], "--dropout applies to --model realnvp or spline"),
    (["--model", "realnvp", "--bins", "8"], "--bins applies to --model spline, not --model realnvp"),
    (["--model", "spline", "--bins", "1"], "--bins must be 2 or more"),
    (["--model", "spline", "--bound", "inf"], "--bound must be a positive number"),
    (["--blocks", "0"], "--blocks must be positive"),
    (["--alpha", "nan"], "--alpha must lie in (0, 0.5)"),
    (["--dropout", "1"], "--dropout must lie in [0, 1)"),
    (["--conv-channels", "-1"], "--conv-channels must be zero or more"),
    (["--conv-channels", "8", "--mixing"], "--conv-channels needs each feature to stay a pixel"),
])
def test_a_flag_that_does_not_apply_or_is_out_of_range_is_a_one_line_error(flags, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        config_from(*flags)
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert message in error[-1]


@pytest.mark.parametrize("model", ["spline", "realnvp", "nice"])
@pytest.mark.parametrize("where, nets_context", [("prior", 0), ("nets", 10)])
def test_conditional_adds_one_key_and_feeds_the_digit_where_it_says(model, where, nets_context):
    unconditional = config_from("--model", model, "--blocks", "1", "--hidden", "8")
    conditional = config_from("--model", model, "--blocks", "1", "--hidden", "8", "--conditional", where)
    branches = {"conv_channels": CONDITIONAL_CONV_CHANNELS} if where == "prior" else {}  # the prior's default
    assert conditional == {**unconditional, "conditional": where, **branches}  # unconditional configs are as they were
    flow = build_model(conditional)
    assert flow.context_features == 10 and build_model(unconditional).context_features == 0
    assert flow.prior.context_features == 10 and flow.couplings_see_context == (where == "nets")
    couplings = [layer for layer in flow.layers if isinstance(layer, Coupling)]
    assert couplings and all(layer.context_features == nets_context for layer in couplings)
    first_layers = [next(m for m in net.modules() if isinstance(m, nn.Linear)) for layer in couplings
                    for net in layer.children()]
    assert all(linear.in_features == 392 + nets_context for linear in first_layers)


def test_conditional_alone_puts_the_digit_in_the_prior_and_a_bad_placement_is_refused():
    assert config_from("--conditional")["conditional"] == "prior"
    with pytest.raises(ValueError, match="conditional is one of prior, nets; got 'everywhere'"):
        build_model({**config_from("--conditional"), "conditional": "everywhere"})
    older = build_model({**config_from("--conditional"), "conditional": True})  # a checkpoint of before WHERE
    assert older.couplings_see_context and older.context_features == 10


@pytest.mark.parametrize("model, nets_per_coupling", [("spline", 1), ("realnvp", 2), ("nice", 1)])
def test_conv_channels_add_one_key_and_a_branch_to_every_coupling_net(model, nets_per_coupling):
    plain = config_from("--model", model, "--blocks", "1", "--hidden", "8")
    config = config_from("--model", model, "--blocks", "1", "--hidden", "8", "--conv-channels", "4")
    assert config == {**plain, "conv_channels": 4}  # configs without branches are as they were
    nets = [net for layer in build_model(config).layers if isinstance(layer, Coupling) for net in layer.children()]
    assert len(nets) == 2 * nets_per_coupling and all(isinstance(net, ImageCouplingNet) for net in nets)
    assert all(net.conv[0].out_channels == 4 for net in nets)
    assert not any(isinstance(m, ImageCouplingNet) for m in build_model(plain).modules())
