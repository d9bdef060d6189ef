"""Training throughput of main.py's model on MNIST, against the compute floor of its nets.

    python benchmarks/throughput.py                   # the defaults of main.py: compiled, and uncompiled beside
    python benchmarks/throughput.py --no-compile      # uncompiled steps only
    python benchmarks/throughput.py --batch-size 512 --repeats 7
    python benchmarks/throughput.py --model realnvp --conv-channels 32   # main.py's model flags

It takes main.py's model flags (command_line.py) and the training flags that set the speed:
--batch-size, --lr, --device, --compile (on by default, as in main.py), and --precision for the mixed
precision to set against float32 (auto: the one main.py picks; where main.py picks float32,
as on a CPU without fast bfloat16, only float32 is timed). Prints, for that model:

  full step    dequantize, logit, logProbability, backward, clip, optimizer: main.py's own
               training step (training.TrainingStep), in float32 and in mixed precision
               (coupling nets in bf16/fp16); with --compile, compiled, and uncompiled
  nets alone   the same coupling nets, uncompiled, forward + backward + the same clip and
               fused AdamW, through the same TrainingStep, on random tensors of the shapes
               they see in the flow: what the step would cost with no flow around it (the
               compute floor), in float32 and in the mixed precision
  sampling     samples/s of model.sample under inference_mode
  memory       peak resident memory of the process (CPU) or peak allocated memory (CUDA),
               read after the uncompiled float32 step's warm-up, before anything else is built

Every figure is the median over --repeats timings of --steps steps each. All are measured
in one run, interleaved, after one warm-up each (which also compiles, with --compile), so
that a change in the machine's load hits them alike and the ratios hold even on a shared,
noisy machine. The last line is JSON.
"""
import argparse
import copy
import json
import resource
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from command_line import add_model_flags, add_training_flags  # noqa: E402
from models import IMAGE_SHAPE, build_model, model_config  # noqa: E402
from multiscale import ConvCouplingNet  # noqa: E402
from pixels import NegativeLogLikelihood  # noqa: E402
from test import MLP  # noqa: E402
from training import (TrainingStep, evaluation_mode, make_optimizer, nets_autocast, pick_device,  # noqa: E402
                      pick_precision)


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def rate(run, batch_size, steps, device):
    """Samples/s of one call run(steps)."""
    synchronize(device)
    started = time.perf_counter()
    run(steps)
    synchronize(device)
    return batch_size * steps / (time.perf_counter() - started)


def full_step(flags, config, precision, images, compile):
    """main.py's training step on a freshly built model: returns (run(steps), the model)."""
    torch.manual_seed(0)
    model = build_model(config).to(images[0].device)
    optimizer = make_optimizer(model, flags.lr)
    step = TrainingStep(NegativeLogLikelihood(model, config["alpha"]), optimizer, precision, compile)

    def run(steps):
        for i in range(steps):
            step(images[i % len(images)])

    return run, model


class NetsAlone(nn.Module):
    """The coupling MLPs of a flow on fixed random inputs of the shapes they see in it.

    Its "loss" is sum_k <net_k(x_k), g_k> for fixed random g_k, so that backward hands each
    net the ready-made output gradient g_k in place of the flow's backward. Each input
    needs a gradient exactly where it does in the flow (all but the nets that read the
    data itself, as the first block's would without ActNorm). The batch is ignored.
    """

    def __init__(self, flow, images, alpha, device, precision):
        super().__init__()
        self.nets = nn.ModuleList(m for m in flow.modules() if isinstance(m, (MLP, ConvCouplingNet)))
        seen = {}  # net -> its input in one forward pass of the flow
        hooks = [net.register_forward_pre_hook(lambda net, inputs: seen.update({net: inputs[0]}))
                 for net in self.nets]
        NegativeLogLikelihood(flow, alpha)(images)
        for hook in hooks:
            hook.remove()
        self.inputs = [torch.randn_like(seen[net]).requires_grad_(seen[net].requires_grad) for net in self.nets]
        with nets_autocast(device, precision), torch.no_grad():  # gradients in the nets' output dtype
            self.output_grads = [torch.randn_like(net(x)) for net, x in zip(self.nets, self.inputs)]

    def forward(self, batch):
        for x in self.inputs:  # fresh input gradients every step, as the flow's activations get
            x.grad = None
        return sum((net(x) * g).sum() for net, x, g in zip(self.nets, self.inputs, self.output_grads))


def nets_alone(flags, model, config, device, precision, images):
    """The nets of (a copy of) `model` trained alone through main.py's own TrainingStep: the compute floor."""
    objective = NetsAlone(copy.deepcopy(model), images[0], config["alpha"], device, precision)
    step = TrainingStep(objective, make_optimizer(objective, flags.lr), precision)

    def run(steps):
        for _ in range(steps):
            step(None)

    return run


def sampling(model, batch_size):
    def run(steps):
        with evaluation_mode(model):
            for _ in range(steps):
                model.sample(batch_size)

    return run


def peak_memory_mb(device):
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # Linux reports KiB


def parse_flags(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10, help="steps per timing")
    parser.add_argument("--repeats", type=int, default=5, help="timings per figure (the median is reported)")
    add_model_flags(parser)
    add_training_flags(parser)  # main.py's: --lr, --batch-size, --seed, --precision, --compile, --device
    flags = parser.parse_args(argv)
    flags.model_config = model_config(flags.model, flags.blocks, flags.hidden, flags.conv_channels or 0)
    if min(flags.steps, flags.repeats, flags.batch_size, flags.blocks, flags.model_config["hidden"]) <= 0:
        parser.error("--steps, --repeats, --batch-size, --blocks and --hidden must be positive")
    if flags.precision == "fp32":
        parser.error("--precision names the mixed precision to set against float32: auto, bf16 or fp16")
    return flags


def main_benchmark(argv=None):
    flags = parse_flags(argv)
    device = pick_device(flags.device)
    precisions = {"fp32": None}  # label -> the coupling nets' autocast dtype
    mixed_precision = pick_precision(flags.precision, device)
    if mixed_precision is not None:
        precisions["mixed"] = mixed_precision
    config = flags.model_config
    torch.manual_seed(0)
    images = [torch.randint(0, 256, (flags.batch_size, *IMAGE_SHAPE), dtype=torch.uint8, device=device)
              for _ in range(4)]
    print(f"{config}, batch {flags.batch_size}, {device}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}{', compiled step' if flags.compile else ''}")
    if mixed_precision is None:
        print("mixed precision: not timed, as main.py trains in float32 here (bfloat16 would be emulated); "
              "--precision bf16 times it anyway")

    eager_fp32_step, model = full_step(flags, config, None, images, False)
    eager_fp32_step(2)  # warm-up, then the memory, before anything else is built
    memory = peak_memory_mb(device)
    runs = {}
    for label, precision in precisions.items():
        runs[f"{label}_step"] = eager_fp32_step if precision is None else full_step(flags, config, precision, images,
                                                                                     False)[0]
        runs[f"{label}_nets"] = nets_alone(flags, model, config, device, precision, images)
    runs["sampling"] = sampling(model, flags.batch_size)
    if flags.compile:  # the compiled steps become the full steps; the uncompiled ones stay, for comparison
        for label, precision in precisions.items():
            runs[f"{label}_step_eager"] = runs[f"{label}_step"]
            runs[f"{label}_step"] = full_step(flags, config, precision, images, True)[0]
    for run in runs.values():
        run(2)
    figures = {name: [] for name in runs}
    for _ in range(flags.repeats):
        for name, run in runs.items():
            figures[name].append(rate(run, flags.batch_size, flags.steps, device))

    result = {name: round(statistics.median(values), 1) for name, values in figures.items()}
    names = {label: str(precision or torch.float32).removeprefix("torch.") for label, precision in precisions.items()}
    for label in precisions:
        result[f"{label}_step_over_nets"] = round(result[f"{label}_step"] / result[f"{label}_nets"], 3)
        if flags.compile:
            result[f"{label}_compiled_over_eager"] = round(result[f"{label}_step"] / result[f"{label}_step_eager"], 3)
    if mixed_precision is not None:
        result["mixed_over_fp32_step"] = round(result["mixed_step"] / result["fp32_step"], 3)
        result["mixed_over_fp32_nets"] = round(result["mixed_nets"] / result["fp32_nets"], 3)
        result["mixed_precision"] = names["mixed"]
    result["peak_memory_mb"] = round(memory, 1)
    result["batch_size"] = flags.batch_size
    result["compiled"] = flags.compile

    for label, name in names.items():
        print(f"full step, {name}: {result[f'{label}_step']:.1f} samples/s")
        print(f"coupling nets alone, {name}: {result[f'{label}_nets']:.1f} samples/s  (the compute floor)")
    print(f"sampling: {result['sampling']:.1f} samples/s")
    for label, name in names.items():
        print(f"full {name} step / nets alone: {result[f'{label}_step_over_nets']:.3f}")
    if mixed_precision is not None:
        print(f"mixed / float32 full step: {result['mixed_over_fp32_step']:.3f}")
        print(f"mixed / float32 nets alone: {result['mixed_over_fp32_nets']:.3f}  (what the nets themselves gain)")
    if flags.compile:
        for label, name in names.items():
            print(f"compiled / uncompiled step, {name}: {result[f'{label}_compiled_over_eager']:.3f} "
                  f"(uncompiled: {result[f'{label}_step_eager']:.1f} samples/s)")
    print(f"peak memory (uncompiled float32 step): {result['peak_memory_mb']:.0f} MB")
    print(json.dumps(result))


if __name__ == "__main__":
    main_benchmark()
