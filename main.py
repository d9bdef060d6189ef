"""Step 11: train a flow on MNIST by minimising the negative mean log-likelihood.

    python main.py                         # train with the defaults, data fetched when missing
    python main.py --time-budget 600       # stop training after 10 minutes, then evaluate
    python main.py --eval runs/mnist/best.pt
    python main.py --sample runs/mnist/best.pt --temperature 0.7
    python main.py --conditional --out runs/conditional    # p(image | digit), and a classifier
    python main.py --sample runs/conditional/best.pt --digit 3 7

The lesson: for each batch of images, loss = -mean log p(v) (pixels.py), then backward
and an AdamW step (training.TrainingStep, which also clips, skips non-finite steps and
handles precision and compile). Each epoch then scores bits/dim on the validation split
(the last 5,000 training images, which choose best.pt) and on the test split, and writes
into --out samples_EPOCH.png, a line of metrics.jsonl, curves.png (bits/dim by epoch and by
seconds), latest.pt and best.pt. Ctrl-C or SIGTERM saves latest.pt (checkpoints.py), and
--resume goes on from it with the run's own flags.

With --conditional the flow models p(image | digit) (conditional.py): the same bits/dim,
given each image's label, trained with the recipe of where the digit enters (printed at
the start: convolutional branches, moved images, and a loss that adds W times the
cross-entropy of classifying each image by likelihood). After the last epoch the test
split is also scored by the marginal bits/dim and the accuracy of that classifier.
"""
import math
import signal
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

import checkpoints
import distributed
from command_line import ResumeError, describe_run, parse_args, resumed_args, saved_flags
from conditional import (ConditionalFlow, LikelihoodAndClassification, label_context, log_density_by_digit,
                         marginal_log_density, same_digit_pairs)
from distributed import print_once, rank, world_size
from download_mnist import MnistDownloadError, ensure_mnist, load_mnist
from layers import data_dependent_init
from models import build_model
from pictures import save_curves, save_digit_rows, save_interpolations, save_samples
from pixels import NegativeLogLikelihood, bits_per_dim, dequantize_and_logit, log_density, translate_images
from training import (SetupError, TrainingClock, TrainingLosses, TrainingStep, cosine_learning_rate,
                      evaluation_mode, make_optimizer, pick_device, pick_precision)

EVAL_NOISE_SEED = 1234  # dequantization noise for evaluation: the same figure every time
EVAL_BATCH = 1000
CLASSIFY_DRAWS = 4  # draws of dequantization noise an image when a conditional model also classifies
SAMPLES = 64  # images in each grid of --sample
PAIRS = 8  # pairs of test digits --sample interpolates between
INIT_BATCH = 1000  # images that set the ActNorm layers before training
VALIDATION_SIZE = 5000  # the last training images (at most a tenth), held out to choose best.pt
LOG_INTERVAL = 20  # steps between reads of the losses (progress bar, divergence) and of the clock
MAX_BAD_STEPS = 20  # skipped steps in a row (non-finite loss or gradients) before the run gives up


class UsageError(Exception):
    """A bad flag combination or output folder: reported in one line, exit status 2."""


class DataError(Exception):
    """MNIST missing, corrupt, or not to be had from any mirror: reported in one line, exit status 1."""


class TrainingDiverged(Exception):
    """The loss stayed non-finite: reported in one line, exit status 1."""


# --------------------------------------------------------------------------- data


def get_data(args, split):
    """(uint8 images [N, 1, 28, 28], labels [N]) of a split, downloading MNIST first when it is missing.

    Under torchrun the first process downloads while the others wait.
    """
    try:
        if rank() == 0:
            ensure_mnist(args.data, mirrors=args.mirror)
        distributed.barrier()
        images, labels = load_mnist(args.data, split)
    except (MnistDownloadError, OSError, ValueError) as error:  # no mirror answered, or a missing or corrupt file
        raise DataError(error) from None
    return images.unsqueeze(1), labels


# --------------------------------------------------------------------------- training


def train(args, device):
    """Train (or go on with --resume), evaluating and saving every epoch; returns (model, test figures)."""
    out = output_folder(args)
    resumed = checkpoints.load(out / "latest.pt") if args.resume else None
    if resumed:
        args, changed = resumed_args(args, resumed["flags"], out / "latest.pt")
        for change in changed:
            print_once(f"resuming with {change}")
    (all_train, all_labels), test = get_data(args, "train"), get_data(args, "test")
    valid_size = max(1, min(VALIDATION_SIZE, len(all_train) // 10))
    valid = all_train[-valid_size:], all_labels[-valid_size:]
    train_images = all_train[:-valid_size].to(device)
    torch.manual_seed(args.seed)
    config, alpha = args.model_config, args.model_config["alpha"]
    model = build_model(config).to(device)
    conditional = isinstance(model, ConditionalFlow)
    # A conditional flow sees each image's one-hot digit; an unconditional one, nothing.
    contexts = label_context(all_labels[:-valid_size]).to(device) if conditional else None
    optimizer = make_optimizer(model, args.lr)
    data_order = torch.Generator().manual_seed(args.seed)  # the same order in every process
    run = checkpoints.Run(config, saved_flags(args), model, optimizer, data_order)
    if resumed:
        run.restore(resumed, out / "latest.pt")
        print_once(f"resuming from {out / 'latest.pt'} after epoch {run.epochs_done}")
    else:
        if rank() == 0:  # a fresh run replaces the checkpoints of an older one in --out, and its log
            (out / "metrics.jsonl").unlink(missing_ok=True)
        init_index = torch.randperm(len(train_images), generator=data_order)[:INIT_BATCH].to(device)
        y = dequantize_and_logit(train_images[init_index], alpha)[0]
        context = None if contexts is None else contexts[init_index]
        z = data_dependent_init(model, y, context)  # every ActNorm, from this batch
        if conditional:  # each digit's mean: its images' mean latent, spread apart
            model.prior.fit_context_means(z, context, args.class_spread)
    if rank() > 0:  # each process draws its own dequantization noise
        torch.manual_seed(args.seed + 1000 * run.epochs_done + rank())
    # The loss, -mean log p(v) (pixels.py), and one step on it: backward, clip, AdamW (training.py).
    # With a classifier weight (the --conditional recipe's, or --classifier-weight), the loss also
    # pays for classifying each image right (conditional.py).
    precision = pick_precision(args.precision, device)
    objective = (LikelihoodAndClassification(model, alpha, args.classifier_weight, args.classifier_margin)
                 if args.classifier_weight else NegativeLogLikelihood(model, alpha))
    step = TrainingStep(objective, optimizer, precision, args.compile)
    print_once(describe_run(args, model, device, precision, len(train_images)))

    clock = TrainingClock(run.train_seconds, device)
    losses, test_figures = TrainingLosses(device), None
    try:
        for epoch in range(run.epochs_done + 1, args.epochs + 1):
            if args.time_budget is not None and clock.read() >= args.time_budget:
                print_once(f"time budget of {args.time_budget:g} s reached")
                break
            started = time.monotonic()
            images_seen = train_epoch(args, run, step, train_images, contexts, losses, clock, epoch)
            seconds = time.monotonic() - started
            run.epochs_done, run.train_seconds = epoch, clock.read()  # an interrupt from here on saves this epoch
            # A conditional flow's last epoch also classifies the test split (CLASSIFY_DRAWS x 10 flow passes an
            # image in the nets).
            last = epoch == args.epochs or (args.time_budget is not None and run.train_seconds >= args.time_budget)
            test_figures = evaluate(model, *test, alpha, device, classify=last and conditional)
            metrics = {"epoch": epoch, "train_bpd": bits_per_dim(-losses.epoch_mean()),
                       "valid_bpd": evaluate(model, *valid, alpha, device)["bpd"],
                       **{f"test_{name}": value for name, value in test_figures.items()},
                       "images": images_seen, "seconds": round(seconds, 2),
                       "samples_per_s": round(images_seen / seconds, 1)}
            if rank() == 0:
                save_epoch(run, out, metrics)
    except KeyboardInterrupt:
        if rank() == 0:  # the weights trained so far; an interrupted epoch counts as not done
            checkpoints.save(out / "latest.pt", run.state())
            print(f"\ninterrupted: saved {out / 'latest.pt'} after epoch {run.epochs_done} (resume with --resume)")
        raise SystemExit(130)
    if test_figures is None or (conditional and "accuracy" not in test_figures):
        # No epoch left to train, or the time budget ran out during the last epoch's evaluation.
        test_figures = evaluate(model, *test, alpha, device, classify=conditional)
        if rank() == 0 and (out / "metrics.jsonl").exists():
            checkpoints.add_to_last_metrics(out / "metrics.jsonl",
                                            {f"test_{name}": value for name, value in test_figures.items()})
    print_once(f"final {describe_figures(test_figures)}")
    return model, test_figures


def train_epoch(args, run, step, images, contexts, losses, clock, epoch):
    """One pass over this process's share of `images` (with their `contexts`, None for an
    unconditional flow), or less when the time budget runs out.

    Returns the number of images all processes trained on.
    """
    shard = len(images) // world_size()  # images per process and epoch
    steps = math.ceil(shard / args.batch_size)
    order = torch.randperm(len(images), generator=run.data_order)[rank() :: world_size()][:shard].to(images.device)
    bar = tqdm(range(steps), desc=f"epoch {epoch}/{args.epochs}", leave=False, unit="step",
               dynamic_ncols=True, mininterval=1.0, disable=rank() > 0)
    started, seconds, trained = time.monotonic(), clock.read(), 0
    for index in bar:
        progress = (epoch - 1 + index / steps) / args.epochs  # 0 to 1, by steps or by the clock as last read
        if args.time_budget is not None:
            progress = max(progress, seconds / args.time_budget)
        for group in run.optimizer.param_groups:
            group["lr"] = cosine_learning_rate(args.lr, progress)
        batch_index = order[index * args.batch_size : (index + 1) * args.batch_size]
        context = None if contexts is None else contexts[batch_index]
        batch = translate_images(images[batch_index], args.translate)  # 0 pixels: the images as they are
        losses.add(step(batch, context))  # the loss, NaN where the step was skipped
        trained += len(batch_index) * world_size()
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
    """Checkpoints, then the metrics line, the learning curves, a sample grid and a line on the terminal.

    Checkpoints come first: a crash in between can lose the metrics line, never write it twice.
    curves.png is drawn again from all of metrics.jsonl.
    """
    improved = math.isfinite(metrics["valid_bpd"]) and metrics["valid_bpd"] < run.best_valid_bpd
    if improved:  # the weights, for --eval and --sample
        run.best_valid_bpd = metrics["valid_bpd"]
        checkpoints.save(out / "best.pt", run.state(resumable=False))
    checkpoints.save(out / "latest.pt", run.state())  # and the optimizer, for --resume
    checkpoints.append_metrics(out / "metrics.jsonl", metrics)
    save_curves(checkpoints.read_metrics(out / "metrics.jsonl"), out / "curves.png")
    grid, alpha = out / f"samples_{metrics['epoch']:03d}.png", run.config["alpha"]
    if isinstance(run.model, ConditionalFlow):
        save_digit_rows(run.model, grid, alpha, temperature=0.7)
    else:
        save_samples(run.model, grid, alpha, temperature=0.7)
    classified = (f"  marginal {metrics['test_marginal_bpd']:.4f}  accuracy {metrics['test_accuracy']:.2%}"
                  if "test_accuracy" in metrics else "")
    print_once(f"epoch {metrics['epoch']}: train {metrics['train_bpd']:.4f}  valid {metrics['valid_bpd']:.4f}  "
               f"test {metrics['test_bpd']:.4f} bits/dim{classified}  ({metrics['seconds']:.0f} s, "
               f"{metrics['samples_per_s']:.0f} img/s)")


# --------------------------------------------------------------------------- evaluation in bits/dim


def evaluate(model, images, labels, alpha, device, classify=False):
    """Figures over uint8 `images` [N, 1, 28, 28]: {"bpd": mean bits/dim}, given each
    image's label (`labels` [N]) for a conditional model.

    With `classify` (a conditional model only) also the mean marginal bits/dim, from
    log p(x) = logsumexp_d log p(x | d) + log 1/10, and the "accuracy" of the Bayes
    classifier argmax_d log p(x | d) (conditional.py). Each image then gets CLASSIFY_DRAWS
    draws of dequantization noise v_k: the two bits/dim are means over the draws (the same
    expectation that one draw estimates, with less noise), and the classifier scores each
    digit by mean_k log p(v_k | d), the dequantization bound that bits/dim reports, with
    less noise than one draw's. Ten passes of the flow a draw where the couplings see the
    digit, one where only the prior does.
    Each batch draws its dequantization noise from its own fixed seed, so the figures are
    the same every time, and the same whichever processes share the batches.
    """
    totals = torch.zeros(3, dtype=torch.float64, device=device)  # bits/dim, marginal bits/dim, correct
    with evaluation_mode(model):
        for index, start in enumerate(range(0, len(images), EVAL_BATCH)):
            if index % world_size() != rank():
                continue
            generator = torch.Generator(device=device).manual_seed(EVAL_NOISE_SEED + index)
            batch = images[start : start + EVAL_BATCH].to(device)
            batch_labels = labels[start : start + EVAL_BATCH].to(device)
            if classify:
                by_digit = torch.stack([log_density_by_digit(model, batch, alpha, generator)
                                        for _ in range(CLASSIFY_DRAWS)])  # [draws, B, 10]
                totals[1] += bits_per_dim(marginal_log_density(by_digit.flatten(0, 1))).double().sum() / CLASSIFY_DRAWS
                by_digit = by_digit.mean(0)  # [B, 10]: each log p(v | d), its mean over the draws
                log_p = by_digit.gather(1, batch_labels.long().unsqueeze(1)).squeeze(1)
                totals[2] += (by_digit.argmax(1) == batch_labels).sum()
            else:
                context = label_context(batch_labels) if isinstance(model, ConditionalFlow) else None
                log_p = log_density(model, batch, alpha, generator, context)
            totals[0] += bits_per_dim(log_p).double().sum()
    bpd, marginal_bpd, accuracy = (distributed.all_reduce(totals) / len(images)).tolist()
    return {"bpd": bpd, "marginal_bpd": marginal_bpd, "accuracy": accuracy} if classify else {"bpd": bpd}


def evaluate_checkpoint(path, args, device):
    """--eval: print the test figures of the checkpoint at `path`; returns them."""
    state = checkpoints.load(path)
    model = checkpoints.model_from(state, path, device)
    figures = evaluate(model, *get_data(args, "test"), state["model_config"]["alpha"], device,
                       classify=isinstance(model, ConditionalFlow))
    print_once(describe_figures(figures))
    return figures


def describe_figures(figures):
    """One line of evaluate's figures."""
    line = f"test bits/dim: {figures['bpd']:.4f}"
    if "accuracy" in figures:
        line += (f" (given the digit), marginal test bits/dim: {figures['marginal_bpd']:.4f}, "
                 f"test accuracy by likelihood: {figures['accuracy']:.2%}")
    return line


# --------------------------------------------------------------------------- sampling a checkpoint


def sample(args, device):
    """--sample: grids of samples at each temperature and latent interpolations, into --out."""
    state = checkpoints.load(args.sample)
    model = checkpoints.model_from(state, args.sample, device)
    alpha, out = state["model_config"]["alpha"], output_folder(args)
    conditional = isinstance(model, ConditionalFlow)
    if args.digit and not conditional:
        raise UsageError(f"--digit needs a conditional checkpoint (trained with --conditional); {args.sample} is not")
    for temperature in args.temperature:
        name = f"samples_t{temperature:g}"
        if not conditional:
            save_samples(model, out / f"{name}.png", alpha, n=SAMPLES, temperature=temperature)
            print(f"wrote {SAMPLES} samples at temperature {temperature:g} to {out / f'{name}.png'}")
        elif not args.digit:
            save_digit_rows(model, out / f"{name}.png", alpha, temperature=temperature)
            print(f"wrote a row of samples of each digit 0-9 at temperature {temperature:g} to {out / f'{name}.png'}")
        for digit in args.digit:
            path = out / f"{name}_digit{digit}.png"
            save_samples(model, path, alpha, n=SAMPLES, temperature=temperature, digit=digit)
            print(f"wrote {SAMPLES} samples of {digit} at temperature {temperature:g} to {path}")
    images, labels = get_data(args, "test")
    # A conditional flow decodes each path as one digit, so its pairs show the same digit.
    pairs = same_digit_pairs(labels, PAIRS) if conditional else torch.arange(min(2 * PAIRS, len(images)))
    if len(pairs) < 2:
        print("no interpolations: the test split has no two images of one digit")
        return
    save_interpolations(model, images[pairs].to(device), out / "interpolation.png", alpha,
                        labels=labels[pairs] if conditional else None)
    print(f"wrote latent interpolations between {len(pairs) // 2} pairs of test digits to {out / 'interpolation.png'}")


# --------------------------------------------------------------------------- command line (its flags: command_line.py)


def output_folder(args):
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file, not a folder")
    out.mkdir(parents=True, exist_ok=True)
    return out


def main(argv=None):
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # a polite kill saves like Ctrl-C
    try:
        device = pick_device(args.device)
        if distributed.started_by_torchrun():
            device = distributed.start(device)
        if args.eval:
            evaluate_checkpoint(args.eval, args, device)
        elif args.sample:
            sample(args, device)
        else:
            train(args, device)
    except (UsageError, ResumeError, SetupError, checkpoints.CheckpointError) as error:
        print(f"main.py: error: {error}", file=sys.stderr)
        return 2
    except (TrainingDiverged, checkpoints.SaveError) as error:
        print(f"main.py: training stopped: {error}", file=sys.stderr)
        return 1
    except DataError as error:
        print(f"main.py: error: {error}", file=sys.stderr)
        return 1
    finally:
        distributed.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
