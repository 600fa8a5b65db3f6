"""The run folder: its name and root, `--overwrite`, one writer at a time (the lock), damaged
files in it, and the sft/rm stages' output folder (each test failed on the code before its fix)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from helpers import DEEP, _half_run, copy_run, train_args

from agents.cli import main
from agents.run import checkpoint as ckpt
from agents.run.config import load_config
from agents.run.rundir import RunLock, new_run_dir

# ----------------------------------------------------------------------------- names, roots


def test_runs_started_in_the_same_second_get_their_own_folders(cartpole_yaml, tmp_path):
    cfg = load_config(cartpole_yaml, [f"run.root={tmp_path}"])
    first, second = new_run_dir(cfg), new_run_dir(cfg)
    assert first != second and first.is_dir() and second.is_dir()
    assert second.name.startswith(first.name)  # "<name>-<time>" and "<name>-<time>-2"


@pytest.mark.parametrize("name", [".", "..", "", "a/b", "/tmp", "../../x"])
def test_a_run_name_is_one_folder_under_the_root(cartpole_yaml, tmp_path, capsys, name):
    root = tmp_path / "runs"
    keep = root / "keep"
    keep.mkdir(parents=True)
    (keep / "marker").write_text("a finished run")
    assert main([*train_args(cartpole_yaml, root), "--name", name, "--overwrite"]) == 1
    assert "must be one folder name under run.root" in capsys.readouterr().err
    assert (keep / "marker").is_file() and sorted(p.name for p in root.iterdir()) == ["keep"]


@pytest.mark.parametrize("name", ["../../escaped", "a/b", ".", ".."])
def test_the_config_name_keeps_the_run_folder_under_the_root(cartpole_yaml, tmp_path, capsys, name):
    root = tmp_path / "a" / "runs"
    assert main(train_args(cartpole_yaml, root, f"name={name}")) == 1
    assert "config key 'name'" in capsys.readouterr().err
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == []


def test_a_run_root_that_is_a_file_is_named(cartpole_yaml, tmp_path, capsys):
    root = tmp_path / "runs"
    root.write_text("not a folder")
    assert main(train_args(cartpole_yaml, root)) == 1  # was "[Errno 17] File exists"
    assert f"run.root '{root}' is a file, not a folder" in capsys.readouterr().err
    assert root.read_text() == "not a folder"


# ----------------------------------------------------------------------------- --overwrite, lock


def test_overwrite_deletes_only_a_run_folder(cartpole_yaml, tmp_path, capsys):
    root = tmp_path / "runs"
    (root / "thesis").mkdir(parents=True)
    (root / "thesis" / "chapter1.tex").write_text("two years of work")
    (root / "notes.txt").write_text("keep")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "data.csv").write_text("keep")
    (root / "link").symlink_to(tmp_path / "elsewhere")
    (root / "rm_tiny").mkdir()  # a reward model (`textrlhf rm` also locks its output folder)
    for file in (".lock", "config.json", "model.safetensors"):
        (root / "rm_tiny" / file).write_text("")
    for name in ("thesis", "notes.txt", "link", "rm_tiny"):
        assert main([*train_args(cartpole_yaml, root), "--name", name, "--overwrite"]) == 1
        assert f"--overwrite refuses to delete {root / name}" in capsys.readouterr().err
    assert (root / "thesis" / "chapter1.tex").read_text() == "two years of work"
    assert (root / "notes.txt").read_text() == "keep"
    assert os.listdir(tmp_path / "elsewhere") == ["data.csv"]  # not even a .lock written there
    assert sorted(os.listdir(root / "rm_tiny")) == [".lock", "config.json", "model.safetensors"]
    # a run folder, and an empty folder, are still replaced
    (root / "empty").mkdir()
    for name in ("run", "run", "empty"):
        assert main([*train_args(cartpole_yaml, root), "--name", name, "--overwrite"]) == 0
    assert (root / "run" / "summary.json").is_file()
    assert (root / "empty" / "summary.json").is_file()


def test_a_second_writer_of_a_run_folder_is_refused(cartpole_yaml, tmp_path, capsys):
    run, _ = _half_run(cartpole_yaml, tmp_path)
    rows = (run / "metrics.csv").read_text()
    with RunLock(run):  # another process training this run
        assert main([*train_args(cartpole_yaml, tmp_path), "--resume", str(run)]) == 1
        assert "is in use by pid" in capsys.readouterr().err
        assert main([*train_args(cartpole_yaml, tmp_path), "--name", "half", "--overwrite"]) == 1
        assert "is in use" in capsys.readouterr().err
    assert (run / "metrics.csv").read_text() == rows
    assert main([*train_args(cartpole_yaml, tmp_path), "--resume", str(run)]) == 0  # free again


# ----------------------------------------------------------------------------- damaged files

NESTED = "[" * 101 + "]" * 101  # parses, but deeper than any file of a run holds


@pytest.mark.parametrize(
    "target, text",
    [
        ("config.yaml", "env:\n  kwargs:\n    x: " + DEEP + "\n"),
        ("config.yaml", "env:\n  kwargs:\n    x: " + NESTED + "\n"),
        ("config.yaml", "# emptied\n"),
        ("config.yaml", "seed: 1\nseed: 2\n"),
        ("checkpoints/latest.json", DEEP),
        ("step", '{"format_version": ' + DEEP + "}"),
        ("step", "400 levels in its config"),
    ],
    ids=["config-deep", "config-nested", "config-empty", "config-dup", "latest-deep",
         "step-deep", "step-config-nested"],
)  # fmt: skip
def test_a_damaged_run_folder_file_is_an_error_naming_it(finished, tmp_path, capsys, target, text):
    """Was a RecursionError traceback (deep; a checkpoint whose recorded config nests 400 levels:
    json reads it, the config comparison recursed), or read silently (empty, duplicate keys)."""
    run = copy_run(finished, tmp_path)
    path = ckpt.latest_checkpoint(run / "checkpoints") if target == "step" else run / target
    if text == "400 levels in its config":
        meta = json.loads(path.read_text())
        meta["config"]["env"]["kwargs"] = {"x": json.loads("[" * 400 + "]" * 400)}
        text = json.dumps(meta)
    path.write_text(text)
    assert main(["eval", str(run)]) == 1
    err = capsys.readouterr().err
    assert str(path) in err and ("nested" in err or "empty" in err or "duplicate" in err), err


def test_resuming_a_finished_run_with_a_damaged_summary_names_it(finished, tmp_path, capsys):
    run = copy_run(finished, tmp_path)
    (run / "summary.json").write_text(DEEP)
    args = ["train", str(run / "config.yaml"), "--resume", str(run)]
    assert main(args) == 1  # was a RecursionError traceback
    err = capsys.readouterr().err
    assert str(run / "summary.json") in err and "nested" in err


# ----------------------------------------------------------------------------- stage outputs


@pytest.mark.parametrize("stage", ["sft", "rm"])
def test_a_stage_output_dir_that_is_a_file_is_named(tmp_path, capsys, stage):
    configs = Path(__file__).resolve().parents[1] / "configs"
    out = tmp_path / "model"
    out.write_text("not a folder")
    config = configs / f"{stage}_tiny.yaml"
    assert main([stage, str(config), "--set", f"output_dir={out}"]) == 1  # "[Errno 17] ..."
    assert f"output_dir '{out}' is a file, not a folder" in capsys.readouterr().err
    assert out.read_text() == "not a folder"
