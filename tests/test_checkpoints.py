"""checkpoints.py: saves that a crash cannot half-write, loads that refuse a bad file in one line."""
import pytest
import torch

import checkpoints
from checkpoints import CheckpointError
from models import IMAGE_SHAPE, build_model

CONFIG = {"model": "nice", "shape": list(IMAGE_SHAPE), "alpha": 1e-6, "blocks": 1, "hidden": 8, "depth": 1}


def complete_state(**changes):
    """A checkpoint as main.py writes one, for a tiny NICE."""
    model = build_model(CONFIG)
    optimizer = torch.optim.AdamW(model.parameters())
    state = checkpoints.Run(dict(CONFIG), {}, model, optimizer, torch.Generator()).state()
    return {**state, **changes}


def test_save_then_load_rebuilds_the_same_model(tmp_path):
    state = complete_state()
    checkpoints.save(tmp_path / "latest.pt", state)
    model = checkpoints.model_from(checkpoints.load(tmp_path / "latest.pt"), "latest.pt", torch.device("cpu"))
    assert all(torch.equal(value, state["model"][name]) for name, value in model.state_dict().items())


def test_resuming_a_different_model_names_what_differs(tmp_path):
    checkpoints.save(tmp_path / "latest.pt", complete_state())
    config = {**CONFIG, "hidden": 16, "conv_channels": 4}
    model = build_model(config)
    run = checkpoints.Run(config, {}, model, torch.optim.AdamW(model.parameters()), torch.Generator())
    with pytest.raises(CheckpointError) as error:
        run.restore(tmp_path / "latest.pt")
    assert str(error.value).endswith("holds a different model: conv_channels None there, 4 in this run's flags; "
                                     "hidden 8 there, 16 in this run's flags")


def test_a_crash_while_saving_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "latest.pt"
    checkpoints.save(path, complete_state(epoch=1))

    def crash(obj, file):
        file.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError):
        checkpoints.save(path, complete_state(epoch=2))
    monkeypatch.undo()
    assert checkpoints.load(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["latest.pt"]


def test_a_save_removes_the_temporaries_of_a_killed_save(tmp_path):
    stale = [tmp_path / "latest.pt.k1ll3d.tmp", tmp_path / "latest.pt.0dd.tmp"]
    for path in stale:
        path.write_bytes(b"what a process killed while saving left behind")
    others = [tmp_path / "best.pt.k1ll3d.tmp", tmp_path / "notes.tmp"]  # another checkpoint's, and not ours at all
    for path in others:
        path.write_bytes(b"")
    checkpoints.save(tmp_path / "latest.pt", complete_state())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt.k1ll3d.tmp", "latest.pt", "notes.tmp"]


@pytest.mark.parametrize("damage, message", [
    (lambda state: state.pop("optimizer"), "lacks optimizer"),
    (lambda state: state["model"].pop(next(iter(state["model"]))), "does not fit its model config: missing "),
    (lambda state: state["model"].update({"extra.weight": torch.zeros(1)}), "unexpected extra.weight"),
    (lambda state: state["model"].update({name: torch.zeros(3) for name in list(state["model"])[:2]}),
     "prior.mean is [3], not [1, 28, 28] (and 1 more)"),
    (lambda state: state["model_config"].update(model="glow"), "unknown model config"),
    (lambda state: state["model_config"].pop("hidden"), "builds no model"),
    (lambda state: state.update(format="flows-tutorial-checkpoint-v1"), "written by an older main.py"),
], ids=["no-optimizer", "missing-weight", "extra-weight", "wrong-shapes", "unknown-model", "incomplete-config",
        "older-format"])
def test_a_malformed_checkpoint_is_one_clear_error(tmp_path, damage, message):
    state = complete_state()
    damage(state)
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError) as error:
        checkpoints.model_from(checkpoints.load(tmp_path / "bad.pt"), tmp_path / "bad.pt", torch.device("cpu"))
    assert message in str(error.value) and "\n" not in str(error.value)


def test_missing_foreign_and_unreadable_files(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        checkpoints.load(tmp_path / "missing.pt")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not a checkpoint written by this project"):
        checkpoints.load(tmp_path / "foreign.pt")
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        checkpoints.load(tmp_path / "text.pt")
