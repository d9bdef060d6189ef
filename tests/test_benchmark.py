"""benchmarks/throughput.py end to end on a tiny model: it runs, and its figures add up."""
import importlib.util
import json
from pathlib import Path

import pytest

spec = importlib.util.spec_from_file_location("throughput", Path(__file__).parent.parent / "benchmarks" / "throughput.py")
throughput = importlib.util.module_from_spec(spec)
spec.loader.exec_module(throughput)

TINY_MODEL = ["--couplings", "2", "--hidden", "8", "--depth", "1", "--batch-size", "4", "--device", "cpu"]


def test_prints_rates_ratios_and_a_json_last_line(capsys):
    throughput.main_benchmark(["--steps", "1", "--repeats", "3", *TINY_MODEL])
    output = capsys.readouterr().out.strip().splitlines()
    result = json.loads(output[-1])
    rates = ["fp32_step", "mixed_step", "fp32_nets", "mixed_nets", "sampling"]
    assert all(result[name] > 0 for name in rates)
    assert result["fp32_step_over_nets"] == pytest.approx(result["fp32_step"] / result["fp32_nets"], abs=1e-3)
    assert result["mixed_over_fp32_step"] == pytest.approx(result["mixed_step"] / result["fp32_step"], abs=1e-3)
    assert result["batch_size"] == 4 and result["compiled"] is False and result["peak_memory_mb"] > 0
    assert any(line.startswith("full float32 step / nets alone:") for line in output)


def test_rejects_bad_counts():
    with pytest.raises(SystemExit):
        throughput.main_benchmark(["--steps", "0", *TINY_MODEL])
