"""Checkpoints: what a run saves, written so that a crash never loses one, read so that a
bad file is one line.

A checkpoint (`Run.state()`) holds the model config, the weights, the optimizer, the
epochs done and the random state, so --resume, --eval and --sample rebuild everything
from the file alone (as nanoGPT's do).

`save` writes to a temporary file in the same folder, flushes it to disk and renames it
into place: at any moment the old or the new checkpoint is complete on disk. A save
first removes the temporaries that a killed process left behind.

A run also keeps a log, metrics.jsonl: one JSON line of figures per epoch.
"""
import json
import math
import os
import tempfile
from pathlib import Path

import torch

from models import MODELS, build_model

FORMAT = "flows-tutorial-checkpoint-v2"
KEYS = {"format", "model_config", "flags", "model", "optimizer", "epoch", "rng", "cuda_rng", "data_order_rng",
        "best_valid_bpd", "train_seconds"}


class CheckpointError(Exception):
    """A checkpoint that is missing, unreadable or not this project's: reported in one line."""


class Run:
    """What a checkpoint holds: a model and its optimizer, and how far training got.

    config: the model config (models.py); flags: the command line, for the record;
    data_order: the generator that shuffles the training images.
    """

    def __init__(self, config, flags, model, optimizer, data_order):
        self.config, self.flags, self.model, self.optimizer, self.data_order = config, flags, model, optimizer, data_order
        self.epochs_done, self.best_valid_bpd, self.train_seconds = 0, math.inf, 0.0

    def state(self):
        return {"format": FORMAT, "model_config": self.config, "flags": self.flags, "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(), "epoch": self.epochs_done,
                "rng": torch.get_rng_state(), "data_order_rng": self.data_order.get_state(),
                "cuda_rng": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
                "best_valid_bpd": self.best_valid_bpd, "train_seconds": self.train_seconds}

    def restore(self, path):
        """Weights, AdamW's moments, random state and progress from the checkpoint at `path`;
        the optimizer's settings (learning rate, weight decay) stay this run's."""
        state = load(path)
        saved = state["model_config"]
        if saved != self.config:
            differences = "; ".join(f"{key} {saved.get(key)} there, {self.config.get(key)} in this run's flags"
                                    for key in sorted(saved.keys() | self.config.keys())
                                    if saved.get(key) != self.config.get(key))
            raise CheckpointError(f"{path} holds a different model: {differences}")
        load_weights(self.model, state, path)
        settings = [{key: value for key, value in group.items() if key != "params"}
                    for group in self.optimizer.param_groups]
        self.optimizer.load_state_dict(state["optimizer"])
        for group, setting in zip(self.optimizer.param_groups, settings):
            group.update(setting)
        torch.set_rng_state(state["rng"])
        if state["cuda_rng"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state(state["cuda_rng"])
        self.data_order.set_state(state["data_order_rng"])
        self.epochs_done, self.best_valid_bpd = state["epoch"], state["best_valid_bpd"]
        self.train_seconds = state["train_seconds"]


def save(path, state):
    """torch.save to a temporary file in the same folder, then rename: never half-written."""
    path = Path(path)
    for stale in path.parent.glob(f"{path.name}.*.tmp"):  # left by a process killed while saving
        stale.unlink(missing_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f"{path.name}.", suffix=".tmp")
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
    config = state["model_config"]
    if not isinstance(config, dict) or config.get("model") not in MODELS:
        raise CheckpointError(f"{path} holds an unknown model config: {config!r}")
    try:
        model = build_model(config)
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
