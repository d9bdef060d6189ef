"""The command line of main.py: its flags, their defaults, their checks, and the line that
says what a run was asked to train.

The model's flags come from models.py and the training step's from training.py, so the
benchmark takes the same ones; a bad value or combination is `parser.error`: one line, exit 2.
"""
import argparse
import math

import torch

import distributed
from models import IMAGE_SHAPE, add_model_arguments, model_config
from training import add_step_arguments, check_step_arguments

# --conditional prior's defaults for the four flags below (and models.py's for its convolutional
# branches), chosen by the runs in docs/results.md; --conditional nets (and an unconditional flow)
# keep the neutral values, 0, 0, 1 and 0.
CLASSIFIER_WEIGHT = 6.0
CLASSIFIER_MARGIN = 30.0
CLASS_SPREAD = 1.5
TRANSLATE = 1


class OneLineErrors(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line, like main.py's others, instead of the usage first."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}; python {self.prog} --help lists the flags\n")


def parse_args(argv=None):
    """main.py's flags from `argv` (default: sys.argv), checked; `args.model_config` is the model's config."""
    parser = OneLineErrors(
        prog="main.py",
        description="Train a normalizing flow (RealNVP, NICE or spline couplings) on MNIST and report test bits/dim.")
    add_model_arguments(parser)
    training = add_step_arguments(parser)  # the step's flags: --batch-size, --lr, --precision, ...
    training.add_argument("--epochs", type=int, default=12, help="passes over the training images (default: %(default)s)")
    training.add_argument("--time-budget", type=float, default=None, metavar="SECONDS",
                          help="stop training once this much wall time has passed (the evaluations between epochs "
                               "included), then evaluate and save as at an epoch's end")
    training.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    training.add_argument("--translate", type=int, default=None, metavar="PIXELS",
                          help="augment: move each training image, each time it is trained on, by a random whole "
                               "number of pixels from -PIXELS to PIXELS along each axis, filling in black; the "
                               "validation and test splits are scored unmoved; give it again with --resume "
                               f"(default: {TRANSLATE} for --conditional prior, else 0, off)")
    training.add_argument("--classifier-weight", type=float, default=None, metavar="W",
                          help="with --conditional: the loss adds W times the cross-entropy of classifying each image "
                               f"by likelihood (conditional.py; default {CLASSIFIER_WEIGHT:g} for --conditional prior; "
                               "0 for nets, where it would cost ten passes of the flow an image; the train bits/dim "
                               "then count it too)")
    training.add_argument("--classifier-margin", type=float, default=None, metavar="M",
                          help="with --classifier-weight: the cross-entropy keeps paying until the right digit's "
                               "log p(x | d) beats every other's by M nats (conditional.py; default "
                               f"{CLASSIFIER_MARGIN:g} for --conditional prior, 0 for nets)")
    training.add_argument("--class-spread", type=float, default=None, metavar="S",
                          help="with --conditional: the prior's class means start S times the mean latent of each "
                               f"digit's images (prior.py; default {CLASS_SPREAD:g} for --conditional prior, 1 for nets), "
                               "so that the digits start farther apart; a fresh start only, --resume keeps the "
                               "checkpoint's means)")
    files = parser.add_argument_group("files")
    files.add_argument("--data", default="data", help="MNIST folder, downloaded into DATA/MNIST/raw when missing (default: %(default)s)")
    files.add_argument("--mirror", action="append", default=[], metavar="URL_OR_DIR",
                       help="extra MNIST mirror tried first (repeatable), e.g. a local folder with the .gz files")
    files.add_argument("--default-mirrors", action=argparse.BooleanOptionalAction, default=True,
                       help="try the built-in internet mirrors after --mirror (default: on)")
    files.add_argument("--out", default="runs/mnist", help="output folder: checkpoints, metrics.jsonl, sample grids (default: %(default)s)")
    files.add_argument("--resume", action="store_true", help="continue from OUT/latest.pt")
    other = parser.add_argument_group("evaluate or sample a checkpoint instead of training")
    other.add_argument("--eval", metavar="CKPT", help="print the test bits/dim of a checkpoint")
    other.add_argument("--sample", metavar="CKPT", help="write grids of samples from a checkpoint into OUT")
    other.add_argument("--n", type=int, default=64,
                       help="number of samples per grid for --sample (a conditional checkpoint's grid of all ten "
                            "digits has rows of 10; default: %(default)s)")
    other.add_argument("--temperature", type=float, nargs="+", default=[1.0, 0.7, 0.5],
                       help="prior standard deviations for --sample: one grid each (default: 1 0.7 0.5)")
    other.add_argument("--pairs", type=int, default=8,
                       help="--sample also interpolates in latent space between this many pairs of test digits "
                            "(default: %(default)s)")
    other.add_argument("--digit", type=int, nargs="+", action="extend", default=[], choices=range(10),
                       metavar="DIGIT", help="--sample of a conditional checkpoint: grids of these digits 0-9 "
                                             "(repeatable), one per digit and temperature; default: one grid with a "
                                             "row of each digit")

    args = parser.parse_args(argv)
    args.model_config = model_config(args, parser)
    check_step_arguments(args, parser)
    for flag in ("n", "pairs"):
        if getattr(args, flag) <= 0:
            parser.error(f"--{flag.replace('_', '-')} must be positive, got {getattr(args, flag)}")
    margin_given = args.classifier_margin is not None
    for flag, tuned, neutral, allowed, rule in (
            ("classifier_weight", CLASSIFIER_WEIGHT, 0.0, lambda value: value >= 0, "zero or more"),
            ("classifier_margin", CLASSIFIER_MARGIN, 0.0, lambda value: value >= 0, "zero or more"),
            ("class_spread", CLASS_SPREAD, 1.0, lambda value: value > 0, "a positive number")):
        value, name = getattr(args, flag), "--" + flag.replace("_", "-")
        if value is None:
            setattr(args, flag, tuned if args.conditional == "prior" else neutral)
        elif not args.conditional:
            parser.error(f"{name} applies to a conditional flow: give --conditional too")
        elif not (math.isfinite(value) and allowed(value)):
            parser.error(f"{name} must be {rule}, got {value}")
    if margin_given and args.classifier_margin and not args.classifier_weight:
        parser.error("--classifier-margin shapes the classifier's cross-entropy: give a --classifier-weight above 0 too")
    if args.translate is None:
        args.translate = TRANSLATE if args.conditional == "prior" else 0
    if not 0 <= args.translate < min(IMAGE_SHAPE[1:]):
        parser.error(f"--translate must lie in 0..{min(IMAGE_SHAPE[1:]) - 1} pixels, got {args.translate}")
    if args.epochs < 0:
        parser.error(f"--epochs must be zero or more, got {args.epochs}")
    positive = {"--temperature": args.temperature, "--time-budget": [] if args.time_budget is None else [args.time_budget]}
    for flag, values in positive.items():
        if not all(math.isfinite(value) and value > 0 for value in values):
            parser.error(f"{flag} must be a positive number, got {' '.join(map(str, values))}")
    if args.eval and args.sample:
        parser.error("--eval and --sample are separate jobs: give one")
    if args.digit and not args.sample:
        parser.error("--digit chooses what --sample draws: give --sample CKPT too")
    if args.sample and distributed.started_by_torchrun():
        parser.error("--sample runs in one process: start it with python, not torchrun")
    return args


def describe_run(args, model, device, precision, n_images):
    """The line a run starts with: what it trains, where, in which precision."""
    config, parameters = args.model_config, sum(p.numel() for p in model.parameters()) / 1e6
    processes = f" x {distributed.world_size()} processes" if distributed.world_size() > 1 else ""
    nets = str(precision or torch.float32).removeprefix("torch.")
    compiling = "; the first step compiles the training loss (a minute or two)" if args.compile else ""
    moved = (f", each moved by up to {args.translate} pixel{'s' * (args.translate > 1)} along each axis"
             if args.translate else "")
    conditional = f", conditioned on the digit (in the {config['conditional']})" if config.get("conditional") else ""
    if args.class_spread != 1 and not args.resume:  # a resumed run keeps its checkpoint's means
        conditional += f", class means spread {args.class_spread:g} x"
    if args.classifier_weight:
        conditional += f", loss + {args.classifier_weight:g} x the classifier's cross-entropy"
        if args.classifier_margin:
            conditional += f" with a margin of {args.classifier_margin:g} nats"
    conv = f" + convolutions of {config['conv_channels']} channels" if config.get("conv_channels") else ""
    return (f"{config['model']}{conditional}: {config['blocks']} blocks, hidden {config['hidden']} x {config['depth']}{conv}, "
            f"{parameters:.1f}M parameters, on {device}{processes}, coupling nets in {nets}; "
            f"{n_images} training images{moved}{compiling}")
