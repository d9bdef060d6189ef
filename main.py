"""Step 11: train a flow on MNIST by minimising the negative mean log-likelihood.

    python main.py                         # train with the defaults, data fetched when missing
    python main.py --time-budget 600       # stop training after 10 minutes, then evaluate
    python main.py --eval runs/mnist/best.pt
    python main.py --sample runs/mnist/best.pt --temperature 0.7

The lesson: for each batch, loss = -mean log p(v) (pixels.py), backward, an optimizer step.
Each epoch then scores bits/dim on the validation split (the last 5,000 training images,
which choose best.pt) and on the test split, and writes into --out samples_EPOCH.png, a
line of metrics.jsonl, latest.pt and best.pt. Ctrl-C or SIGTERM saves latest.pt, and
--resume goes on from it. The step itself (precision, clipping, compile) is training.py's.
"""
import argparse
import json
import math
import signal
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

import checkpoints
import distributed
from distributed import print_once, rank, world_size
from download_mnist import MnistDownloadError, ensure_mnist, load_mnist
from layers import data_dependent_init
from models import add_model_arguments, build_model, model_config
from pictures import save_interpolations, save_samples
from pixels import NegativeLogLikelihood, bits_per_dim, dequantize_and_logit, log_density
from training import (PRECISIONS, SetupError, TrainingClock, TrainingLosses, TrainingStep, cosine_learning_rate,
                      evaluation_mode, make_optimizer, pick_device, pick_precision)

EVAL_NOISE_SEED = 1234  # dequantization noise for evaluation: the same figure every time
EVAL_BATCH = 1000
INIT_BATCH = 1000  # images that set the ActNorm layers before training
VALIDATION_SIZE = 5000  # the last training images (at most a tenth), held out to choose best.pt
LOG_INTERVAL = 20  # steps between reads of the losses (progress bar, divergence) and of the clock
MAX_BAD_STEPS = 20  # skipped steps in a row (non-finite loss or gradients) before the run gives up


class UsageError(Exception):
    """A bad flag combination or output folder: reported in one line, exit status 2."""


class TrainingDiverged(Exception):
    """The loss stayed non-finite: reported in one line, exit status 1."""


# --------------------------------------------------------------------------- data


def get_data(args, split):
    """uint8 images [N, 1, 28, 28] of a split, downloading MNIST first when it is missing.

    Under torchrun the first process downloads while the others wait.
    """
    try:
        if rank() == 0:
            ensure_mnist(args.data, mirrors=args.mirror, default_mirrors=args.default_mirrors)
        distributed.barrier()
        images, _ = load_mnist(args.data, split)
    except MnistDownloadError as error:
        print(error, file=sys.stderr)
        print("or let main.py install it: python main.py --mirror /path/to/folder/with/the/gz/files", file=sys.stderr)
        raise SystemExit(1)
    except (OSError, ValueError) as error:  # a missing or corrupt file
        print(f"main.py: error: {error}", file=sys.stderr)
        raise SystemExit(1)
    return images.unsqueeze(1)


# --------------------------------------------------------------------------- evaluation in bits/dim


def evaluate(model, images, alpha, device):
    """Mean bits/dim over uint8 `images` [N, 1, 28, 28].

    Each batch draws its dequantization noise from its own fixed seed, so the figure is
    the same every time, and the same whichever processes share the batches.
    """
    total = torch.zeros((), dtype=torch.float64, device=device)
    with evaluation_mode(model):
        for index, start in enumerate(range(0, len(images), EVAL_BATCH)):
            if index % world_size() == rank():
                generator = torch.Generator(device=device).manual_seed(EVAL_NOISE_SEED + index)
                batch = images[start : start + EVAL_BATCH].to(device)
                total += bits_per_dim(log_density(model, batch, alpha, generator)).double().sum()
    return distributed.all_reduce(total).item() / len(images)


# --------------------------------------------------------------------------- checkpoints


class Run:
    """What a checkpoint holds: the model, its optimizer and how far training got."""

    def __init__(self, args, device):
        self.args, self.config = args, args.model_config
        self.model = build_model(self.config).to(device)
        self.optimizer = make_optimizer(self.model, args.lr, args.weight_decay)
        self.data_order = torch.Generator().manual_seed(args.seed)  # the same order in every process
        self.epochs_done, self.best_valid_bpd, self.train_seconds = 0, math.inf, 0.0

    def state(self):
        return {"format": checkpoints.FORMAT, "model_config": self.config, "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(), "epoch": self.epochs_done, "flags": vars(self.args),
                "rng": torch.get_rng_state(), "data_order_rng": self.data_order.get_state(),
                "cuda_rng": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
                "best_valid_bpd": self.best_valid_bpd, "train_seconds": self.train_seconds}

    def restore(self, path):
        """Weights, Adam's moments and progress from the checkpoint at `path`; the optimizer's
        settings (learning rate, weight decay) stay this run's flags."""
        state = checkpoints.load(path)
        if state["model_config"] != self.config:
            raise UsageError(f"{path} holds a different model: {state['model_config']}")
        checkpoints.load_weights(self.model, state, path)
        settings = [{key: value for key, value in group.items() if key != "params"}
                    for group in self.optimizer.param_groups]
        self.optimizer.load_state_dict(state["optimizer"])
        for group, setting in zip(self.optimizer.param_groups, settings):
            group.update(setting)
        torch.set_rng_state(state["rng"])
        if state["cuda_rng"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state(state["cuda_rng"])
        self.data_order.set_state(state["data_order_rng"])
        self.epochs_done, self.best_valid_bpd = state["epoch"], state["best_valid_bpd"]
        self.train_seconds = state["train_seconds"]


# --------------------------------------------------------------------------- training


def train(args, device):
    """Train (or go on with --resume), evaluating and saving every epoch; returns (model, test bits/dim)."""
    out = output_folder(args)
    all_train, test_images = get_data(args, "train"), get_data(args, "test")
    valid_size = max(1, min(VALIDATION_SIZE, len(all_train) // 10))
    train_images, valid_images = all_train[:-valid_size].to(device), all_train[-valid_size:]
    torch.manual_seed(args.seed)
    run = Run(args, device)
    alpha = run.config["alpha"]
    if args.resume:
        run.restore(out / "latest.pt")
        print_once(f"resuming from {out / 'latest.pt'} after epoch {run.epochs_done}")
    else:
        init_batch = train_images[torch.randperm(len(train_images), generator=run.data_order)[:INIT_BATCH]]
        data_dependent_init(run.model, dequantize_and_logit(init_batch, alpha)[0])
    torch.manual_seed(args.seed + 1000 * run.epochs_done + rank())  # each process its own noise
    precision = pick_precision(args.precision, device)
    step = TrainingStep(NegativeLogLikelihood(run.model, alpha), run.optimizer, precision, args.compile)
    print_once(describe(run, device, precision, len(train_images)))

    clock = TrainingClock(run.train_seconds)
    losses, test_bpd = TrainingLosses(device), None
    try:
        for epoch in range(run.epochs_done + 1, args.epochs + 1):
            if args.time_budget is not None and clock.read() >= args.time_budget:
                print_once(f"time budget of {args.time_budget:g} s reached")
                break
            started = time.monotonic()
            images_seen = train_epoch(run, step, train_images, losses, clock, epoch)
            seconds = time.monotonic() - started
            run.epochs_done, run.train_seconds = epoch, clock.read()  # an interrupt from here on saves this epoch
            metrics = {"epoch": epoch, "train_bpd": bits_per_dim(-losses.epoch_mean()),
                       "valid_bpd": evaluate(run.model, valid_images, alpha, device),
                       "test_bpd": evaluate(run.model, test_images, alpha, device),
                       "seconds": round(seconds, 2), "samples_per_s": round(images_seen / seconds, 1)}
            test_bpd = metrics["test_bpd"]
            if rank() == 0:
                save_epoch(run, out, metrics)
    except KeyboardInterrupt:
        if rank() == 0:  # the weights trained so far; an interrupted epoch counts as not done
            checkpoints.save(out / "latest.pt", run.state())
            print(f"\ninterrupted: saved {out / 'latest.pt'} after epoch {run.epochs_done} (resume with --resume)")
        raise SystemExit(130)
    if test_bpd is None:
        test_bpd = evaluate(run.model, test_images, alpha, device)
    print_once(f"final test bits/dim: {test_bpd:.4f}")
    return run.model, test_bpd


def train_epoch(run, step, images, losses, clock, epoch):
    """One pass over this process's share of `images`, or less when the time budget runs out.

    Returns the number of images all processes trained on.
    """
    args = run.args
    shard = len(images) // world_size()  # images per process and epoch
    steps = math.ceil(shard / args.batch_size)
    order = torch.randperm(len(images), generator=run.data_order)[rank() :: world_size()][:shard]
    bar = tqdm(range(steps), desc=f"epoch {epoch}/{args.epochs}", leave=False, unit="step",
               dynamic_ncols=True, mininterval=1.0, disable=rank() > 0)
    started, seconds, trained = time.monotonic(), clock.read(), 0
    for index in bar:
        progress = (epoch - 1 + index / steps) / args.epochs  # 0 to 1, by steps or by the clock as last read
        if args.time_budget is not None:
            progress = max(progress, seconds / args.time_budget)
        for group in run.optimizer.param_groups:
            group["lr"] = cosine_learning_rate(args.lr, progress)
        batch = images[order[index * args.batch_size : (index + 1) * args.batch_size].to(images.device)]
        losses.add(step(batch))
        trained += len(batch) * world_size()
        if (index + 1) % LOG_INTERVAL == 0 or index + 1 == steps:
            recent_loss, bad_streak = losses.read()
            if bad_streak >= MAX_BAD_STEPS:
                raise TrainingDiverged(f"{bad_streak} steps in a row had a non-finite loss or gradients; "
                                       "lower --lr and try again")
            bar.set_postfix(bpd=f"{bits_per_dim(-recent_loss):.3f}",
                            img_s=f"{trained / (time.monotonic() - started):.0f}")
            if args.time_budget is not None:
                seconds = clock.read()
                if seconds >= args.time_budget:
                    break
    bar.close()
    return trained


def save_epoch(run, out, metrics):
    """Checkpoints, then the metrics line, a sample grid and a line on the terminal.

    Checkpoints come first: a crash in between can lose the metrics line, never write it twice.
    """
    improved = math.isfinite(metrics["valid_bpd"]) and metrics["valid_bpd"] < run.best_valid_bpd
    if improved:
        run.best_valid_bpd = metrics["valid_bpd"]
        checkpoints.save(out / "best.pt", run.state())
    checkpoints.save(out / "latest.pt", run.state())
    with open(out / "metrics.jsonl", "a") as file:
        file.write(json.dumps(metrics) + "\n")
    save_samples(run.model, out / f"samples_{metrics['epoch']:03d}.png", run.config["alpha"], temperature=0.7)
    print_once(f"epoch {metrics['epoch']}: train {metrics['train_bpd']:.4f}  valid {metrics['valid_bpd']:.4f}  "
               f"test {metrics['test_bpd']:.4f} bits/dim  ({metrics['seconds']:.0f} s, "
               f"{metrics['samples_per_s']:.0f} img/s)")


def describe(run, device, precision, n_images):
    parameters = sum(p.numel() for p in run.model.parameters()) / 1e6
    processes = f" x {world_size()} processes" if world_size() > 1 else ""
    nets = str(precision or torch.float32).removeprefix("torch.")
    compiling = "; the first step compiles the training loss (up to a minute)" if run.args.compile else ""
    return (f"{run.config['model']}: {run.config['blocks']} blocks, hidden {run.config['hidden']} x "
            f"{run.config['depth']}, {parameters:.1f}M parameters, on {device}{processes}, coupling nets in {nets}; "
            f"{n_images} training images{compiling}")


# --------------------------------------------------------------------------- sampling a checkpoint


def sample(args, device):
    """--sample: grids of samples at each temperature and latent interpolations, into --out."""
    state = checkpoints.load(args.sample)
    model = checkpoints.model_from(state, args.sample, device)
    alpha, out = state["model_config"]["alpha"], output_folder(args)
    for temperature in args.temperature:
        path = out / f"samples_t{temperature:g}.png"
        save_samples(model, path, alpha, n=args.n, temperature=temperature)
        print(f"wrote {args.n} samples at temperature {temperature:g} to {path}")
    pairs = get_data(args, "test")[: 2 * args.pairs].to(device)
    save_interpolations(model, pairs, out / "interpolation.png", alpha)
    print(f"wrote latent interpolations between {len(pairs) // 2} pairs of test digits to {out / 'interpolation.png'}")


# --------------------------------------------------------------------------- command line


def output_folder(args):
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file, not a folder")
    out.mkdir(parents=True, exist_ok=True)
    return out


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Train a normalizing flow (RealNVP or NICE) on MNIST and report test bits/dim.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_model_arguments(parser)
    training = parser.add_argument_group("training")
    training.add_argument("--epochs", type=int, default=32, help="passes over the training images")
    training.add_argument("--time-budget", type=float, default=None, metavar="SECONDS",
                          help="stop training after this wall time, then evaluate and save as at an epoch's end")
    training.add_argument("--batch-size", type=int, default=256, help="images per gradient step (per process)")
    training.add_argument("--lr", type=float, default=1e-3, help="peak AdamW learning rate (cosine decay to 0)")
    training.add_argument("--weight-decay", type=float, default=0.0,
                          help="decoupled weight decay (AdamW): each step also multiplies every parameter by 1 - lr * this")
    training.add_argument("--seed", type=int, default=0, help="random seed")
    training.add_argument("--precision", choices=["auto", *PRECISIONS], default="auto",
                          help="the coupling nets' precision in training (the rest stays float32); "
                               "auto picks bf16 where it is measured fast, else fp32")
    training.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False,
                          help="compile the training loss with torch.compile: faster steps after up to a minute "
                               "of compiling (needs a C++ compiler on a CPU; without one, training goes on uncompiled)")
    training.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="auto",
                          help="auto picks cuda, then mps, then cpu")
    files = parser.add_argument_group("files")
    files.add_argument("--data", default="data", help="MNIST folder (downloaded into DATA/MNIST/raw when missing)")
    files.add_argument("--mirror", action="append", default=[], metavar="URL_OR_DIR",
                       help="extra MNIST mirror tried first (repeatable), e.g. a local folder with the .gz files")
    files.add_argument("--default-mirrors", action=argparse.BooleanOptionalAction, default=True,
                       help="try the built-in internet mirrors after --mirror")
    files.add_argument("--out", default="runs/mnist", help="output folder: checkpoints, metrics.jsonl, sample grids")
    files.add_argument("--resume", action="store_true", help="continue from OUT/latest.pt")
    other = parser.add_argument_group("evaluate or sample a checkpoint instead of training")
    other.add_argument("--eval", metavar="CKPT", help="print the test bits/dim of a checkpoint")
    other.add_argument("--sample", metavar="CKPT", help="write grids of samples from a checkpoint into OUT")
    other.add_argument("--n", type=int, default=64, help="number of samples per grid for --sample")
    other.add_argument("--temperature", type=float, nargs="+", default=[1.0, 0.7, 0.5],
                       help="prior standard deviations for --sample: one grid each")
    other.add_argument("--pairs", type=int, default=8,
                       help="--sample also interpolates in latent space between this many pairs of test digits")

    args = parser.parse_args(argv)
    args.model_config = model_config(args, parser)
    for flag in ("batch_size", "n", "pairs"):
        if getattr(args, flag) <= 0:
            parser.error(f"--{flag.replace('_', '-')} must be positive, got {getattr(args, flag)}")
    if args.epochs < 0:
        parser.error(f"--epochs must be zero or more, got {args.epochs}")
    positive = {"--lr": [args.lr], "--temperature": args.temperature,
                "--time-budget": [] if args.time_budget is None else [args.time_budget]}
    for flag, values in positive.items():
        if not all(math.isfinite(value) and value > 0 for value in values):
            parser.error(f"{flag} must be a positive number, got {' '.join(map(str, values))}")
    if not (math.isfinite(args.weight_decay) and args.weight_decay >= 0):
        parser.error(f"--weight-decay must be zero or more, got {args.weight_decay}")
    if args.eval and args.sample:
        parser.error("--eval and --sample are separate jobs: give one")
    if args.sample and distributed.started_by_torchrun():
        parser.error("--sample runs in one process: start it with python, not torchrun")
    return args


def main(argv=None):
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # a polite kill saves like Ctrl-C
    try:
        device = pick_device(args.device)
        if distributed.started_by_torchrun():
            device = distributed.start(device)
        if args.eval:
            state = checkpoints.load(args.eval)
            model = checkpoints.model_from(state, args.eval, device)
            test_bpd = evaluate(model, get_data(args, "test"), state["model_config"]["alpha"], device)
            print_once(f"test bits/dim: {test_bpd:.4f}")
            return 0
        if args.sample:
            sample(args, device)
        else:
            train(args, device)
    except (UsageError, SetupError, checkpoints.CheckpointError) as error:
        print(f"main.py: error: {error}", file=sys.stderr)
        return 2
    except TrainingDiverged as error:
        print(f"main.py: training stopped: {error}", file=sys.stderr)
        return 1
    finally:
        distributed.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
