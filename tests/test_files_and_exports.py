"""Files and folders the project writes: exports and stage outputs replaced as a whole, LoRA
checkpoints pinned to their base model, the umask's modes, no temp file left by a Ctrl-C (each
test failed on the code before its fix)."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from helpers import make_prompts, text_config
from safetensors.torch import load_file, save_file

from agents.cli import main
from agents.policies.lm import LMPolicy
from agents.run import checkpoint as ckpt
from agents.run.config import load_config, save_config
from agents.run.export import export_run
from agents.run.logger import atomic_write_text
from agents.run.rundir import new_run_dir
from agents.run.trainer import Trainer

LORA = {"r": 4, "alpha": 8}


def lora_run(base: str, root: Path, name: str = "run", iterations: int = 1) -> Trainer:
    """A LoRA run on `base` with `iterations` PPO iterations, config.yaml and a checkpoint."""
    raw = text_config(base, str(root))
    raw["total_timesteps"] = 8 * 8 * 2
    raw["policy"]["lora"] = dict(LORA)
    raw["eval"]["episodes"] = 0
    cfg = load_config(raw)
    trainer = Trainer(cfg, new_run_dir(cfg, name))
    save_config(cfg, trainer.run_dir / "config.yaml")
    for _ in range(iterations):
        trainer.iterate()
    trainer.save()
    return trainer


def logits(model, ids, mask) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).logits


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def leftovers(folder: Path) -> list[str]:
    """Temp files or folders next to / inside `folder` (`.<name>.*`)."""
    return sorted(p.name for p in folder.parent.iterdir() if p.name.startswith(f".{folder.name}."))


@pytest.fixture
def base(gpt2_ctx64_path, tmp_path) -> str:
    """A private copy of the tiny GPT-2 (tests change it; the session fixture is shared)."""
    return str(shutil.copytree(gpt2_ctx64_path, tmp_path / "base"))


# ----------------------------------------------------------------------------- replace as a whole


def test_export_overwrite_replaces_the_whole_folder(base, tmp_path):
    from transformers import AutoModelForCausalLM

    trainer = lora_run(base, tmp_path)
    out = tmp_path / "out"
    export_run(trainer.run_dir, out, merge=False)
    assert (out / "adapter_config.json").is_file()
    with pytest.raises(FileExistsError, match="pass --overwrite"):
        export_run(trainer.run_dir, out, merge=True)
    export_run(trainer.run_dir, out, merge=True, overwrite=True)
    # nothing of the adapter export is left: from_pretrained loads the merged model
    assert not (out / "adapter_config.json").exists()
    assert not (out / "adapter_model.safetensors").exists()
    ids, mask = make_prompts([5, 9], 10, 0, seed=2)
    merged = AutoModelForCausalLM.from_pretrained(out)
    expected = logits(trainer.policy.model, ids, mask)
    torch.testing.assert_close(logits(merged, ids, mask), expected, atol=1e-4, rtol=0)
    assert leftovers(out) == []
    trainer.close()


@pytest.mark.parametrize("error", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_a_failed_export_leaves_the_old_folder_as_it_was(base, tmp_path, monkeypatch, error):
    trainer = lora_run(base, tmp_path)
    out = tmp_path / "out"
    export_run(trainer.run_dir, out, merge=False)
    before = snapshot(out)

    def half_written(self, folder, merge=True):
        (Path(folder) / "model.safetensors").write_bytes(b"half")
        raise error

    monkeypatch.setattr(LMPolicy, "save_pretrained", half_written)
    with pytest.raises(type(error)):
        export_run(trainer.run_dir, out, merge=True, overwrite=True)
    assert snapshot(out) == before
    assert leftovers(out) == []
    trainer.close()


@pytest.mark.parametrize("content", ["notes", "subfolder", "link"])
def test_overwrite_refuses_a_folder_that_is_not_a_model(base, tmp_path, capsys, content):
    trainer = lora_run(base, tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.safetensors").write_bytes(b"weights")
    if content == "notes":  # no weights file: not a model
        (out / "model.safetensors").unlink()
        (out / "notes.txt").write_text("precious")
    elif content == "subfolder":
        (out / "data").mkdir()
        (out / "data" / "notes.txt").write_text("precious")
    else:
        out = tmp_path / "link"
        out.symlink_to(tmp_path / "out")
    before = {p.relative_to(tmp_path): p.is_file() and p.read_bytes() for p in tmp_path.rglob("*")}
    args = ["export", str(trainer.run_dir), str(out), "--overwrite"]
    assert main(args) == 1
    assert "refuses" in capsys.readouterr().err or content == "link"
    after = {p.relative_to(tmp_path): p.is_file() and p.read_bytes() for p in tmp_path.rglob("*")}
    assert after == before
    trainer.close()


def test_sft_overwrite_replaces_the_whole_folder(tmp_path):
    repo = Path(__file__).resolve().parents[1]
    small = [
        "train.steps=2", "train.batch_size=8", "n_per_task=16", "eval.n=2",
        "model.n_embd=32", "model.n_positions=64", f"output_dir={tmp_path / 'sft'}",
    ]  # fmt: skip
    out = tmp_path / "sft"
    out.mkdir()
    (out / "model.safetensors").write_bytes(b"old")
    (out / "adapter_config.json").write_text("{}")  # an older model's file
    args = ["sft", str(repo / "configs" / "sft_tiny.yaml"), *[f"--set={s}" for s in small]]
    assert main([*args, "--overwrite"]) == 0
    assert not (out / "adapter_config.json").exists()
    assert {"config.json", "model.safetensors", "sft_summary.json"} <= set(os.listdir(out))
    assert LMPolicy.from_pretrained(out, max_sequence_length=64).eos_id == 1
    assert leftovers(out) == []


# ----------------------------------------------------------------------------- pinned base


def test_a_lora_checkpoint_refuses_a_changed_base(base, tmp_path, capsys):
    trainer = lora_run(base, tmp_path)
    run = trainer.run_dir
    path = ckpt.latest_checkpoint(run / "checkpoints")
    meta = json.loads(path.read_text())
    pinned = meta["pinned_folders"]["policy.model_path"]
    assert {"config.json", "model.safetensors"} <= set(pinned["sha256"])
    trainer.close()

    weights = Path(base) / "model.safetensors"
    original = weights.read_bytes()
    tensors = load_file(weights)
    tensors = {k: v + 0.01 if v.is_floating_point() else v for k, v in tensors.items()}
    save_file(tensors, weights, metadata={"format": "pt"})  # e.g. a merged export over it
    with pytest.raises(ckpt.CheckpointError, match=re.escape(base) + r".*model\.safetensors has"):
        Trainer(trainer.cfg, run, resume=True)
    with pytest.raises(ckpt.CheckpointError, match="model.safetensors has SHA-256"):
        export_run(run, tmp_path / "out", merge=True)
    assert not (tmp_path / "out").exists()
    assert main(["eval", str(run), "--episodes", "1"]) == 1
    err = capsys.readouterr().err
    assert f"was trained on the model folder {base} (policy.model_path)" in err

    weights.write_bytes(original)  # the same files again: everything works
    Trainer(trainer.cfg, run, resume=True).close()
    assert main(["eval", str(run), "--episodes", "1"]) == 0
    capsys.readouterr()

    # a checkpoint written before the record: no check, a note
    del meta["pinned_folders"]
    path.write_text(json.dumps(meta))
    assert main(["eval", str(run), "--episodes", "1"]) == 0
    assert "records no hashes of the model folders" in capsys.readouterr().err


def test_export_refuses_a_folder_the_run_reads(base, tmp_path, capsys):
    trainer = lora_run(base, tmp_path)
    run = trainer.run_dir
    trainer.close()
    before = snapshot(Path(base))
    for out, key in (
        (base, "policy.model_path"),
        (run, "the run folder"),
        (tmp_path, "the run folder"),  # holds the base and the run
    ):
        args = ["export", str(run), str(out), "--merge", "--overwrite"]
        assert main(args) == 1
        err = capsys.readouterr().err
        assert f"export refuses to write {out}: run {run} reads it" in err and key in err, err
    assert snapshot(Path(base)) == before
    assert main(["eval", str(run), "--episodes", "1"]) == 0


# ----------------------------------------------------------------------------- modes


def modes(*folders: Path) -> dict[Path, int]:
    """The permission bits of every file and folder under `folders` (and of the folders)."""
    found = {}
    for folder in folders:
        for p in [folder, *folder.rglob("*")]:
            found[p] = p.stat().st_mode & 0o777
    return found


def test_every_file_gets_the_umask_mode(base, tmp_path):
    raw = text_config(base, str(tmp_path / "runs"))
    raw["total_timesteps"] = 8 * 8 * 2
    raw["policy"]["lora"] = dict(LORA)
    raw["eval"]["episodes"] = 2
    config = tmp_path / "lora.yaml"
    config.write_text(yaml.safe_dump(raw))
    old = os.umask(0o022)
    try:
        assert main(["train", str(config), "--name", "run"]) == 0
        run = tmp_path / "runs" / "run"
        assert main(["export", str(run), str(tmp_path / "merged"), "--merge"]) == 0
        assert main(["export", str(run), str(tmp_path / "adapter")]) == 0
        found = modes(run, tmp_path / "merged", tmp_path / "adapter")
        names = {p.name for p in found}
        assert names >= {"latest.json", "model.safetensors", "adapter_model.safetensors"}
        assert names >= {"metrics.csv", "config.yaml", "summary.json", "training_curves.png"}
        assert sum(p.suffix == ".safetensors" for p in found) >= 3
        expected = {p: 0o755 if p.is_dir() else 0o644 for p in found}
        assert {str(p): oct(m) for p, m in found.items()} == {
            str(p): oct(m) for p, m in expected.items()
        }
        os.umask(0o007)  # the umask decides, not a fixed mode
        assert main(["export", str(run), str(tmp_path / "shared"), "--merge"]) == 0
        shared = modes(tmp_path / "shared")
        assert {oct(m) for p, m in shared.items() if p.is_dir()} == {"0o770"}
        assert {oct(m) for p, m in shared.items() if p.is_file()} == {"0o660"}
    finally:
        os.umask(old)


# ----------------------------------------------------------------------------- Ctrl-C


def interrupt_fsync(monkeypatch, at: int) -> None:
    """os.fsync raises KeyboardInterrupt at its `at`-th call (inside an atomic write, after the
    temp file was written), like a second Ctrl-C."""
    calls = []
    real = os.fsync

    def fsync(fd):
        calls.append(fd)
        if len(calls) == at:
            raise KeyboardInterrupt
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)


@pytest.mark.parametrize("at", [1, 2, 3])  # the weights, the step's JSON, latest.json
def test_ctrl_c_during_a_checkpoint_write_leaves_no_temp_file(
    cartpole_yaml, tmp_path, monkeypatch, at
):
    cfg = load_config(
        cartpole_yaml,
        ["run.progress=false", "total_timesteps=1024", f"run.root={tmp_path}", "eval.episodes=0"],
    )
    trainer = Trainer(cfg, new_run_dir(cfg, "run"))
    trainer.iterate()
    good = trainer.save()
    trainer.iterate()
    folder = trainer.run_dir / "checkpoints"
    before = snapshot(folder)
    interrupt_fsync(monkeypatch, at)
    with pytest.raises(KeyboardInterrupt):
        trainer.save()
    monkeypatch.undo()
    names = sorted(os.listdir(folder))
    assert not [n for n in names if n.endswith(".tmp")], names
    assert ckpt.latest_checkpoint(folder) == good  # the previous checkpoint, intact
    ckpt.read_checkpoint(good)
    assert {n: b for n, b in snapshot(folder).items() if n in before} == before
    if at < 3:  # no metadata names the new weights: not left behind either
        assert set(names) == set(before)
    trainer.close()


def test_ctrl_c_during_a_log_write_leaves_no_temp_file(tmp_path, monkeypatch):
    path = tmp_path / "summary.json"
    atomic_write_text(path, "old\n")
    interrupt_fsync(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_text(path, "new\n")
    assert os.listdir(tmp_path) == ["summary.json"] and path.read_text() == "old\n"
