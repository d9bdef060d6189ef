"""Step 11: train RealNVP on MNIST by minimising the negative mean log-likelihood.

    python main.py                         # train with the defaults, data fetched when missing
    python main.py --time-budget 600       # stop training after 10 minutes, then evaluate
    python main.py --eval runs/mnist/best.pt
    python main.py --sample runs/mnist/best.pt --n 64 --temperature 0.7

From pixels to a density the flow can model, and back to bits per dimension
(D = 28*28 pixels with 8-bit values k in {0..255}):

  1. dequantize:  v = (k + u) / 256,  u ~ U(0, 1)^D        (fresh noise every time)
  2. squash:      s = a + (1 - 2a) v,  y = logit(s) = log s - log(1 - s)
  3. the flow models y; the change of variables gives the density of v:
         log p(v) = log p_flow(y) + sum_i [log(1 - 2a) - log s_i - log(1 - s_i)]
  4. bits/dim = -log p(v) / (D ln 2) + 8, averaged over the test split;
     the +8 turns the density of v on [0, 1)^D into the probability of the 8-bit image
     (each of the 256^D bins has volume 256^-D), so a uniform density scores exactly 8.

The training loss is -mean(log p(v)) over a batch, which is the tutorial's
"negative mean log-probability" plus a constant, reported in bits/dim.

Each epoch writes into --out: samples_EPOCH.png, one line of metrics.jsonl, latest.pt and
(when the validation bits/dim improve) best.pt. A checkpoint holds the model's arguments,
the optimizer, the epoch and the random state, so --resume, --eval and --sample rebuild
everything from the file alone. Checkpoints are written atomically (a temporary file
renamed into place), so a crash at any moment leaves the previous one loadable.
"""
import argparse
import json
import math
import os
import signal
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torchvision.utils import save_image
from tqdm import tqdm

from download_mnist import MnistDownloadError, ensure_mnist, load_mnist
from layers import data_dependent_init
from nice import NICE
from realnvp import RealNVP

IMAGE_SHAPE = (1, 28, 28)
D = 28 * 28
MODELS = {"realnvp": RealNVP, "nice": NICE}
EVAL_NOISE_SEED = 1234  # dequantization noise for evaluation: the same figure every time
EVAL_BATCH = 1000
INIT_BATCH = 1000  # images that set the ActNorm layers before training
VALIDATION_SIZE = 5000  # the last training images (at most a tenth), held out to choose the best checkpoint
LOG_INTERVAL = 20  # steps between reads of the losses (progress bar, divergence) and of the clock (time budget)
MAX_BAD_STEPS = 20  # skipped steps in a row (non-finite loss or gradients) before the run gives up
MAX_GRAD_NORM = 100.0  # gradients are clipped to this norm
FLOAT16_LOSS_SCALE, FLOAT16_GROWTH_INTERVAL = 2.0**16, 2000  # --precision fp16: the loss scale at the start, steps between doublings
CHECKPOINT_FORMAT = "flows-tutorial-checkpoint-v1"


class UsageError(Exception):
    """A bad flag or checkpoint: reported in one line, exit status 2."""


class TrainingDiverged(Exception):
    """The loss stayed non-finite: reported in one line, exit status 1."""


# --------------------------------------------------------------------------- the math


def dequantize_and_logit(images, alpha, generator=None):
    """uint8 images [B, 1, 28, 28] -> (y, log|det dy/dv|) with y = logit(a + (1 - 2a) v).

    v = (k + u) / 256 is the dequantized image; the returned log-det [B] is
    sum_i [log(1 - 2a) - log s_i - log(1 - s_i)], so log p(v) = log p_flow(y) + log-det.
    """
    noise = torch.rand(images.shape, device=images.device, generator=generator)
    v = (images.float() + noise) / 256
    s = alpha + (1 - 2 * alpha) * v
    log_s, log_one_minus_s = torch.log(s), torch.log1p(-s)
    logdet = (math.log(1 - 2 * alpha) - log_s - log_one_minus_s).flatten(1).sum(1)
    return log_s - log_one_minus_s, logdet


def logit_to_pixels(y, alpha):
    """The inverse of the squash: y -> v in [0, 1], for pictures."""
    return ((torch.sigmoid(y) - alpha) / (1 - 2 * alpha)).clamp(0, 1)


def log_density(model, images, alpha, generator=None):
    """log p(v) of dequantized images [B] under the model (step 3 above)."""
    y, logdet = dequantize_and_logit(images, alpha, generator)
    return model.logProbability(y) + logdet


def bits_per_dim(log_p_v):
    """bits/dim of an 8-bit image from the log-density of its dequantized version (step 4)."""
    return -log_p_v / (D * math.log(2)) + 8


@contextmanager
def inference(model):
    """Eval mode and inference mode for a block; the model returns to the mode it was in."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        model.train(was_training)


def evaluate(model, images, alpha, device):
    """Mean bits/dim over `images` (uint8 [N, 1, 28, 28]).

    Each batch draws its dequantization noise from its own fixed seed, so the figure is
    the same every time, and the same whichever processes share the batches.
    """
    total = torch.zeros((), dtype=torch.float64, device=device)
    with inference(model):
        for index, start in enumerate(range(0, len(images), EVAL_BATCH)):
            if index % world_size() == rank():
                generator = torch.Generator(device=device).manual_seed(EVAL_NOISE_SEED + index)
                batch = images[start : start + EVAL_BATCH].to(device)
                total += bits_per_dim(log_density(model, batch, alpha, generator)).double().sum()
        return reduce(total).item() / len(images)


def save_samples(model, path, alpha, n=64, temperature=1.0):
    with inference(model):
        y = model.sample(n, temperature=temperature)
    save_image(logit_to_pixels(y.float(), alpha), path, nrow=int(math.sqrt(n)) or 1)


def save_interpolations(model, images, path, alpha, steps=10):
    """One row per pair of images: z = cos(t) z_a + sin(t) z_b, t from 0 to pi/2, decoded.

    The path keeps the prior's variance for independent Gaussian latents, so the middle
    of a row is as typical a latent as its ends.
    """
    with inference(model):
        generator = torch.Generator(device=images.device).manual_seed(EVAL_NOISE_SEED)
        z, _ = model(dequantize_and_logit(images, alpha, generator)[0])
        z_a, z_b = z[0::2], z[1::2]  # [pairs, 1, 28, 28] each
        angles = torch.linspace(0, math.pi / 2, steps, device=z.device).view(1, steps, 1, 1, 1)
        path_z = torch.cos(angles) * z_a.unsqueeze(1) + torch.sin(angles) * z_b.unsqueeze(1)
        y, _ = model.inverse(path_z.flatten(0, 1))  # [pairs * steps, 1, 28, 28], row by row
    save_image(logit_to_pixels(y.float(), alpha), path, nrow=steps)


# --------------------------------------------------------------------------- model and checkpoints


# Options added after the first checkpoints were written, with the value that means "off".
NEWER_MODEL_ARGS = {"mixing": False, "dropout": 0.0}


def complete_model_args(model_args):
    """Model arguments from any checkpoint, older ones filled in with the newer options off."""
    return {**NEWER_MODEL_ARGS, **model_args}


def model_arguments(args):
    """The model's arguments from the command line: what build_model takes and checkpoints store."""
    realnvp = args.model == "realnvp"  # the other options are RealNVP's
    return {"model": args.model, "shape": list(IMAGE_SHAPE), "couplings": args.couplings,
            "hidden": args.hidden, "depth": args.depth, "alpha": args.alpha,
            "actnorm": args.actnorm and realnvp, "shuffle": args.shuffle and realnvp,
            "mixing": args.mixing and realnvp, "dropout": args.dropout if realnvp else 0.0}


def build_model(model_args):
    """The flow from its arguments (as stored in every checkpoint)."""
    model_args = complete_model_args(model_args)
    options = {"blocks": model_args["couplings"], "hidden": model_args["hidden"], "depth": model_args["depth"]}
    if model_args["model"] == "realnvp":
        options.update({name: model_args[name] for name in ("actnorm", "shuffle", "mixing", "dropout")})
    return MODELS[model_args["model"]].build(model_args["shape"], **options)


def save_checkpoint(path, state):
    """torch.save to a temporary file in the same folder, then rename: never half-written."""
    path = Path(path)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            torch.save(state, file)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, 0o644)  # mkstemp makes it private
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def load_checkpoint(path):
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise UsageError(f"{path} is not a readable checkpoint ({type(error).__name__})") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise UsageError(f"{path} is not a checkpoint written by this main.py")
    return state


def model_from_checkpoint(state, device):
    model = build_model(state["model_args"]).to(device)
    model.load_state_dict(state["model"])
    return model


# --------------------------------------------------------------------------- command line


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Train a normalizing flow (RealNVP or NICE) on MNIST and report test bits/dim.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    model = parser.add_argument_group("model")
    model.add_argument("--model", choices=sorted(MODELS), default="realnvp", help="which flow to train")
    model.add_argument("--couplings", type=int, default=8, help="number of blocks F = f0 o f1 (two couplings each)")
    model.add_argument("--hidden", type=int, default=512, help="hidden units of each coupling MLP")
    model.add_argument("--depth", type=int, default=2, help="hidden layers of each coupling MLP")
    model.add_argument("--actnorm", action=argparse.BooleanOptionalAction, default=True,
                       help="RealNVP: an ActNorm layer before each block, initialised from data")
    model.add_argument("--shuffle", action=argparse.BooleanOptionalAction, default=True,
                       help="RealNVP: a fixed random permutation of the pixels between blocks")
    model.add_argument("--mixing", action=argparse.BooleanOptionalAction, default=False,
                       help="RealNVP: a learned invertible linear map (LU form, layers.py) between blocks")
    model.add_argument("--dropout", type=float, default=0.0,
                       help="RealNVP: dropout probability on the coupling nets' hidden layers, in training only")
    model.add_argument("--alpha", type=float, default=1e-6, help="logit squash: s = a + (1 - 2a) v")

    training = parser.add_argument_group("training")
    training.add_argument("--epochs", type=int, default=32, help="passes over the training images")
    training.add_argument("--time-budget", type=float, default=None, metavar="SECONDS",
                          help="stop training after this wall time, then evaluate and save as at an epoch's end")
    training.add_argument("--batch-size", type=int, default=256, help="images per gradient step")
    training.add_argument("--lr", type=float, default=1e-3, help="peak Adam learning rate (cosine decay to 0)")
    training.add_argument("--weight-decay", type=float, default=0.0,
                          help="decoupled weight decay (AdamW): each step also multiplies every parameter "
                               "(coupling nets, ActNorm, LU mixing) by 1 - lr * this")
    training.add_argument("--seed", type=int, default=0, help="random seed")
    training.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default="auto",
                          help="precision of the coupling nets in training (log-dets, prior and loss stay float32); "
                               "auto picks bf16 where the CPU or GPU runs it fast, else fp32")
    training.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False,
                          help="compile the training loss with torch.compile: the element-wise work around the "
                               "coupling nets fuses, for faster steps after up to a minute of compiling "
                               "(needs a C++ compiler on a CPU, and Triton's C compiler on a GPU)")
    training.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="auto",
                          help="auto picks cuda, then mps, then cpu")

    files = parser.add_argument_group("files")
    files.add_argument("--data", default="data", help="MNIST folder (downloaded into DATA/MNIST/raw when missing)")
    files.add_argument("--mirror", action="append", default=[], metavar="URL_OR_DIR",
                       help="extra MNIST mirror tried first (repeatable), e.g. a local folder with the .gz files")
    files.add_argument("--out", default="runs/mnist", help="output folder: checkpoints, metrics.jsonl, sample grids")
    files.add_argument("--resume", action="store_true", help="continue from OUT/latest.pt")

    other = parser.add_argument_group("evaluate or sample a checkpoint instead of training")
    other.add_argument("--eval", metavar="CKPT", help="print the test bits/dim of a checkpoint")
    other.add_argument("--sample", metavar="CKPT", help="write a grid of samples from a checkpoint into OUT")
    other.add_argument("--n", type=int, default=64, help="number of samples for --sample")
    other.add_argument("--temperature", type=float, nargs="+", default=[1.0, 0.7, 0.5],
                       help="prior standard deviations for --sample: one grid each")
    other.add_argument("--pairs", type=int, default=8,
                       help="--sample also interpolates in latent space between this many pairs of test digits")

    args = parser.parse_args(argv)
    positive = {"--couplings": args.couplings, "--hidden": args.hidden, "--depth": args.depth,
                "--batch-size": args.batch_size, "--n": args.n, "--pairs": args.pairs}
    for flag, value in positive.items():
        if value <= 0:
            parser.error(f"{flag} must be positive, got {value}")
    if args.epochs < 0:
        parser.error(f"--epochs must be zero or more, got {args.epochs}")
    if args.time_budget is not None and args.time_budget <= 0:
        parser.error(f"--time-budget must be positive, got {args.time_budget}")
    if not 0 < args.alpha < 0.5:
        parser.error(f"--alpha must lie in (0, 0.5), got {args.alpha}")
    if not 0 <= args.dropout < 1:
        parser.error(f"--dropout must lie in [0, 1), got {args.dropout}")
    if args.weight_decay < 0:
        parser.error(f"--weight-decay must be zero or more, got {args.weight_decay}")
    if not args.lr > 0 or min(args.temperature) <= 0:
        parser.error("--lr and --temperature must be positive")
    if args.eval and args.sample:
        parser.error("--eval and --sample are separate jobs: give one")
    return args


def pick_device(name):
    available = {
        "cuda": torch.cuda.is_available(),
        "mps": getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available(),
    }
    if name == "auto":
        name = next((device for device, ok in available.items() if ok), "cpu")
    elif name != "cpu" and not available[name]:
        raise UsageError(f"--device {name} was asked for, but this machine has no {name} device")
    return torch.device(name)


def pick_precision(name, device):
    """The autocast dtype for the coupling nets, or None for plain float32."""
    fast_bf16 = {
        "cuda": device.type == "cuda" and torch.cuda.is_bf16_supported(),
        "cpu": device.type == "cpu" and any(getattr(torch.cpu, check, lambda: False)()
                                            for check in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")),
    }.get(device.type, False)
    if name == "auto":
        name = "bf16" if fast_bf16 else "fp32"
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def nets_autocast(device, low_precision):
    """The autocast context the coupling nets run under: `low_precision` (a dtype from
    `pick_precision`), or none at all when it is None."""
    return torch.autocast(device.type, dtype=low_precision or torch.float32, enabled=low_precision is not None)


def get_data(args, split):
    """uint8 images [N, 1, 28, 28] of a split, downloading MNIST first when it is missing.

    Under torchrun the first process downloads while the others wait.
    """
    try:
        if rank() == 0:
            ensure_mnist(args.data, mirrors=args.mirror)
        if dist.is_initialized():
            dist.barrier()
        images, _ = load_mnist(args.data, split)
    except MnistDownloadError as error:
        print(error, file=sys.stderr)
        print("or let main.py install it: python main.py --mirror /path/to/folder/with/the/gz/files", file=sys.stderr)
        raise SystemExit(1)
    except (OSError, ValueError) as error:  # a missing or corrupt file
        print(f"main.py: error: {error}", file=sys.stderr)
        raise SystemExit(1)
    return images.unsqueeze(1)


# --------------------------------------------------------------------------- several processes (torchrun)


def start_distributed(device):
    """Join the process group that torchrun set up; returns the device this process uses."""
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def rank():
    return dist.get_rank() if dist.is_initialized() else 0


def world_size():
    return dist.get_world_size() if dist.is_initialized() else 1


def reduce(tensor, op=dist.ReduceOp.SUM):
    """all_reduce across processes; the tensor itself in a single process."""
    if dist.is_initialized():
        dist.all_reduce(tensor, op=op)
    return tensor


def say(*message):
    """print, from the first process only."""
    if rank() == 0:
        tqdm.write(" ".join(map(str, message)))


# --------------------------------------------------------------------------- training


def learning_rate(args, progress):
    """Cosine decay from --lr to 0 as progress goes from 0 to 1, after a short linear warm-up."""
    warmup = 0.02
    if progress < warmup:
        return args.lr * progress / warmup
    return args.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, (progress - warmup) / (1 - warmup))))


def make_optimizer(model, lr, weight_decay=0.0):
    """Adam with decoupled weight decay (AdamW: w <- w - lr * (adam_step + weight_decay * w);
    plain Adam when weight_decay is 0), in its fused kernel: one pass over the weights,
    inside which `ClippedOptimizerStep` also clips and skips."""
    return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, fused=True)


class NegativeLogLikelihood(nn.Module):
    """The training loss, -mean log p(v) over a batch of uint8 images, as a module.

    As a module it can be wrapped in DistributedDataParallel, which averages the
    gradients across processes during backward.
    """

    def __init__(self, flow, alpha):
        super().__init__()
        self.flow, self.alpha = flow, alpha

    def forward(self, images):
        return -log_density(self.flow, images, self.alpha).mean()


class ClippedOptimizerStep:
    """The part of a training step after backward: clip, then step or skip.

    A call clips the gradients to norm MAX_GRAD_NORM and takes the optimizer's step, or
    skips the step when the gradients are not finite, so that they never reach the
    weights or Adam's moments. Both happen inside the fused Adam kernel: the gradients
    are read once for their norm, never rescaled in a pass of their own, and nothing
    waits for the device. The backward before a call must be of the loss times
    `loss_scale`, which is 1 unless `low_precision` is float16: float16 gradients
    underflow unless the loss is scaled up, so it starts at FLOAT16_LOSS_SCALE (2^16),
    halves after a skipped step and doubles after FLOAT16_GROWTH_INTERVAL (2000) good
    ones in a row.
    """

    def __init__(self, optimizer, low_precision=None):
        self.optimizer = optimizer
        self.parameters = [p for group in optimizer.param_groups for p in group["params"]]
        device = self.parameters[0].device
        self.float16 = low_precision == torch.float16
        self.loss_scale = torch.tensor(FLOAT16_LOSS_SCALE if self.float16 else 1.0, device=device)
        self.good_steps = torch.zeros((), device=device)  # float16: good steps since the scale last changed

    def __call__(self):
        """Steps or skips; returns whether it stepped, as a bool tensor on the device."""
        norm = torch.nn.utils.get_total_norm([p.grad for p in self.parameters if p.grad is not None])
        norm = norm / self.loss_scale
        finite = torch.isfinite(norm)
        # Fused Adam divides each gradient by `grad_scale` and skips the whole step where
        # `found_inf` is 1: the interface torch.amp.GradScaler drives it through.
        self.optimizer.grad_scale = (self.loss_scale * torch.clamp(norm / MAX_GRAD_NORM, min=1)).float()
        self.optimizer.found_inf = (~finite).float()
        try:
            self.optimizer.step()
        finally:
            del self.optimizer.grad_scale, self.optimizer.found_inf
        if self.float16:
            self.good_steps = torch.where(finite, self.good_steps + 1, 0)
            grow = self.good_steps == FLOAT16_GROWTH_INTERVAL
            self.loss_scale = self.loss_scale * torch.where(grow, 2.0, torch.where(finite, 1.0, 0.5))
            self.good_steps = torch.where(grow, 0, self.good_steps)
        return finite


def make_training_step(model, optimizer, alpha, low_precision=None, compile=False):
    """A function batch -> loss that does one step of gradient descent on -mean log p(v).

    The coupling nets run in `low_precision` (autocast) when it is given. With `compile`,
    the loss and its backward go through torch.compile, which fuses the element-wise work
    around the nets' matrix products; it compiles for the size of the first batch, and
    batches of another size (the short one at the end of an epoch) run uncompiled rather
    than compiling again.

    After the backward, a `ClippedOptimizerStep` clips the gradients and steps; a step
    whose loss or gradients are not finite is skipped. The loss comes back as a tensor on
    the device, NaN when the step was skipped.
    """
    autocast = nets_autocast(next(model.parameters()).device, low_precision)
    optimizer_step = ClippedOptimizerStep(optimizer, low_precision)
    objective = NegativeLogLikelihood(model, alpha)
    if dist.is_initialized():
        # Broadcasts rank 0's weights once, then averages the gradients; the buffers are constants.
        # Every process then sees the same gradients, so all clip and skip alike.
        objective = DistributedDataParallel(objective, broadcast_buffers=False)
    compiled_objective = torch.compile(objective, dynamic=False) if compile else objective
    compiled_size = None  # the batch size compiled_objective is for: the first one

    def step(batch):
        nonlocal compiled_size
        if compiled_size is None:
            compiled_size = len(batch)
        with autocast:
            loss = (compiled_objective if len(batch) == compiled_size else objective)(batch)
        optimizer.zero_grad(set_to_none=True)
        # A non-finite loss makes every gradient NaN, in every process, so all skip the step.
        (loss * torch.where(torch.isfinite(loss), optimizer_step.loss_scale, math.nan)).backward()
        stepped = optimizer_step()
        return torch.where(stepped, loss.detach(), math.nan)

    return step


class TrainingLosses:
    """The training losses, summed on the device so that a step costs no host sync.

    `read()` syncs once, every LOG_INTERVAL steps. The NaN losses of skipped steps stay
    out of the sums and are counted in a streak instead, which goes on across epochs.
    """

    def __init__(self, device):
        self.sums = torch.zeros(2, dtype=torch.float64, device=device)  # [sum of finite losses, their number]
        self.streak = torch.zeros((), dtype=torch.float64, device=device)  # skipped steps in a row
        self.longest_streak = torch.zeros_like(self.streak)
        self.sums_at_read = torch.zeros(2, dtype=torch.float64)  # on the host, where read() compares
        self.sums_at_epoch_start = self.sums.clone()  # on the device, where epoch_mean() reduces

    def add(self, loss):
        finite = torch.isfinite(loss)
        self.sums += torch.stack([torch.where(finite, loss.double(), 0.0), finite.double()])
        self.streak = torch.where(finite, 0.0, self.streak + 1)
        self.longest_streak = torch.maximum(self.longest_streak, self.streak)

    def read(self):
        """(mean finite loss since the last read, longest streak in any process so far): one host sync."""
        longest = reduce(self.longest_streak.clone(), dist.ReduceOp.MAX)
        sums, longest = torch.cat([self.sums, longest.view(1)]).cpu().split([2, 1])
        loss_sum, count = (sums - self.sums_at_read).tolist()
        self.sums_at_read = sums
        return loss_sum / count if count else math.nan, int(longest)

    def epoch_mean(self):
        """The mean finite loss since the last call (or the start) over all processes."""
        loss_sum, count = reduce(self.sums - self.sums_at_epoch_start).tolist()
        self.sums_at_epoch_start = self.sums.clone()
        return loss_sum / count if count else math.nan


def check_can_compile(device):
    """--compile on a CPU needs a C++ compiler: a one-line error now, not a traceback in the first step."""
    if device.type != "cpu":
        return  # (on a GPU, Triton reports its own missing compiler)
    from torch._inductor.cpp_builder import get_cpp_compiler

    try:
        get_cpp_compiler()
    except RuntimeError as error:  # torch's InvalidCxxCompiler
        raise UsageError(f"--compile needs a C++ compiler: {error}; install one, or train without --compile") from None


def train(args, device):
    if args.compile:
        check_can_compile(device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    all_train = get_data(args, "train")
    valid_size = max(1, min(VALIDATION_SIZE, len(all_train) // 10))
    train_images, valid_images = all_train[:-valid_size], all_train[-valid_size:]
    test_images = get_data(args, "test")
    train_images = train_images.to(device)  # uint8 on the device, dequantized per batch
    writer = rank() == 0  # only the first process writes files and progress

    torch.manual_seed(args.seed)
    model_args = model_arguments(args)
    model = build_model(model_args).to(device)
    optimizer = make_optimizer(model, args.lr, args.weight_decay)
    shuffle = torch.Generator().manual_seed(args.seed)  # the same order in every process
    start_epoch, best_valid, seconds_before = 0, math.inf, 0.0

    if args.resume:
        state = load_checkpoint(out / "latest.pt")
        if complete_model_args(state["model_args"]) != model_args:
            raise UsageError(f"{out / 'latest.pt'} holds a different model: {state['model_args']}")
        model.load_state_dict(state["model"])
        settings = [{key: value for key, value in group.items() if key != "params"} for group in optimizer.param_groups]
        optimizer.load_state_dict(state["optimizer"])  # Adam's moments from the checkpoint,
        for group, setting in zip(optimizer.param_groups, settings):  # its settings from this run's flags
            group.update(setting)
        torch.set_rng_state(state["rng"])
        if device.type == "cuda" and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(state["cuda_rng"], device)
        shuffle.set_state(state["shuffle_rng"])
        start_epoch, best_valid, seconds_before = state["epoch"], state["best_valid_bpd"], state["train_seconds"]
        say(f"resuming from {out / 'latest.pt'} after epoch {start_epoch}")
    else:
        init_batch = train_images[torch.randperm(len(train_images), generator=shuffle)[:INIT_BATCH].to(device)]
        data_dependent_init(model, dequantize_and_logit(init_batch, args.alpha)[0])
    if rank() > 0:  # each process draws its own dequantization noise
        torch.manual_seed(args.seed + 1000 * start_epoch + rank())
    low_precision = pick_precision(args.precision, device)
    training_step = make_training_step(model, optimizer, args.alpha, low_precision, args.compile)

    shard = len(train_images) // world_size()  # images per process and epoch
    steps_per_epoch = math.ceil(shard / args.batch_size)
    total_steps = steps_per_epoch * args.epochs
    parameters = sum(p.numel() for p in model.parameters())
    say(f"{args.model}: {args.couplings} blocks, hidden {args.hidden} x {args.depth}, "
        f"{parameters / 1e6:.1f}M parameters, on {device}"
        f"{f' x {world_size()} processes' if world_size() > 1 else ''}, coupling nets in "
        f"{str(low_precision or torch.float32).removeprefix('torch.')}; {len(train_images)} training images")
    if args.compile:
        say("the first step compiles the training loss with torch.compile (up to a minute)")
    started = time.monotonic()

    def train_seconds():
        """Seconds of training over this run and the ones it resumes."""
        seconds = seconds_before + time.monotonic() - started
        if dist.is_initialized():  # the slowest clock, so that every process takes the same decisions
            seconds = reduce(torch.tensor(seconds, device=device), dist.ReduceOp.MAX).item()
        return seconds

    def checkpoint(epoch, seconds):
        return {"format": CHECKPOINT_FORMAT, "model_args": model_args, "model": model.state_dict(),
                "optimizer": optimizer.state_dict(), "epoch": epoch, "config": vars(args),
                "rng": torch.get_rng_state(), "shuffle_rng": shuffle.get_state(),
                "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
                "best_valid_bpd": best_valid, "train_seconds": seconds}

    epoch, test_bpd, seconds = start_epoch, None, seconds_before
    losses = TrainingLosses(device)
    try:
        for epoch in range(start_epoch, args.epochs):
            if args.time_budget is not None and train_seconds() >= args.time_budget:
                say(f"time budget of {args.time_budget:.0f} s reached")
                break
            epoch_started = time.monotonic()
            order = torch.randperm(len(train_images), generator=shuffle)[rank() :: world_size()][:shard].to(device)
            bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{args.epochs}", leave=False, unit="step",
                       dynamic_ncols=True, mininterval=1.0, disable=not writer)
            steps_run = 0
            for step_in_epoch in bar:
                step = epoch * steps_per_epoch + step_in_epoch
                progress = step / max(total_steps, 1)  # 0 to 1, by steps or by the time budget
                if args.time_budget is not None:  # by the clock as last read
                    progress = max(progress, seconds / args.time_budget)
                for group in optimizer.param_groups:
                    group["lr"] = learning_rate(args, progress)
                batch = train_images[order[step_in_epoch * args.batch_size : (step_in_epoch + 1) * args.batch_size]]
                losses.add(training_step(batch))
                steps_run += 1
                if steps_run % LOG_INTERVAL == 0 or steps_run == steps_per_epoch:
                    recent_loss, bad_streak = losses.read()
                    if bad_streak >= MAX_BAD_STEPS:
                        raise TrainingDiverged(f"{bad_streak} steps in a row had a non-finite loss or gradients; "
                                               "lower --lr and try again")
                    rate = steps_run * args.batch_size * world_size() / (time.monotonic() - epoch_started)
                    bar.set_postfix(bpd=f"{bits_per_dim(-recent_loss):.3f}", img_s=f"{rate:.0f}")
                    if args.time_budget is not None:  # (the clock costs a collective under torchrun)
                        seconds = train_seconds()
                        if seconds >= args.time_budget:
                            break
            bar.close()
            epoch_seconds = time.monotonic() - epoch_started
            seconds = train_seconds()
            valid_bpd = evaluate(model, valid_images, args.alpha, device)
            test_bpd = evaluate(model, test_images, args.alpha, device)
            train_bpd = bits_per_dim(-losses.epoch_mean())
            improved = math.isfinite(valid_bpd) and valid_bpd < best_valid
            best_valid = valid_bpd if improved else best_valid
            if writer:
                metrics = {"epoch": epoch + 1, "train_bpd": train_bpd, "valid_bpd": valid_bpd, "test_bpd": test_bpd,
                           "seconds": round(epoch_seconds, 2),
                           "samples_per_s": round(steps_run * args.batch_size * world_size() / epoch_seconds, 1)}
                # Checkpoints first: a crash in between can lose this metrics line, never write it twice.
                if improved:
                    save_checkpoint(out / "best.pt", checkpoint(epoch + 1, seconds))
                save_checkpoint(out / "latest.pt", checkpoint(epoch + 1, seconds))
                with open(out / "metrics.jsonl", "a") as file:
                    file.write(json.dumps(metrics) + "\n")
                save_samples(model, out / f"samples_{epoch + 1:03d}.png", args.alpha, temperature=0.7)
                say(f"epoch {epoch + 1}: train {train_bpd:.4f}  valid {valid_bpd:.4f}  test {test_bpd:.4f} bits/dim  "
                    f"({epoch_seconds:.0f} s, {metrics['samples_per_s']:.0f} img/s)")
    except KeyboardInterrupt:
        # Keep the weights trained so far; the interrupted epoch counts as not done.
        if writer:
            save_checkpoint(out / "latest.pt", checkpoint(epoch, seconds))
            print(f"\ninterrupted: saved {out / 'latest.pt'} (resume with --resume)")
        raise SystemExit(130)

    if test_bpd is None:
        test_bpd = evaluate(model, test_images, args.alpha, device)
    say(f"final test bits/dim: {test_bpd:.4f}")
    return model, test_bpd


def main(argv=None):
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # a polite kill saves like Ctrl-C
    try:
        device = pick_device(args.device)
        if int(os.environ.get("WORLD_SIZE", 1)) > 1:  # started by torchrun with several processes
            device = start_distributed(device)
        if args.eval:
            state = load_checkpoint(args.eval)
            model = model_from_checkpoint(state, device)
            test_bpd = evaluate(model, get_data(args, "test"), state["model_args"]["alpha"], device)
            say(f"test bits/dim: {test_bpd:.4f}")
        elif args.sample and rank() == 0:
            state = load_checkpoint(args.sample)
            model = model_from_checkpoint(state, device)
            alpha, out = state["model_args"]["alpha"], Path(args.out)
            out.mkdir(parents=True, exist_ok=True)
            for temperature in args.temperature:
                path = out / f"samples_t{temperature:g}.png"
                save_samples(model, path, alpha, n=args.n, temperature=temperature)
                print(f"wrote {args.n} samples at temperature {temperature:g} to {path}")
            pairs = get_data(args, "test")[: 2 * args.pairs].to(device)
            save_interpolations(model, pairs, out / "interpolation.png", alpha)
            print(f"wrote latent interpolations between {len(pairs) // 2} pairs of test digits to {out / 'interpolation.png'}")
        elif not args.sample:
            train(args, device)
    except UsageError as error:
        print(f"main.py: error: {error}", file=sys.stderr)
        return 2
    except TrainingDiverged as error:
        print(f"main.py: training stopped: {error}", file=sys.stderr)
        return 1
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
