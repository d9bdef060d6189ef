"""main.py under torchrun: two CPU processes with gloo on 127.0.0.1, on a tiny synthetic MNIST."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import checkpoints
import main
from download_mnist import load_mnist
from fake_mnist import write_fake_mnist_raw

REPO = Path(__file__).resolve().parent.parent
TINY_MODEL = ["--blocks", "1", "--hidden", "16", "--batch-size", "40", "--device", "cpu",
              "--precision", "fp32", "--no-compile"]
# float32 nets on every machine, no timing of bfloat16 at start, and no compiling (but where compiling is tested)

# Trains through main.train like `torchrun main.py` does, saves each process's weights, and
# evaluates the run's latest.pt as `torchrun main.py --eval` does, on the fake MNIST whose
# MD5s it is given; evaluation batches of 100 images, so that 250 test images make three.
WRAPPER = """
import json
import sys
import torch
sys.path.insert(0, sys.argv.pop(1))
import distributed
import download_mnist
import main
import training
download_mnist.FILES, download_mnist.MIRRORS = json.loads(sys.argv.pop(1)), ()
main.EVAL_BATCH = 100
args = main.parse_args(sys.argv[1:])
device = distributed.start(training.pick_device(args.device))
model, _ = main.train(args, device)
torch.save(model.state_dict(), f"{args.out}/weights_rank{distributed.rank()}.pt")
distributed.barrier()  # rank 0 has saved the last epoch's latest.pt
main.evaluate_checkpoint(f"{args.out}/latest.pt", args, device)
distributed.stop()
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(script, *args, processes=2):
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={processes}",
               "--master-addr=127.0.0.1", f"--master-port={free_port()}", str(script), *map(str, args)]
    environment = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=240, env=environment)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    md5s = write_fake_mnist_raw(root, n_train=400, n_test=250, seed=0)  # 3 evaluation batches
    return root, json.dumps(md5s)


def test_two_processes_train_like_one(data_root, tmp_path):
    data_root, md5s = data_root
    wrapper = tmp_path / "train_distributed.py"
    wrapper.write_text(WRAPPER)
    out = tmp_path / "run"
    printed = torchrun(wrapper, REPO, md5s, "--data", data_root, "--out", out, *TINY_MODEL, "--epochs", "2")

    # Only the first process wrote: one metrics line per epoch, one set of checkpoints.
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2]
    assert sorted(p.name for p in out.glob("*.pt")) == ["best.pt", "latest.pt", "weights_rank0.pt", "weights_rank1.pt"]
    assert len(list(out.glob("samples_*.png"))) == 2

    # Averaged gradients keep the two copies of the model identical.
    rank0 = torch.load(out / "weights_rank0.pt", weights_only=True)
    rank1 = torch.load(out / "weights_rank1.pt", weights_only=True)
    assert rank0.keys() == rank1.keys()
    assert all(torch.equal(rank0[name], rank1[name]) for name in rank0)
    assert checkpoints.load(out / "latest.pt")["optimizer"]["state"], "the optimizer took steps"

    # The test bits/dim shared between two processes is the single-process figure.
    state = checkpoints.load(out / "latest.pt")
    model = checkpoints.model_from(state, out / "latest.pt", torch.device("cpu"))
    test_images, test_labels = load_mnist(data_root, "test")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(main, "EVAL_BATCH", 100)  # the batches, and so the noise, of the two processes
        single = main.evaluate(model, test_images.unsqueeze(1), test_labels, state["model_config"]["alpha"],
                               torch.device("cpu"))["bpd"]
    assert abs(single - metrics[-1]["test_bpd"]) < 1e-9

    # A distributed --eval of the checkpoint agrees too, printed once, and --resume continues under torchrun.
    assert printed.strip().splitlines()[-1] == f"test bits/dim: {single:.4f}"
    assert printed.count("test bits/dim: ") == 2  # the final line of training, and --eval's
    torchrun(wrapper, REPO, md5s, "--data", data_root, "--out", out, *TINY_MODEL, "--epochs", "3", "--resume")
    assert checkpoints.load(out / "latest.pt")["epoch"] == 3
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 3
