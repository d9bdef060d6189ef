"""The flows main.py trains, built from a model config: a dict of plain values.

    {"model": "spline", "shape": [1, 28, 28], "alpha": 1e-6, "blocks": 4, "hidden": 512,
     "conv_channels": 0, "conditional": None}

`model_config(...)` makes one from main.py's flags, every checkpoint stores one, and
`build_model(config)` rebuilds the same flow from it, so a checkpoint needs nothing but
itself. `alpha` is the logit squash of pixels.py: not part of the flow, but part of the
density it is trained and scored on. `conv_channels` > 0 gives every coupling MLP a
convolutional branch (convolution.py); `conditional` is None, or where the digit enters a
flow of p(image | digit) (conditional.py): "prior", or "nets" (the coupling nets and the prior).

Each model is trained with its own fixed settings (`SETTINGS`), which docs/results.md measures.
"""
from conditional import DIGITS, RECIPES, ConditionalFlow
from convolution import add_image_branches
from flow import CouplingFlow
from multiscale import MultiScaleFlow
from nice import NICE
from realnvp import RealNVP
from spline import NeuralSplineFlow

IMAGE_SHAPE = (1, 28, 28)
ALPHA = 1e-6  # pixels.py's squash: a tiny margin keeps the logit finite
DEPTH = 2  # hidden layers of every coupling MLP
MODELS = {"spline": NeuralSplineFlow, "realnvp": RealNVP, "nice": NICE, "multiscale": MultiScaleFlow}
# ActNorm before each block and a fixed permutation between blocks, with 4 spline bins on [-16, 16].
SETTINGS = {"spline": {"actnorm": True, "shuffle": True, "bins": 4, "bound": 16.0},
            "realnvp": {"actnorm": True, "shuffle": True},
            "nice": {},
            "multiscale": {"bins": 4, "bound": 16.0}}
# Each model's coupling nets' width, where --hidden is not given: hidden units of an MLP, channels of a conv net.
WIDTHS = {"spline": 512, "realnvp": 512, "nice": 512, "multiscale": 64}
KEYS = ("model", "shape", "alpha", "blocks", "hidden", "conv_channels", "conditional")


def has_mlp_nets(model):
    """Whether the model's coupling nets are MLPs (a CouplingFlow's), which --conv-channels can give branches."""
    return issubclass(MODELS[model], CouplingFlow)


def model_config(model, blocks, hidden=None, conv_channels=0, conditional=None):
    """The config of a flow over MNIST's images (hidden None: the model's width, WIDTHS)."""
    return dict(zip(KEYS, [model, list(IMAGE_SHAPE), ALPHA, blocks, WIDTHS[model] if hidden is None else hidden, conv_channels,
                           conditional]))


def build_model(config):
    """The flow a model config describes (untrained); ValueError for a config that describes none."""
    if not isinstance(config, dict) or sorted(config) != sorted(KEYS):
        got = ", ".join(sorted(config)) if isinstance(config, dict) else repr(config)
        raise ValueError(f"a model config has the keys {', '.join(sorted(KEYS))}; got {got}")
    if config["model"] not in MODELS or config["conditional"] not in (None, *RECIPES):
        raise ValueError(f"no model {config['model']!r} conditioned in {config['conditional']!r}")
    where = config["conditional"]
    flow = MODELS[config["model"]].build(config["shape"], config["blocks"], config["hidden"], DEPTH,
                                         context_features=DIGITS if where == "nets" else 0,
                                         **SETTINGS[config["model"]])
    if config["conv_channels"]:
        flow = add_image_branches(flow, config["conv_channels"])
    return ConditionalFlow(flow, DIGITS, nets_see_context=where == "nets") if where else flow
