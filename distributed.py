"""Training under torchrun: the few calls main.py makes to work in several processes.

`torchrun --nproc-per-node=N main.py` starts N copies of main.py with WORLD_SIZE, RANK
and LOCAL_RANK in their environment. Each joins one process group (`start`), reads its
own share of every epoch, and `DistributedDataParallel` averages the gradients, so
every copy of the model takes the same steps. Only the first process (rank 0) prints
and writes files. In a plain `python main.py` none of this starts, and every helper
here is the single-process identity.
"""
import os

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm


def started_by_torchrun():
    return int(os.environ.get("WORLD_SIZE", 1)) > 1


def start(device):
    """Join the process group torchrun set up; returns the device this process uses."""
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def stop():
    if dist.is_initialized():
        dist.destroy_process_group()


def rank():
    return dist.get_rank() if dist.is_initialized() else 0


def world_size():
    return dist.get_world_size() if dist.is_initialized() else 1


def all_reduce(tensor, op=dist.ReduceOp.SUM):
    """The tensor combined over all processes (in place); the tensor itself in one process."""
    if dist.is_initialized():
        dist.all_reduce(tensor, op=op)
    return tensor


def barrier():
    if dist.is_initialized():
        dist.barrier()


def average_gradients(module):
    """`module` wrapped so that backward averages its gradients over the processes.

    DistributedDataParallel broadcasts rank 0's weights once, then averages each gradient
    as backward produces it. Buffers are constants here, so they are not broadcast.
    """
    if dist.is_initialized():
        return DistributedDataParallel(module, broadcast_buffers=False)
    return module


def print_once(*message):
    """print, from the first process only (and above a progress bar, if one is drawn)."""
    if rank() == 0:
        tqdm.write(" ".join(map(str, message)))
