"""checkpoints.py: saves that a crash cannot half-write nor a full disk make a traceback,
loads that refuse a bad file in one line."""
import pytest
import torch

import checkpoints
from checkpoints import CheckpointError, SaveError
from models import build_model, model_config

CONFIG = model_config("nice", blocks=1, hidden=8)


def complete_state(resumable=True, config=CONFIG, **changes):
    """A checkpoint as main.py writes one, for a tiny NICE: latest.pt, or best.pt (not resumable)."""
    model = build_model(config)
    optimizer = torch.optim.AdamW(model.parameters())
    model.logProbability(torch.randn(2, 1, 28, 28)).sum().backward()
    optimizer.step()  # AdamW's moments exist
    state = checkpoints.Run(dict(config), {}, model, optimizer, torch.Generator()).state(resumable)
    return {**state, **changes}


def test_save_then_load_rebuilds_the_same_model(tmp_path):
    state = complete_state()
    checkpoints.save(tmp_path / "latest.pt", state)
    model = checkpoints.model_from(checkpoints.load(tmp_path / "latest.pt"), "latest.pt", torch.device("cpu"))
    assert all(torch.equal(value, state["model"][name]) for name, value in model.state_dict().items())


def test_best_holds_the_weights_at_a_third_of_the_size_and_cannot_be_resumed(tmp_path):
    wider = model_config("nice", blocks=1, hidden=128)  # weights, not buffers, make most of the file
    checkpoints.save(tmp_path / "latest.pt", complete_state(config=wider))
    checkpoints.save(tmp_path / "best.pt", complete_state(resumable=False, config=wider))
    # AdamW keeps two moments per weight: the weights alone are about a third of the whole.
    assert (tmp_path / "best.pt").stat().st_size < 0.4 * (tmp_path / "latest.pt").stat().st_size
    best = checkpoints.load(tmp_path / "best.pt")
    assert "optimizer" not in best and checkpoints.model_from(best, "best.pt", torch.device("cpu"))
    model = build_model(wider)
    run = checkpoints.Run(wider, {}, model, torch.optim.AdamW(model.parameters()), torch.Generator())
    with pytest.raises(CheckpointError, match="holds weights only"):
        run.restore(best, tmp_path / "best.pt")


def test_resuming_a_different_model_names_what_differs(tmp_path):
    config = {**CONFIG, "hidden": 16, "conv_channels": 4}
    model = build_model(config)
    run = checkpoints.Run(config, {}, model, torch.optim.AdamW(model.parameters()), torch.Generator())
    with pytest.raises(CheckpointError) as error:
        run.restore(complete_state(), tmp_path / "latest.pt")
    assert str(error.value).endswith("holds a different model: conv_channels 0 there, 4 in this run's flags; "
                                     "hidden 8 there, 16 in this run's flags")


def test_a_crash_while_saving_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "latest.pt"
    checkpoints.save(path, complete_state(epoch=1))

    def disk_full(obj, file):  # what torch's writer raises when the disk fills up
        file.write(b"half a checkpoint")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 17\nmore lines")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(SaveError) as error:
        checkpoints.save(path, complete_state(epoch=2))
    monkeypatch.undo()
    assert str(error.value).startswith(f"could not save {path} ([enforce fail")
    assert str(error.value).endswith("the latest.pt on disk is the one saved before, intact")
    assert "\n" not in str(error.value) and "MB free on its disk" in str(error.value)
    assert checkpoints.load(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["latest.pt"]


def test_a_folder_that_cannot_be_written_is_one_line(tmp_path, monkeypatch):
    def read_only(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(checkpoints.tempfile, "mkstemp", read_only)
    with pytest.raises(SaveError, match=r"could not save .*best.pt \(Permission denied; .*\); no best.pt is on disk"):
        checkpoints.save(tmp_path / "best.pt", complete_state(resumable=False))


def test_a_save_removes_the_temporaries_of_killed_saves_of_either_checkpoint(tmp_path):
    stale = [tmp_path / "latest.pt.k1ll3d.tmp", tmp_path / "latest.pt.0dd.tmp", tmp_path / "best.pt.k1ll3d.tmp"]
    for path in stale:
        path.write_bytes(b"what a process killed while saving left behind")
    (tmp_path / "notes.tmp").write_bytes(b"")  # not a checkpoint's
    checkpoints.save(tmp_path / "latest.pt", complete_state())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest.pt", "notes.tmp"]


@pytest.mark.parametrize("damage, message", [
    (lambda state: state.pop("model_config"), "lacks model_config"),
    (lambda state: state["model"].pop(next(iter(state["model"]))), "does not fit its model config: missing "),
    (lambda state: state["model"].update({"extra.weight": torch.zeros(1)}), "unexpected extra.weight"),
    (lambda state: state["model"].update({name: torch.zeros(3) for name in list(state["model"])[:2]}),
     "prior.mean is [3], not [1, 28, 28] (and 1 more)"),
    (lambda state: state["model_config"].update(model="glow"), "no model 'glow'"),
    (lambda state: state["model_config"].pop("hidden"), "builds no model"),
    (lambda state: state.update(format="flows-tutorial-checkpoint-v2"), "written by an older main.py"),
], ids=["no-config", "missing-weight", "extra-weight", "wrong-shapes", "unknown-model", "incomplete-config",
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
