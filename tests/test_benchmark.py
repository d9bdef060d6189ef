"""benchmarks/throughput.py end to end on a tiny model: it runs and prints every figure."""
import importlib.util
import json
from pathlib import Path

import pytest
import torch

spec = importlib.util.spec_from_file_location("throughput", Path(__file__).parent.parent / "benchmarks" / "throughput.py")
throughput = importlib.util.module_from_spec(spec)
spec.loader.exec_module(throughput)

TINY_MODEL = ["--blocks", "2", "--hidden", "8", "--batch-size", "4", "--device", "cpu", "--no-compile"]
RATES = ["fp32_step", "mixed_step", "fp32_nets", "mixed_nets", "sampling"]


def benchmark(capsys, *flags):
    throughput.main_benchmark(["--steps", "1", "--repeats", "2", *TINY_MODEL, *flags])
    output = capsys.readouterr().out.strip().splitlines()
    return output, json.loads(output[-1])


def test_prints_rates_ratios_and_a_json_last_line(capsys):
    output, result = benchmark(capsys, "--precision", "fp16")
    assert all(result[name] > 0 for name in RATES)
    assert result["mixed_precision"] == "float16" and result["batch_size"] == 4 and result["peak_memory_mb"] > 0
    assert not result["compiled"] and "fp32_step_eager" not in result
    assert any(line.startswith("full float32 step / nets alone:") for line in output)


def test_with_compile_it_also_times_the_uncompiled_steps(capsys, monkeypatch):
    compiled = []

    def fake_compile(objective, **options):
        compiled.append(objective)
        return objective

    monkeypatch.setattr(torch, "compile", fake_compile)
    output, result = benchmark(capsys, "--compile", "--precision", "bf16")
    assert len(compiled) == 2  # the float32 and the mixed-precision steps
    assert result["compiled"] and all(result[name] > 0 for name in ["fp32_step_eager", "mixed_step_eager"])
    assert result["mixed_compiled_over_eager"] > 0
    assert any(line.startswith("compiled / uncompiled step, bfloat16:") for line in output)


def test_times_float32_alone_where_main_py_would_train_in_float32(capsys, monkeypatch):
    monkeypatch.setattr(throughput, "pick_precision", lambda name, device: None)  # e.g. bfloat16 emulated
    output, result = benchmark(capsys)
    assert result["fp32_step"] > 0 and result["fp32_nets"] > 0
    assert not any(name.startswith("mixed") for name in result)
    assert any(line.startswith("mixed precision: not timed") for line in output)


@pytest.mark.parametrize("flags", [["--steps", "0"], ["--precision", "fp32"]])
def test_rejects_bad_flags(flags):
    with pytest.raises(SystemExit):
        throughput.main_benchmark([*flags, *TINY_MODEL])
