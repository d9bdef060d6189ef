"""The command line of main.py, in one place: its flags, their checks, the recipe that
--conditional names, what --resume takes from a checkpoint, and the line that says what a
run trains.

The flags a learner uses come first in --help; the model's size, the training and the
hardware after them. A bad value or combination is `parser.error`: one line, exit 2.
"""
import argparse
import math

import torch

import distributed
from conditional import RECIPES, Recipe
from models import IMAGE_SHAPE, MODELS, has_mlp_nets, model_config

# What an unconditional run trains with, where a conditional one takes its recipe's.
NO_RECIPE = Recipe(conv_channels=0, translate=0, classifier_weight=0.0, classifier_margin=0.0, class_spread=1.0)
# Flags that --resume may take anew: how long to go on and where the data is, the hardware,
# and the command's own (which folder, whether to resume).
GO_ON_FLAGS = ("epochs", "time_budget", "data", "mirror")
HARDWARE_FLAGS = ("precision", "compile", "device")
MAY_CHANGE_ON_RESUME = GO_ON_FLAGS + HARDWARE_FLAGS + ("out", "resume")


NOT_GIVEN = object()


class OneLineErrors(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line, like main.py's others, instead of the usage first."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}; python {self.prog} --help lists the flags\n")


class ResumeError(Exception):
    """A flag given with --resume that disagrees with the run's own: reported in one line."""


def make_parser():
    parser = OneLineErrors(
        prog="main.py",
        description="Train a normalizing flow (multi-scale convolutional, spline, RealNVP or NICE) on MNIST and "
                    "report test bits/dim; or evaluate or sample a checkpoint.")
    run = parser.add_argument_group("what to run")
    run.add_argument("--epochs", type=int, default=12, help="passes over the training images (default: %(default)s)")
    run.add_argument("--time-budget", type=float, metavar="SECONDS",
                     help="stop training after this much wall time (evaluations included), then evaluate and save")
    run.add_argument("--out", default="runs/mnist",
                     help="output folder: checkpoints, metrics.jsonl, curves and samples (default: %(default)s)")
    run.add_argument("--resume", action="store_true",
                     help="go on from OUT/latest.pt with its run's flags; of those given again, only "
                          f"{', '.join('--' + name.replace('_', '-') for name in GO_ON_FLAGS)} and the "
                          "hardware flags may differ")
    run.add_argument("--eval", metavar="CKPT",
                     help="print the test bits/dim of a checkpoint (a conditional one's: also the marginal's "
                          "and the accuracy)")
    run.add_argument("--sample", metavar="CKPT",
                     help="write grids of samples and latent interpolations of a checkpoint into OUT")
    run.add_argument("--temperature", type=float, nargs="+", default=[1.0, 0.7, 0.5],
                     help="prior standard deviations for --sample: one grid each (default: 1 0.7 0.5)")
    run.add_argument("--digit", type=int, nargs="+", action="extend", default=[], choices=range(10), metavar="DIGIT",
                     help="--sample of a conditional checkpoint: a grid of each of these digits 0-9 (default: "
                          "one grid with a row of each digit)")
    run.add_argument("--conditional", nargs="?", const="prior", choices=list(RECIPES), metavar="WHERE",
                     help="model p(image | digit) (conditional.py) and classify digits by likelihood, with a "
                          "recipe printed at the start: 'prior' (a bare --conditional) puts the digit in the prior's "
                          f"mean and trains with {describe_recipe(RECIPES['prior'])}; 'nets' also feeds it to every coupling "
                          f"net and trains with {describe_recipe(RECIPES['nets'])}")
    run.add_argument("--classifier-weight", type=float, metavar="W",
                     help="with --conditional: the loss adds W times the cross-entropy of classifying each image "
                          "by likelihood (conditional.py) (default: the recipe's)")
    add_model_flags(parser.add_argument_group("model"))
    data = parser.add_argument_group("data")
    data.add_argument("--data", default="data",
                      help="MNIST folder, downloaded into DATA/MNIST/raw when missing (default: %(default)s)")
    data.add_argument("--mirror", action="append", default=[], metavar="URL_OR_DIR",
                      help="an MNIST mirror tried before the public ones (repeatable), e.g. a folder with the four "
                           ".gz files")
    add_training_flags(parser.add_argument_group("training and hardware"))
    return parser


def add_model_flags(group):
    """The flags that choose and size the model (main.py's, and the benchmark's)."""
    group.add_argument("--model", choices=list(MODELS), default="multiscale",
                       help="the multi-scale convolutional flow (multiscale.py); or spline couplings (spline.py), "
                            "RealNVP's affine ones (realnvp.py) or NICE's additive ones (nice.py), all three with "
                            "MLP nets (default: %(default)s)")
    group.add_argument("--blocks", type=int, default=4,
                       help="blocks F = f0 o f1, two couplings each; multiscale: steps per scale (default: %(default)s)")
    group.add_argument("--hidden", type=int,
                       help="width of each coupling net: hidden units of an MLP (default: 512), channels of "
                            "multiscale's conv nets (default: 64)")
    group.add_argument("--conv-channels", type=int, metavar="C",
                       help="give every coupling net a convolutional branch of C channels that sees the "
                            "conditioning half as an image (convolution.py) (default: 0, none; the --conditional "
                            "prior recipe's 32)")


def add_training_flags(group):
    """The flags of the training step and the hardware (main.py's, and the benchmark's)."""
    group.add_argument("--lr", type=float, default=2e-3,
                       help="peak AdamW learning rate, warm-up then cosine decay to 0 (default: %(default)s)")
    group.add_argument("--batch-size", type=int, default=32,
                       help="images per step and process; the MLP models run best at 256 (default: %(default)s)")
    group.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    group.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default="auto",
                       help="the coupling nets' precision in training (the rest stays float32); auto: bf16 where it "
                            "is measured fast, else fp32 (default: %(default)s)")
    group.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                       help="compile the training loss with torch.compile: faster steps after a minute or two "
                            "(default: on)")
    group.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="auto",
                       help="auto picks cuda, then mps, then cpu (default: %(default)s)")


def describe_recipe(settings):
    """What a recipe (a `Recipe`, or a run's completed flags) trains with, in words."""
    moves = f"images moved by up to {settings.translate} pixel" if settings.translate else "no moves"
    branches = (f"branches of {settings.conv_channels} channels on MLP nets" if settings.conv_channels
                else "no branches")
    return (f"{branches}, {moves}, classifier weight {settings.classifier_weight:g} with a margin of "
            f"{settings.classifier_margin:g} nats, class means spread {settings.class_spread:g}")


def parse_args(argv=None):
    """main.py's flags from `argv` (default: sys.argv), checked and completed (`complete`);
    `args.given` holds the flags given explicitly, which --resume checks against the run's."""
    parser = make_parser()
    args = parser.parse_args(argv)
    # Parsed again from a namespace of markers, which only the flags given replace.
    unset = {name: None if isinstance(value, list) else NOT_GIVEN for name, value in vars(args).items()}
    again = vars(parser.parse_args(argv, argparse.Namespace(**unset)))
    args.given = {name: value for name, value in again.items() if value is not NOT_GIVEN and value is not None}
    check(args, parser.error)
    return complete(args)


def check(args, error):
    """`error(message)` for a value out of range or a combination that means nothing."""
    positive = {"--blocks": [args.blocks], "--hidden": [] if args.hidden is None else [args.hidden],
                "--batch-size": [args.batch_size],
                "--lr": [args.lr], "--temperature": args.temperature,
                "--time-budget": [] if args.time_budget is None else [args.time_budget]}
    for flag, values in positive.items():
        if not all(math.isfinite(value) and value > 0 for value in values):
            error(f"{flag} must be a positive number, got {' '.join(map(str, values))}")
    zero_or_more = {"--epochs": args.epochs, "--conv-channels": args.conv_channels,
                    "--classifier-weight": args.classifier_weight}
    for flag, value in zero_or_more.items():
        if value is not None and not (math.isfinite(value) and value >= 0):
            error(f"{flag} must be zero or more, got {value}")
    if args.conv_channels and not has_mlp_nets(args.model):
        error(f"--conv-channels gives coupling MLPs a convolutional branch; --model {args.model}'s nets are "
              "convolutional already")
    if args.classifier_weight is not None and not args.conditional:
        error("--classifier-weight applies to a conditional flow: give --conditional too")
    if args.resume and (args.eval or args.sample):
        error("--resume goes on training; --eval and --sample read a checkpoint of their own: give one")
    if args.eval and args.sample:
        error("--eval and --sample are separate jobs: give one")
    if args.digit and not args.sample:
        error("--digit chooses what --sample draws: give --sample CKPT too")
    if args.sample and distributed.started_by_torchrun():
        error("--sample runs in one process: start it with python, not torchrun")


def complete(args):
    """Fill in what the --conditional recipe sets (flags not given take its values) and the model config."""
    recipe = RECIPES[args.conditional] if args.conditional else NO_RECIPE
    if args.conv_channels is None:  # a recipe's branches are for MLP nets
        args.conv_channels = recipe.conv_channels if has_mlp_nets(args.model) else 0
    if args.classifier_weight is None:
        args.classifier_weight = recipe.classifier_weight
    args.translate, args.classifier_margin, args.class_spread = (recipe.translate, recipe.classifier_margin,
                                                                 recipe.class_spread)
    args.model_config = model_config(args.model, args.blocks, args.hidden, args.conv_channels, args.conditional)
    args.hidden = args.model_config["hidden"]
    return args


def resumed_args(args, saved_flags, path):
    """The run's own flags from its checkpoint (`saved_flags`), with what this command gives
    anew where it may change; ResumeError for a flag given again that differs."""
    for name, value in args.given.items():
        saved = saved_flags.get(name)
        if name not in MAY_CHANGE_ON_RESUME and value != saved:
            raise ResumeError(f"--{name.replace('_', '-')} {value} differs from the run's {saved} ({path}); --resume "
                              "goes on with the run's own flags: leave it out, or start a new run with another --out")
    merged = argparse.Namespace(**{**saved_flags, **{name: getattr(args, name) for name in MAY_CHANGE_ON_RESUME}})
    merged.given = args.given
    complete(merged)
    changed = [f"--{name.replace('_', '-')} {getattr(args, name)} (the run had {saved_flags.get(name)})"
               for name in args.given if name in GO_ON_FLAGS + HARDWARE_FLAGS
               and getattr(args, name) != saved_flags.get(name)]
    return merged, changed


def saved_flags(args):
    """The flags a checkpoint keeps: all of them, completed, but the per-command ones."""
    return {name: value for name, value in vars(args).items() if name not in ("given", "model_config")}


def describe_run(args, model, device, precision, n_images):
    """The line a run starts with: what it trains, where, in which precision."""
    config, parameters = args.model_config, sum(p.numel() for p in model.parameters()) / 1e6
    processes = f" x {distributed.world_size()} processes" if distributed.world_size() > 1 else ""
    nets = str(precision or torch.float32).removeprefix("torch.")
    compiling = "; the first step compiles the training loss (a minute or two)" if args.compile else ""
    conditional = (f", conditioned on the digit in the {config['conditional']} (recipe --conditional "
                   f"{config['conditional']}: {describe_recipe(args)})" if config["conditional"] else "")
    conv = f" + convolutions of {config['conv_channels']} channels" if config["conv_channels"] else ""
    width = f"hidden {config['hidden']}" if has_mlp_nets(config["model"]) else f"conv nets of {config['hidden']} channels"
    return (f"{config['model']}: {config['blocks']} blocks, {width}{conv}, "
            f"{parameters:.1f}M parameters{conditional}; on {device}{processes}, coupling nets in {nets}; "
            f"{n_images} training images{compiling}")
