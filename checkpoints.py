"""Checkpoints: what a run saves, written so that a crash never loses one, read so that a
bad file is one line.

A run keeps two. latest.pt (`Run.state()`) holds the model config, the run's flags, the
weights, the optimizer, the epochs done and the random state, so --resume goes on from the
file alone (as nanoGPT's checkpoints do). best.pt (`Run.state(resumable=False)`) holds what
--eval and --sample need: the config, the flags and the weights, a third of the size
without AdamW's two moments per weight.

`save` writes to a temporary file in the same folder, flushes it to disk and renames it
into place: at any moment the old or the new checkpoint is complete on disk. A save
first removes the temporaries that killed saves left in the folder, of either checkpoint.
A save that fails (a full disk, a folder that became read-only) is a `SaveError` in one
line, which says what is still on disk.

A run also keeps a log, metrics.jsonl: one JSON line of figures per epoch.
"""
import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import torch

from models import build_model

FORMAT = "flows-tutorial-checkpoint-v3"
KEYS = {"format", "model_config", "flags", "model", "epoch", "best_valid_bpd", "train_seconds"}
RESUME_KEYS = KEYS | {"optimizer", "rng", "cuda_rng", "data_order_rng"}
TEMPORARY = "{name}.*.tmp"  # a checkpoint's temporary while it is saved


class CheckpointError(Exception):
    """A checkpoint that is missing, unreadable or not this project's: reported in one line."""


class SaveError(Exception):
    """A checkpoint that could not be written: reported in one line, with what is left on disk."""


class Run:
    """What a checkpoint holds: a model and its optimizer, and how far training got.

    config: the model config (models.py); flags: the run's flags (command_line.py), which
    --resume goes on with; data_order: the generator that shuffles the training images.
    """

    def __init__(self, config, flags, model, optimizer, data_order):
        self.config, self.flags, self.model, self.optimizer, self.data_order = config, flags, model, optimizer, data_order
        self.epochs_done, self.best_valid_bpd, self.train_seconds = 0, math.inf, 0.0

    def state(self, resumable=True):
        """The checkpoint: everything --resume needs, or (resumable=False) what --eval and --sample need."""
        state = {"format": FORMAT, "model_config": self.config, "flags": self.flags, "model": self.model.state_dict(),
                 "epoch": self.epochs_done, "best_valid_bpd": self.best_valid_bpd, "train_seconds": self.train_seconds}
        if resumable:
            state.update({"optimizer": self.optimizer.state_dict(), "rng": torch.get_rng_state(),
                          "data_order_rng": self.data_order.get_state(),
                          "cuda_rng": torch.cuda.get_rng_state() if torch.cuda.is_available() else None})
        return state

    def restore(self, state, path):
        """Weights, AdamW's moments, random state and progress from a resumable checkpoint
        (`state`, loaded from `path`)."""
        if not RESUME_KEYS <= state.keys():
            raise CheckpointError(f"{path} holds weights only (a best.pt): --resume goes on from a latest.pt")
        saved = state["model_config"]
        if saved != self.config:
            differences = "; ".join(f"{key} {saved.get(key)} there, {self.config.get(key)} in this run's flags"
                                    for key in sorted(saved.keys() | self.config.keys())
                                    if saved.get(key) != self.config.get(key))
            raise CheckpointError(f"{path} holds a different model: {differences}")
        load_weights(self.model, state, path)
        self.optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"])
        if state["cuda_rng"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state(state["cuda_rng"])
        self.data_order.set_state(state["data_order_rng"])
        self.epochs_done, self.best_valid_bpd = state["epoch"], state["best_valid_bpd"]
        self.train_seconds = state["train_seconds"]


def save(path, state):
    """torch.save to a temporary file in the same folder, then rename: never half-written.
    SaveError, in one line, where the file cannot be written."""
    path = Path(path)
    for stale in path.parent.glob(TEMPORARY.format(name="*.pt")):  # left by processes killed while saving
        stale.unlink(missing_ok=True)
    temporary = None
    try:
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f"{path.name}.", suffix=".tmp")
        with os.fdopen(handle, "wb") as file:
            torch.save(state, file)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, 0o644)  # mkstemp makes it private
        os.replace(temporary, path)
    except (OSError, RuntimeError) as error:  # RuntimeError: torch's writer, e.g. on a full disk
        cause = error.strerror if isinstance(error, OSError) and error.strerror else str(error).strip().splitlines()[0]
        cause += f"; {shutil.disk_usage(path.parent).free / 1e6:.0f} MB free on its disk"
        kept = f"the {path.name} on disk is the one saved before, intact" if path.exists() else f"no {path.name} is on disk"
        raise SaveError(f"could not save {path} ({cause}); {kept}") from None
    finally:
        if temporary is not None and Path(temporary).exists():
            Path(temporary).unlink()


def load(path):
    """The checkpoint at `path`, checked to be complete; CheckpointError otherwise."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise CheckpointError(f"{path} is not a readable checkpoint ({type(error).__name__})") from None
    if not isinstance(state, dict) or not str(state.get("format", "")).startswith("flows-tutorial-checkpoint"):
        raise CheckpointError(f"{path} is not a checkpoint written by this project's main.py")
    if state["format"] != FORMAT:
        raise CheckpointError(f"{path} was written by an older main.py ({state['format']}, this one reads {FORMAT}); "
                              "train it again")
    missing = KEYS - state.keys()
    if missing:
        raise CheckpointError(f"{path} lacks {', '.join(sorted(missing))}")
    return state


def model_from(state, path, device):
    """The flow a checkpoint holds, with its weights, on `device`."""
    try:
        model = build_model(state["model_config"])
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"{path} holds a model config that builds no model ({error})") from None
    load_weights(model, state, path)
    return model.to(device)


def load_weights(model, state, path):
    """The checkpoint's weights into `model`; CheckpointError, naming the first misfit, where they do not fit."""
    expected, weights = model.state_dict(), state["model"]
    if not isinstance(weights, dict):
        raise CheckpointError(f"{path} holds no weights")
    problems = [f"missing {name}" for name in expected if name not in weights]
    problems += [f"unexpected {name}" for name in weights if name not in expected]
    problems += [f"{name} is {list(weights[name].shape)}, not {list(tensor.shape)}"
                 for name, tensor in expected.items() if name in weights and weights[name].shape != tensor.shape]
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise CheckpointError(f"{path} does not fit its model config: {problems[0]}{more}")
    model.load_state_dict(weights)


def append_metrics(path, metrics):
    """One epoch's figures as a new line of metrics.jsonl."""
    with open(path, "a") as file:
        file.write(json.dumps(metrics) + "\n")


def read_metrics(path):
    """The lines of a metrics.jsonl, one dict per epoch."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def add_to_last_metrics(path, figures):
    """Merge `figures` into the last line of metrics.jsonl, rewritten in one replace."""
    lines = read_metrics(path)
    lines[-1].update(figures)
    temporary = Path(path).with_name(Path(path).name + ".tmp")
    temporary.write_text("".join(json.dumps(line) + "\n" for line in lines))
    temporary.replace(path)
