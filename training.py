"""The training step behind main.py, and what makes it fast: device, precision, compile.

One step of gradient descent on a loss (main.py's: -mean log p(v) over a batch):

    loss = objective(batch)                 # the coupling nets in `precision` (autocast)
    (loss * scale).backward()               # scale = 1, except float16's loss scale
    clip the gradients to norm max_grad_norm (100)
    optimizer.step(), or skip it where the loss or a gradient is not finite

`torch.amp.GradScaler` scales, checks and skips, and hands fused AdamW the result so that
the check costs no wait for the device: a step never waits for the device, and the loss
comes back as a tensor, NaN when the step was skipped (`TrainingLosses` sums them there).

Precision: only the coupling nets run in bfloat16 or float16. The affine updates, the
log-determinants, the prior and the loss stay in float32, so every coupling is still an
exact bijection with an exact log-determinant. float16 gradients underflow unless the
loss is scaled up: its scale starts at 2^16, halves after a skipped step and doubles
after 2000 good ones in a row. bfloat16 has float32's range and needs no scale.
"""
import math
import time
from contextlib import contextmanager

import torch
from torch.nn.utils import clip_grad_norm_

import distributed

MAX_GRAD_NORM = 100.0  # gradients are clipped to this norm
FLOAT16_LOSS_SCALE = 2.0**16  # --precision fp16: the loss scale at the start
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class SetupError(Exception):
    """A device this machine lacks: reported in one line."""


def pick_device(name):
    """torch.device for --device; "auto" takes cuda, then mps, then the CPU."""
    available = {"cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if name == "auto":
        name = next((device for device, ok in available.items() if ok), "cpu")
    elif name != "cpu" and not available[name]:
        raise SetupError(f"--device {name} was asked for, but this machine has no {name} device")
    return torch.device(name)


def pick_precision(name, device):
    """The autocast dtype of the coupling nets for --precision, or None for float32.

    "auto" takes bfloat16 where it is fast: on a GPU that supports it, and on a CPU where
    a bfloat16 matrix product of the nets' shape is measured faster than a float32 one
    (AVX-512 BF16 or AMX; elsewhere bfloat16 is emulated and slower).
    """
    if name != "auto":
        return PRECISIONS[name]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    if device.type == "cpu":
        return torch.bfloat16 if bfloat16_speedup() > 1.3 else None
    return None


def bfloat16_speedup(rows=256, features=512, repeats=3):
    """How many times faster a [rows, features] x [features, features] product runs in
    bfloat16 than in float32 on the CPU: the best of `repeats` timings of two products each
    (well under a second, even where bfloat16 is emulated and 90 times slower)."""
    def best_time(dtype):
        a, b = torch.randn(rows, features, dtype=dtype), torch.randn(features, features, dtype=dtype)
        a @ b  # warm-up
        timings = []
        for _ in range(repeats):
            started = time.perf_counter()
            for _ in range(2):
                a @ b
            timings.append(time.perf_counter() - started)
        return min(timings)

    return best_time(torch.float32) / best_time(torch.bfloat16)


def nets_autocast(device, precision):
    """The autocast the coupling nets run under: `precision` (a dtype), or none for None."""
    return torch.autocast(device.type, dtype=precision or torch.float32, enabled=precision is not None)


def make_optimizer(model, lr):
    """Adam (AdamW without weight decay) in its fused kernel: one pass over the weights."""
    return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0, fused=True)


def cosine_learning_rate(peak, progress, warmup=0.02):
    """A linear warm-up to `peak` over the first 2% of training, then cosine decay to 0;
    `progress` goes from 0 to 1."""
    if progress < warmup:
        return peak * progress / warmup
    return peak * 0.5 * (1 + math.cos(math.pi * min(1.0, (progress - warmup) / (1 - warmup))))


@contextmanager
def evaluation_mode(model):
    """Eval mode and inference mode for a block; the model returns to its mode after."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        model.train(was_training)


class TrainingStep:
    """A callable (batch, ...) -> loss that takes one step of gradient descent on `objective`.

    objective: an nn.Module, (batch, ...) -> scalar loss, whose parameters are the
    optimizer's (main.py's takes the images and, for a conditional flow, their context).
    precision: the coupling nets' autocast dtype (`pick_precision`), None for float32.
    max_grad_norm: the gradients are clipped to this norm.
    compile: run the objective and its backward through torch.compile, which fuses the
    element-wise work around the nets' matrix products. It compiles for the size of the
    first batch; batches of another size (the short one at the end of an epoch) run
    uncompiled rather than compiling again. Where compiling fails (say, a CPU without a
    C++ compiler), the first step says so in one line and training goes on uncompiled.
    """

    def __init__(self, objective, optimizer, precision=None, compile=False, max_grad_norm=MAX_GRAD_NORM):
        self.objective = distributed.average_gradients(objective)
        self.optimizer = optimizer
        self.parameters = [p for group in optimizer.param_groups for p in group["params"]]
        device = self.parameters[0].device
        self.autocast = nets_autocast(device, precision)
        self.float16 = precision == torch.float16
        self.scaler = torch.amp.GradScaler(device.type, init_scale=FLOAT16_LOSS_SCALE if self.float16 else 1.0)
        self.compiled = torch.compile(self.objective, dynamic=False) if compile else None
        self.compiled_size = None  # the batch size `compiled` is for: the first one
        self.max_grad_norm = max_grad_norm

    def __call__(self, batch, *more_inputs):
        inputs = (batch, *more_inputs)
        if self.compiled is not None and self.compiled_size is None:
            self.compiled_size = len(batch)
            try:
                loss = self._loss_and_backward(self.compiled, inputs)
            except Exception as error:  # raised by the compiler, not by the loss: eager runs it below
                reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
                distributed.print_once(f"torch.compile failed ({reason}); training goes on uncompiled")
                self.compiled = None
            else:
                return self._clip_and_step(loss)
        compiled = self.compiled is not None and len(batch) == self.compiled_size
        return self._clip_and_step(self._loss_and_backward(self.compiled if compiled else self.objective, inputs))

    def _loss_and_backward(self, objective, inputs):
        with self.autocast:
            loss = objective(*inputs)
        self.optimizer.zero_grad(set_to_none=True)
        # A non-finite loss makes every gradient NaN, in every process, so all skip the step.
        self.scaler.scale(loss * torch.where(torch.isfinite(loss), 1.0, math.nan)).backward()
        return loss.detach()

    def _clip_and_step(self, loss):
        self.scaler.unscale_(self.optimizer)
        norm = clip_grad_norm_(self.parameters, self.max_grad_norm)  # not finite where a gradient is not
        self.scaler.step(self.optimizer)  # fused AdamW skips the step on the device when it is not
        # float16's scale halves after a skip and grows after good steps; the others' stays 1.
        self.scaler.update(None if self.float16 else 1.0)
        return torch.where(torch.isfinite(norm), loss, math.nan)


class TrainingClock:
    """Seconds of training over this run and the runs it resumes; under torchrun the
    slowest process's, so that every process stops at the same step."""

    def __init__(self, seconds_before, device):
        self.seconds_before, self.started, self.device = seconds_before, time.monotonic(), device

    def read(self):
        seconds = self.seconds_before + time.monotonic() - self.started
        seconds = torch.tensor(seconds, dtype=torch.float64, device=self.device)  # on the device: NCCL reduces there
        return distributed.all_reduce(seconds, torch.distributed.ReduceOp.MAX).item()


class TrainingLosses:
    """The training losses, summed on the device so that a step costs no host sync.

    `read()` syncs once, every few steps. The NaN losses of skipped steps stay out of the
    sums and are counted in a streak instead, which goes on across epochs.
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
        longest = distributed.all_reduce(self.longest_streak.clone(), torch.distributed.ReduceOp.MAX)
        sums, longest = torch.cat([self.sums, longest.view(1)]).cpu().split([2, 1])
        loss_sum, count = (sums - self.sums_at_read).tolist()
        self.sums_at_read = sums
        return loss_sum / count if count else math.nan, int(longest)

    def epoch_mean(self):
        """The mean finite loss since the last call (or the start) over all processes."""
        loss_sum, count = distributed.all_reduce(self.sums - self.sums_at_epoch_start).tolist()
        self.sums_at_epoch_start = self.sums.clone()
        return loss_sum / count if count else math.nan
