"""The flows main.py trains, built from a model config: a dict of plain values.

    {"model": "spline", "shape": [1, 28, 28], "alpha": 1e-6,
     "blocks": 4, "hidden": 512, "depth": 2, "actnorm": True, "shuffle": True, ...}

`model_config(args, parser)` makes one from the command line, every checkpoint stores one, and
`build_model(config)` rebuilds the same flow from it, so a checkpoint needs nothing but
itself. `alpha` is the logit squash of pixels.py: not part of the flow, but part of the
density it is trained and scored on. A class-conditional flow (--conditional,
conditional.py) has `"conditional": "prior"` (the digit moves the prior's mean) or
`"nets"` (the coupling nets see it too) as well; an unconditional one has no such key, so
its config and checkpoints are those of before conditioning existed. Likewise
`"conv_channels": C` is there only when the coupling nets have convolutional branches
(--conv-channels, convolution.py).
"""
import argparse
import math

from conditional import DIGITS
from convolution import add_image_branches
from nice import NICE
from realnvp import RealNVP
from spline import NeuralSplineFlow

IMAGE_SHAPE = (1, 28, 28)
MODELS = {"realnvp": RealNVP, "nice": NICE, "spline": NeuralSplineFlow}
SHARED_KEYS = ("model", "shape", "alpha", "blocks", "hidden", "depth")
# Each model's options beyond the shared ones, with their defaults.
BETWEEN_BLOCKS = {"actnorm": True, "shuffle": True, "mixing": False, "dropout": 0.0}
OPTIONS = {"nice": {}, "realnvp": BETWEEN_BLOCKS, "spline": {**BETWEEN_BLOCKS, "bins": 4, "bound": 16.0}}
# Blocks by default: a spline coupling's net is 3 bins - 1 times as wide at the output, so
# 4 spline blocks have about the parameters (21M) of 8 RealNVP blocks.
DEFAULT_BLOCKS = {"nice": 8, "realnvp": 8, "spline": 4}
# Where a conditional flow's digit enters: the prior's mean only, or the coupling nets as well.
CONDITIONING = ("prior", "nets")
# --conditional prior's convolutional branches by default (without --mixing, which they cannot
# take): they win back the marginal bits/dim that the classifier's margin costs the MLPs;
# docs/results.md has the runs that chose it.
CONDITIONAL_CONV_CHANNELS = 32
# Keys a config has only when they are on: configs from before them stay valid.
OPTIONAL_KEYS = ("conditional", "conv_channels")


def add_model_arguments(parser):
    """The model flags, as main.py and the benchmark take them."""
    group = parser.add_argument_group("model")
    group.add_argument("--model", choices=sorted(MODELS), default="spline",
                       help="which flow to train: spline couplings (spline.py), RealNVP's affine ones, or NICE "
                            "(default: %(default)s)")
    group.add_argument("--blocks", type=int, default=None,
                       help="number of blocks F = f0 o f1, two couplings each (default: 4 for spline, else 8)")
    group.add_argument("--couplings", type=int, dest="blocks", help=argparse.SUPPRESS)  # the old name of --blocks
    group.add_argument("--hidden", type=int, default=512, help="hidden units of each coupling MLP (default: %(default)s)")
    group.add_argument("--depth", type=int, default=2, help="hidden layers of each coupling MLP (default: %(default)s)")
    group.add_argument("--conv-channels", type=int, default=None, metavar="C",
                       help="add to every coupling net a convolutional branch of C channels that sees the "
                            "conditioning half in place on the image (convolution.py; not with --mixing; "
                            f"default: {CONDITIONAL_CONV_CHANNELS} for --conditional prior without --mixing, "
                            "else 0, none)")
    group.add_argument("--alpha", type=float, default=1e-6, help="logit squash: s = a + (1 - 2a) v (pixels.py; default: %(default)s)")
    group.add_argument("--conditional", nargs="?", const="prior", choices=CONDITIONING, metavar="WHERE",
                       help="model p(image | digit) (conditional.py), the one-hot digit moving the prior's mean "
                            "(prior, the default) or also fed to every coupling net (nets); adds the marginal "
                            "bits/dim and the accuracy of classifying digits by likelihood")
    realnvp = parser.add_argument_group("RealNVP and spline only (an error with --model nice)")
    realnvp.add_argument("--actnorm", action=argparse.BooleanOptionalAction, default=None,
                         help="an ActNorm layer before each block, initialised from data (default: on)")
    realnvp.add_argument("--shuffle", action=argparse.BooleanOptionalAction, default=None,
                         help="a fixed random permutation of the pixels between blocks (default: on)")
    realnvp.add_argument("--mixing", action=argparse.BooleanOptionalAction, default=None,
                         help="a learned invertible linear map (LU form, layers.py) between blocks; "
                              "replaces the permutation (default: off)")
    realnvp.add_argument("--dropout", type=float, default=None,
                         help="dropout probability on the coupling nets' hidden layers, in training only (default: 0)")
    spline = parser.add_argument_group("spline only (spline.py)")
    spline.add_argument("--bins", type=int, default=None, help="bins of each rational-quadratic spline (default: 4)")
    spline.add_argument("--bound", type=float, default=None,
                        help="the splines act on [-B, B] and are the identity outside (default: 16)")


def model_config(args, parser):
    """The model config from parsed flags; a bad or inapplicable flag is `parser.error` (exit 2)."""
    blocks = DEFAULT_BLOCKS[args.model] if args.blocks is None else args.blocks
    for flag, value in (("blocks", blocks), ("hidden", args.hidden), ("depth", args.depth)):
        if value <= 0:
            parser.error(f"--{flag} must be positive, got {value}")
    if not 0 < args.alpha < 0.5:
        parser.error(f"--alpha must lie in (0, 0.5), got {args.alpha}")
    config = dict(zip(SHARED_KEYS, [args.model, list(IMAGE_SHAPE), args.alpha, blocks, args.hidden, args.depth]))
    options = OPTIONS[args.model]
    flags = {name for choices in OPTIONS.values() for name in choices}
    given = {name: getattr(args, name) for name in sorted(flags) if getattr(args, name) is not None}
    for name in given:
        if name not in options:
            takers = " or ".join(model for model, choices in OPTIONS.items() if name in choices)
            parser.error(f"--{name} applies to --model {takers}, not --model {args.model}")
    config.update({**options, **given})
    if "dropout" in config and not 0 <= config["dropout"] < 1:
        parser.error(f"--dropout must lie in [0, 1), got {config['dropout']}")
    if "bins" in config and config["bins"] < 2:
        parser.error(f"--bins must be 2 or more, got {config['bins']}")
    if "bound" in config and not (math.isfinite(config["bound"]) and config["bound"] > 0):
        parser.error(f"--bound must be a positive number, got {config['bound']}")
    conv_channels = args.conv_channels
    if conv_channels is None:
        conv_channels = CONDITIONAL_CONV_CHANNELS if args.conditional == "prior" and not config.get("mixing") else 0
    if conv_channels < 0:
        parser.error(f"--conv-channels must be zero or more, got {conv_channels}")
    if conv_channels and config.get("mixing"):
        parser.error("--conv-channels needs each feature to stay a pixel, which --mixing blends: use the shuffles")
    if args.conditional:
        config["conditional"] = args.conditional
    if conv_channels:
        config["conv_channels"] = conv_channels
    return config


def build_model(config):
    """The flow a model config describes (untrained); ValueError for an incomplete config."""
    keys = set(SHARED_KEYS) | set(OPTIONS.get(config.get("model"), {}))
    if set(config) - set(OPTIONAL_KEYS) != keys:
        raise ValueError(f"a {config.get('model')} config has the keys {', '.join(sorted(keys))}; "
                         f"got {', '.join(sorted(config))}")
    # True: a checkpoint from before --conditional took a place, when the digit went into the nets.
    where = "nets" if config.get("conditional") is True else config.get("conditional")
    if where not in (None, *CONDITIONING):
        raise ValueError(f"a config's conditional is one of {', '.join(CONDITIONING)}; got {where!r}")
    options = {name: value for name, value in config.items() if name in keys - {"model", "shape", "alpha"}}
    context_features = DIGITS if where else 0  # the one-hot digit
    flow = MODELS[config["model"]].build(config["shape"], **options, context_features=context_features,
                                         nets_see_context=where == "nets")
    return add_image_branches(flow, config["conv_channels"]) if config.get("conv_channels") else flow
