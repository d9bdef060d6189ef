"""Training throughput of the default MNIST RealNVP, against the compute floor of its nets.

    python benchmarks/throughput.py                   # the defaults of main.py
    python benchmarks/throughput.py --batch-size 512 --repeats 7
    python benchmarks/throughput.py --mixing --dropout 0.2   # any of main.py's model flags

Prints, for the model main.py trains with the same flags (by default, its default model):

  full step    dequantize, logit, logProbability, backward, clip, optimizer: main.py's own
               training step, in float32 and in mixed precision (coupling nets in bf16/fp16)
  nets alone   the same coupling MLPs, forward + backward + optimizer on random tensors of
               the same shapes, in float32: what the step would cost with no flow around it
  sampling     samples/s of model.sample under inference_mode
  memory       peak resident memory (CPU) or peak allocated memory (CUDA)

Every figure is the median over --repeats timed runs of --steps steps each, all measured
in one run, so the ratios hold even on a shared, noisy machine. The last line is JSON.
"""
import argparse
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


def median_rate(run_steps, batch_size, steps, repeats, device):
    """Median samples/s of `run_steps(steps)` over `repeats` timings, after one warm-up."""
    run_steps(2)
    rates = []
    for _ in range(repeats):
        synchronize(device)
        started = time.perf_counter()
        run_steps(steps)
        synchronize(device)
        rates.append(batch_size * steps / (time.perf_counter() - started))
    return statistics.median(rates)


def full_step_rate(args, model_args, device, low_precision, images, repeats):
    torch.manual_seed(0)
    model = main.build_model(model_args).to(device)
    optimizer = main.make_optimizer(model, args.lr)
    step = main.make_training_step(model, optimizer, model_args["alpha"], low_precision)

    def run(steps):
        for i in range(steps):
            step(images[i % len(images)])

    return median_rate(run, args.batch_size, args.steps, repeats, device), model


def nets_alone_rate(args, model, device, repeats):
    """The coupling MLPs of `model` trained on random inputs of the shapes they see in the flow."""
    nets = [m for m in model.modules() if isinstance(m, MLP)]
    optimizer = main.make_optimizer(torch.nn.ModuleList(nets), args.lr)
    inputs = [torch.randn(args.batch_size, net.shapes[0], device=device) for net in nets]

    def run(steps):
        for _ in range(steps):
            loss = sum(net(x).square().mean() for net, x in zip(nets, inputs))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    return median_rate(run, args.batch_size, args.steps, repeats, device)


def sampling_rate(args, model, device, repeats):
    model.eval()

    @torch.inference_mode()
    def run(steps):
        for _ in range(steps):
            model.sample(args.batch_size)

    return median_rate(run, args.batch_size, args.steps, repeats, device)


def peak_memory_mb(device):
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # Linux reports KiB


def main_benchmark(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=None, help="default: main.py's")
    parser.add_argument("--steps", type=int, default=10, help="steps per timing")
    parser.add_argument("--repeats", type=int, default=5, help="timings per figure (the median is reported)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="auto")
    parser.add_argument("--precision", choices=["auto", "bf16", "fp16"], default="auto",
                        help="the mixed precision to compare with float32")
    args, model_flags = parser.parse_known_args(argv)

    defaults = main.parse_args(model_flags)  # main.py's own parser: its defaults and checks
    args.batch_size = args.batch_size or defaults.batch_size
    args.lr = defaults.lr
    device = main.pick_device(args.device)
    low_precision = main.pick_precision(args.precision, device) or torch.bfloat16
    model_args = main.model_arguments(defaults)
    torch.manual_seed(0)
    images = [torch.randint(0, 256, (args.batch_size, *main.IMAGE_SHAPE), dtype=torch.uint8, device=device)
              for _ in range(4)]
    print(f"{model_args}, batch {args.batch_size}, {device}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}")

    # Interleave the measurements so that a change in machine load hits all of them alike.
    figures = {"fp32_step": [], "mixed_step": [], "fp32_nets": [], "sampling": []}
    for _ in range(args.repeats):
        rate, model = full_step_rate(args, model_args, device, None, images, 1)
        figures["fp32_step"].append(rate)
        figures["fp32_nets"].append(nets_alone_rate(args, model, device, 1))
        figures["sampling"].append(sampling_rate(args, model, device, 1))
        figures["mixed_step"].append(full_step_rate(args, model_args, device, low_precision, images, 1)[0])
    result = {name: round(statistics.median(values), 1) for name, values in figures.items()}
    result["fp32_step_over_nets"] = round(result["fp32_step"] / result["fp32_nets"], 3)
    result["mixed_over_fp32_step"] = round(result["mixed_step"] / result["fp32_step"], 3)
    result["mixed_precision"] = str(low_precision).removeprefix("torch.")
    result["peak_memory_mb"] = round(peak_memory_mb(device), 1)
    result["batch_size"] = args.batch_size

    print(f"full step, float32:            {result['fp32_step']:8.1f} samples/s")
    print(f"full step, {result['mixed_precision']:>8}:           {result['mixed_step']:8.1f} samples/s")
    print(f"coupling nets alone, float32:  {result['fp32_nets']:8.1f} samples/s  (the compute floor)")
    print(f"sampling:                      {result['sampling']:8.1f} samples/s")
    print(f"full fp32 step / nets alone:   {result['fp32_step_over_nets']:.3f}  (target >= 0.95)")
    print(f"mixed / fp32 full step:        {result['mixed_over_fp32_step']:.3f}  (target >= 2.0)")
    print(f"peak memory:                   {result['peak_memory_mb']:.0f} MB")
    print(json.dumps(result))


if __name__ == "__main__":
    main_benchmark()
