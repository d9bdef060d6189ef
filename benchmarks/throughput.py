"""Training throughput of the default MNIST RealNVP, against the compute floor of its nets.

    python benchmarks/throughput.py                   # the defaults of main.py
    python benchmarks/throughput.py --compile         # main.py's step under torch.compile, and without
    python benchmarks/throughput.py --batch-size 512 --repeats 7
    python benchmarks/throughput.py --mixing --dropout 0.2   # main.py's model flags

main.py's flags choose what is measured: the model flags, --batch-size, --lr,
--weight-decay, --device, --compile, and --precision for the mixed precision to set
against float32 (auto: bf16 or fp16 as main.py picks them, and bf16 where main.py would
pick float32). Prints, for that model:

  full step    dequantize, logit, logProbability, backward, clip, optimizer: main.py's own
               training step, in float32 and in mixed precision (coupling nets in bf16/fp16);
               with --compile, compiled, and uncompiled for comparison
  nets alone   the same coupling MLPs, uncompiled, forward + backward + main.py's optimizer
               step (clip, fused Adam) on random tensors of the shapes they see in the flow:
               what the step would cost with no flow around it (the compute floor), in
               float32 and in the mixed precision
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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import main  # noqa: E402  (the repository's main.py)
from test import MLP  # noqa: E402


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


def full_step(flags, model_args, device, low_precision, images, compile):
    """main.py's training step on a freshly built model: returns (run(steps), the model)."""
    torch.manual_seed(0)
    model = main.build_model(model_args).to(device)
    optimizer = main.make_optimizer(model, flags.lr, flags.weight_decay)
    step = main.make_training_step(model, optimizer, model_args["alpha"], low_precision, compile)

    def run(steps):
        for i in range(steps):
            step(images[i % len(images)])

    return run, model


def nets_alone(flags, model, alpha, device, low_precision, images):
    """The coupling MLPs of `model` trained alone, on random tensors of the shapes they see in the flow.

    Each net gets what it gets inside the flow's step and nothing more: an input of the
    same shape that needs a gradient exactly when it does in the flow (all but the nets
    that read the data itself, as the first block's do with --no-actnorm), a ready-made
    gradient for its output in place of the flow's backward, and main.py's optimizer step
    (clipping and fused Adam, `main.ClippedOptimizerStep`). With `low_precision`, under
    the same autocast. In float16 the output gradients are not scaled by the loss scale,
    so the floor never skips a step, unlike the real step while its loss scale of 2^16
    comes down. The nets are a copy, so that training them leaves `model` as it was.
    """
    model = copy.deepcopy(model)
    nets = [m for m in model.modules() if isinstance(m, MLP)]
    seen = {}  # net -> its input in one forward pass of the flow

    def record_input(net, inputs):
        seen[net] = inputs[0]

    hooks = [net.register_forward_pre_hook(record_input) for net in nets]
    main.log_density(model, images[0], alpha)
    for hook in hooks:
        hook.remove()
    inputs = [torch.randn_like(seen[net]).requires_grad_(seen[net].requires_grad) for net in nets]
    autocast = main.nets_autocast(device, low_precision)
    with autocast:
        output_grads = [torch.randn_like(net(x)) for net, x in zip(nets, inputs)]  # in the nets' output dtype
    optimizer = main.make_optimizer(torch.nn.ModuleList(nets), flags.lr, flags.weight_decay)
    optimizer_step = main.ClippedOptimizerStep(optimizer, low_precision)

    def run(steps):
        for _ in range(steps):
            with autocast:
                outputs = [net(x) for net, x in zip(nets, inputs)]
            optimizer.zero_grad(set_to_none=True)
            for x in inputs:
                x.grad = None
            torch.autograd.backward(outputs, output_grads)
            optimizer_step()

    return run


def sampling(model, batch_size):
    def run(steps):
        with main.inference(model):
            for _ in range(steps):
                model.sample(batch_size)

    return run


def peak_memory_mb(device):
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # Linux reports KiB


def main_benchmark(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10, help="steps per timing")
    parser.add_argument("--repeats", type=int, default=5, help="timings per figure (the median is reported)")
    args, main_flags = parser.parse_known_args(argv)
    if args.steps <= 0 or args.repeats <= 0:
        parser.error("--steps and --repeats must be positive")
    flags = main.parse_args(main_flags)  # main.py's own parser: its defaults and checks
    if flags.precision == "fp32":
        parser.error("--precision names the mixed precision to set against float32: auto, bf16 or fp16")
    device = main.pick_device(flags.device)
    low_precision = main.pick_precision(flags.precision, device) or torch.bfloat16
    model_args = main.model_arguments(flags)
    torch.manual_seed(0)
    images = [torch.randint(0, 256, (flags.batch_size, *main.IMAGE_SHAPE), dtype=torch.uint8, device=device)
              for _ in range(4)]
    print(f"{model_args}, batch {flags.batch_size}, {device}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}{', compiled step' if flags.compile else ''}")

    eager_fp32_step, model = full_step(flags, model_args, device, None, images, False)
    eager_fp32_step(2)  # warm-up, then the memory, before anything else is built
    memory = peak_memory_mb(device)
    runs = {"fp32_step": eager_fp32_step,
            "mixed_step": full_step(flags, model_args, device, low_precision, images, False)[0],
            "fp32_nets": nets_alone(flags, model, model_args["alpha"], device, None, images),
            "mixed_nets": nets_alone(flags, model, model_args["alpha"], device, low_precision, images),
            "sampling": sampling(model, flags.batch_size)}
    if flags.compile:  # the compiled steps become the full steps; the uncompiled ones stay, for comparison
        runs["fp32_step_eager"], runs["mixed_step_eager"] = runs["fp32_step"], runs["mixed_step"]
        runs["fp32_step"] = full_step(flags, model_args, device, None, images, True)[0]
        runs["mixed_step"] = full_step(flags, model_args, device, low_precision, images, True)[0]
    for run in runs.values():
        run(2)
    figures = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, run in runs.items():
            figures[name].append(rate(run, flags.batch_size, args.steps, device))

    result = {name: round(statistics.median(values), 1) for name, values in figures.items()}
    result["fp32_step_over_nets"] = round(result["fp32_step"] / result["fp32_nets"], 3)
    result["mixed_step_over_nets"] = round(result["mixed_step"] / result["mixed_nets"], 3)
    result["mixed_over_fp32_step"] = round(result["mixed_step"] / result["fp32_step"], 3)
    result["mixed_over_fp32_nets"] = round(result["mixed_nets"] / result["fp32_nets"], 3)
    if flags.compile:
        result["fp32_compiled_over_eager"] = round(result["fp32_step"] / result["fp32_step_eager"], 3)
        result["mixed_compiled_over_eager"] = round(result["mixed_step"] / result["mixed_step_eager"], 3)
    result["mixed_precision"] = str(low_precision).removeprefix("torch.")
    result["peak_memory_mb"] = round(memory, 1)
    result["batch_size"] = flags.batch_size
    result["compiled"] = flags.compile

    mixed = result["mixed_precision"]
    print(f"full step, float32:              {result['fp32_step']:8.1f} samples/s")
    print(f"full step, {mixed:>8}:             {result['mixed_step']:8.1f} samples/s")
    print(f"coupling nets alone, float32:    {result['fp32_nets']:8.1f} samples/s  (the compute floor)")
    print(f"coupling nets alone, {mixed:>8}:   {result['mixed_nets']:8.1f} samples/s  (its floor)")
    print(f"sampling:                        {result['sampling']:8.1f} samples/s")
    print(f"full float32 step / nets alone:  {result['fp32_step_over_nets']:.3f}  (target >= 0.95)")
    print(f"full {mixed:>8} step / nets alone: {result['mixed_step_over_nets']:.3f}")
    print(f"mixed / float32 full step:       {result['mixed_over_fp32_step']:.3f}  (target >= 2.0)")
    print(f"mixed / float32 nets alone:      {result['mixed_over_fp32_nets']:.3f}  (what the nets themselves gain)")
    if flags.compile:
        print(f"compiled / uncompiled step:      {result['fp32_compiled_over_eager']:.3f} in float32, "
              f"{result['mixed_compiled_over_eager']:.3f} in {mixed} "
              f"(uncompiled: {result['fp32_step_eager']:.1f} and {result['mixed_step_eager']:.1f} samples/s)")
    print(f"peak memory (uncompiled float32 step): {result['peak_memory_mb']:.0f} MB")
    print(json.dumps(result))


if __name__ == "__main__":
    main_benchmark()
