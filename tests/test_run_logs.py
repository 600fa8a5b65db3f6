"""The run folder's logs: a failed write leaves the previous file whole and names it; a resume
keeps working when a log was re-saved by a spreadsheet, damaged, or cut short by a crash (each
test failed on the code before its fix)."""

from __future__ import annotations

import codecs
import csv
import errno
import io
import json
import re
import resource
import signal
import types
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from helpers import SMALL, train_args

from agents.cli import main
from agents.run.config import load_config
from agents.run.files import atomic_write_text
from agents.run.logger import RunLogger
from agents.run.rundir import new_run_dir
from agents.run.trainer import Trainer


def half_run(cartpole_yaml: Path, root: Path) -> Path:
    """A CartPole run stopped (with a checkpoint) at step 256 of 512."""
    cfg = load_config(cartpole_yaml, [f"run.root={root}", *SMALL])
    Trainer(cfg, new_run_dir(cfg, "half")).learn(stop_at=256)
    return root / "half"


@contextmanager
def file_size_limit(nbytes: int) -> Iterator[None]:
    """Writes past `nbytes` bytes of a file fail with EFBIG, as writes fail on a full disk
    (SIGXFSZ ignored: the write returns the error instead of killing the process)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)


def steps(path: Path) -> list[int]:
    with open(path, newline="") as f:
        return [int(row["step"]) for row in csv.DictReader(f)]


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


# ----------------------------------------------------------------------------- failed writes


def test_a_failed_rewrite_of_metrics_csv_keeps_the_old_file(tmp_path):
    """A metric that appears makes the logger write metrics.csv again with the new column; it
    wrote the file in place, so a full disk cut it short. Now the old file stays whole."""
    logger = RunLogger(tmp_path, 1024, progress=False)
    for step in (256, 512):
        logger.log(step, {"rollout/ep_return": 20.0 + step, "train/entropy": 0.69})
    logger.writer.close()  # TensorBoard's writer thread would hit the limit too
    logger.writer = types.SimpleNamespace(add_scalar=lambda *args: None)
    before = (tmp_path / "metrics.csv").read_bytes()
    with pytest.raises(OSError) as caught, file_size_limit(len(before) // 2):
        logger.log(768, {"rollout/ep_return": 30.0, "eval/return": 31.0})  # a new column
    assert (tmp_path / "metrics.csv").read_bytes() == before
    assert caught.value.errno == errno.EFBIG
    assert caught.value.filename == str(tmp_path / "metrics.csv")
    assert leftovers(tmp_path) == []


def test_a_full_disk_on_resume_keeps_metrics_csv_and_names_it(cartpole_yaml, tmp_path, capsys):
    """A resume writes metrics.csv again from the rows up to its checkpoint. With the disk full
    (a file-size limit as stand-in) the in-place write cut the file short and the message named
    no file; now the file is unchanged, named, and the resume works once there is room."""
    run = half_run(cartpole_yaml, tmp_path)
    before = (run / "metrics.csv").read_bytes()
    with file_size_limit(len(before) // 2):
        assert main([*train_args(cartpole_yaml, tmp_path), "--resume", str(run)]) == 1
    err = capsys.readouterr().err
    assert (run / "metrics.csv").read_bytes() == before
    assert re.search(rf"cannot write {re.escape(str(run / 'metrics.csv'))}: File too large", err)
    assert leftovers(run) == []
    assert main([*train_args(cartpole_yaml, tmp_path), "--resume", str(run)]) == 0
    assert steps(run / "metrics.csv")[:2] == [256, 512]


def test_atomic_writes_leave_the_old_file_when_the_rename_fails(tmp_path, monkeypatch):
    import agents.run.files as atomic

    path = tmp_path / "summary.json"
    path.write_text("old")

    def disk_full(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic.os, "replace", disk_full)
    with pytest.raises(OSError, match="No space left") as caught:
        atomic_write_text(path, "new")
    assert caught.value.filename == str(path)
    assert path.read_text() == "old" and leftovers(tmp_path) == []


# ----------------------------------------------------------------------------- damaged logs


def logged_run(folder: Path) -> Path:
    """A run folder whose metrics.csv has rows at steps 256, 512 and 768 and whose samples.jsonl
    has one line per step (what RunLogger writes)."""
    logger = RunLogger(folder, 1024, progress=False)
    for step in (256, 512, 768):
        logger.log(step, {"rollout/ep_return": step / 100, "train/entropy": 0.5})
        logger.samples(step, [{"prompt": "a", "response": "b"}])
    logger.writer.close()
    return folder


def spreadsheet(text: str) -> bytes:
    """metrics.csv as a spreadsheet in a locale with ',' decimals saves it: a byte-order mark,
    ';' between cells, CRLF line ends (the numbers here keep their '.')."""
    out = io.StringIO()
    csv.writer(out, delimiter=";", lineterminator="\r\n").writerows(csv.reader(io.StringIO(text)))
    return codecs.BOM_UTF8 + out.getvalue().encode()


def drop_step_column(text: str) -> bytes:
    rows = list(csv.reader(io.StringIO(text)))
    out = io.StringIO()
    csv.writer(out).writerows([row[1:] for row in rows])
    return out.getvalue().encode()


def set_cell(line: int, column: int, value: bytes):
    def edit(text: str) -> bytes:
        lines = text.encode().splitlines(keepends=True)
        cells = lines[line - 1].split(b",")
        cells[column] = value
        lines[line - 1] = b",".join(cells)
        return b"".join(lines)

    return edit


DAMAGED_METRICS = {
    # name: (damage, steps kept on a resume at 512, the line and what the warning says)
    "byte-order mark": (
        lambda text: codecs.BOM_UTF8 + text.encode(),
        [256, 512],
        "line 1 starts with a byte-order",
    ),
    "spreadsheet": (spreadsheet, [256, 512], "line 1 starts with a byte-order mark .* and has ';'"),
    "no step column": (drop_step_column, [], "line 1 has no 'step' column"),
    "step not a number": (set_cell(3, 0, b"five hundred"), [256], "line 3 has step 'five hun"),
    "cell not a number": (set_cell(3, 1, b"n/a"), [256], "line 3 has rollout/ep_return = 'n/a'"),
    "a cell too many": (set_cell(2, 1, b"2,56"), [], "line 2 has 4 cells, the header has 3"),
    "not UTF-8": (set_cell(3, 1, b"5\xff12"), [256], "line 3 has byte 0xff, not UTF-8"),
}


@pytest.mark.parametrize("damage", DAMAGED_METRICS)
def test_a_resume_sets_a_damaged_metrics_csv_aside(tmp_path, capsys, damage):
    """Resume read metrics.csv back with csv.DictReader and row["step"]: a spreadsheet's re-save
    failed with KeyError: 'step', non-UTF-8 bytes with a UnicodeDecodeError. Logs are not
    checkpoints: the file is set aside as it was, one warning line names it and the line, and
    the log goes on from the rows before that line that are up to the checkpoint."""
    edit, kept, said = DAMAGED_METRICS[damage]
    run = logged_run(tmp_path)
    damaged = edit((run / "metrics.csv").read_text())
    (run / "metrics.csv").write_bytes(damaged)
    capsys.readouterr()
    logger = RunLogger(run, 1024, start_step=512, progress=False)
    assert [row["step"] for row in logger.rows] == kept
    logger.log(768, {"rollout/ep_return": 7.5, "train/entropy": 0.4})
    logger.writer.close()
    assert steps(run / "metrics.csv") == [*kept, 768]
    (aside,) = run.glob("metrics.csv.damaged-*")
    assert aside.read_bytes() == damaged
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"textrlhf: warning: {run / 'metrics.csv'} line ")
    assert re.search(said, err) and f"set it aside as {aside.name}" in err


@pytest.mark.parametrize(
    "bad_line, said",
    [
        (b'{"step": 512, "prompt": "a", "resp\n', "line 2 is not JSON"),
        (b'{"step": "512"}\n', "line 2 is not a JSON object with a whole-number 'step'"),
        (b"[1, 2]\n", "line 2 is not a JSON object"),
        (b'{"step": 512, "prompt": "\xe9t\xe9"}\n', "line 2 has byte 0xe9, not UTF-8"),
    ],
    ids=["cut short", "step a string", "not an object", "not UTF-8"],
)
def test_a_resume_sets_a_damaged_samples_jsonl_aside(tmp_path, capsys, bad_line, said):
    """One bad samples.jsonl line stopped the resume with an error naming no file."""
    run = logged_run(tmp_path)
    lines = (run / "samples.jsonl").read_bytes().splitlines(keepends=True)
    damaged = b"".join([lines[0], bad_line, *lines[1:]])
    (run / "samples.jsonl").write_bytes(damaged)
    capsys.readouterr()
    RunLogger(run, 1024, start_step=512, progress=False).writer.close()
    records = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [256]  # the lines before the bad one
    (aside,) = run.glob("samples.jsonl.damaged-*")
    assert aside.read_bytes() == damaged
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"textrlhf: warning: {run / 'samples.jsonl'} {said}"), err
    assert len(err.splitlines()) == 1 and "the log goes on from the 1 row before" in err


def test_resume_after_a_spreadsheet_re_saved_the_logs(cartpole_yaml, tmp_path, capsys):
    """The reported case end to end: `textrlhf train --resume` of a run whose metrics.csv was
    opened and saved in a spreadsheet and whose samples.jsonl has a bad line."""
    run = half_run(cartpole_yaml, tmp_path)
    (run / "metrics.csv").write_bytes(spreadsheet((run / "metrics.csv").read_text()))
    (run / "samples.jsonl").write_text('{"step": 256, "prompt": "a"}\n{"step": 2\n')
    capsys.readouterr()
    assert main([*train_args(cartpole_yaml, tmp_path), "--resume", str(run)]) == 0
    err = capsys.readouterr().err
    assert f"warning: {run / 'metrics.csv'} line 1 starts with a byte-order mark" in err
    assert f"warning: {run / 'samples.jsonl'} line 2 is not JSON" in err
    assert steps(run / "metrics.csv")[:2] == [256, 512]  # the kept row, then the resumed run's
    assert (run / "samples.jsonl").read_text() == '{"step": 256, "prompt": "a"}\n'
    assert len(list(run.glob("*.damaged-*"))) == 2
    assert json.loads((run / "summary.json").read_text())["finished"] is True


def test_resume_after_a_crash_in_the_middle_of_a_log_line(cartpole_yaml, tmp_path):
    """The logs are appended during the run; a crash can cut their last line short. Resume drops
    what was logged after the checkpoint, and so that line too (it failed, or kept a bogus row)."""
    cfg = load_config(cartpole_yaml, [f"run.root={tmp_path}", *SMALL])
    Trainer(cfg, new_run_dir(cfg, "crashed")).learn(stop_at=256)
    run = tmp_path / "crashed"
    with open(run / "samples.jsonl", "a") as f:
        f.write('{"step": 256, "prompt": "a", "response": "b"}\n{"step": 512, "prom')
    with open(run / "metrics.csv", "a") as f:
        f.write("5")  # the start of the row of step 512
    assert main([*train_args(cartpole_yaml, tmp_path), "--resume", str(run)]) == 0
    with open(run / "metrics.csv", newline="") as f:
        assert [row["step"] for row in csv.DictReader(f)] == ["256", "512", "512"]
    lines = (run / "samples.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [256]
