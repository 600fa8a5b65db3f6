"""`textrlhf report` (agents/run/report.py) and `textrlhf export-trajectories`: the page is one
self-contained file with the run's data inline, it is written at the end of every training run
(and a failure to write it is a warning, never a failed run), several runs share one page, and
the export writes one record per logged episode (JSONL; Parquet with pyarrow)."""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import pytest
from helpers import CONFIGS

from agents.cli import main
from agents.run import report as report_module
from agents.run.config import load_config
from agents.run.trainer import train
from agents.run.trajectories import EXPORT_FIELDS

CALC = [
    "total_timesteps=2304", "env.num_envs=16", "ppo.batch_size=384", "eval.episodes=0",
    "run.progress=false", "run.checkpoint_every=0",
]  # fmt: skip


@pytest.fixture(scope="module")
def calc_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("calc")
    return train(load_config(CONFIGS / "text_calc_tool.yaml", [f"run.root={root}", *CALC]), "calc")


def page_data(path: Path) -> dict:
    """The JSON the page embeds (what its script draws)."""
    html = path.read_text(encoding="utf-8")
    match = re.search(r'<script type="application/json" id="data">(.*?)</script>', html, re.S)
    assert match, "the page embeds its data"
    return json.loads(match.group(1))


def test_training_writes_a_self_contained_report(calc_run):
    page = calc_run / "report.html"
    html = page.read_text(encoding="utf-8")
    # nothing is fetched: no external script, style, image or frame; no fetch / XHR / import
    assert not re.search(r"<(link|img|iframe)\b|\bsrc=|https?://(?!www\.w3\.org/2000/svg)", html)
    assert not re.search(r"\bfetch\(|XMLHttpRequest|import\(", html)
    data = page_data(page)
    (run,) = data["runs"]
    assert run["name"] == "calc" and "text_calc_tool" in run["config"]
    assert run["summary"]["steps"] == 2304
    # the curves: metrics.csv's columns as (step, value) points
    assert [p[0] for p in run["metrics"]["rollout/ep_return"]] == [768, 1536, 2304]
    titles = [title for title, _ in data["panels"]]
    for title in ("return", "KL to reference (per episode)", "beta", "entropy", "value loss",
                  "log-prob drift", "diagnostics/outside_clip_band_epoch0",
                  "episode/used_tool"):  # fmt: skip
        assert title in titles, title
    # the episode viewer's data: trajectories.jsonl, whole
    lines = (calc_run / "trajectories.jsonl").read_text().splitlines()
    assert run["episodes"] == [json.loads(line) for line in lines]


def test_a_page_shows_several_runs(calc_run, tmp_path):
    other = shutil.copytree(calc_run, tmp_path / "other")
    out = tmp_path / "both.html"
    assert main(["report", str(calc_run), str(other), "--out", str(out)]) == 0
    data = page_data(out)
    assert [r["name"] for r in data["runs"]] == ["calc", "other"]
    assert data["runs"][0]["metrics"] == data["runs"][1]["metrics"]


def test_text_that_closes_the_script_cannot_break_the_page(calc_run, tmp_path):
    run = shutil.copytree(calc_run, tmp_path / "run")
    record = json.loads((run / "trajectories.jsonl").read_text().splitlines()[0])
    record["prompt"] = "</script><script>alert(1)</script><!--"
    (run / "trajectories.jsonl").write_text(json.dumps(record) + "\n")
    html = report_module.write_report([run]).read_text()
    assert html.count("</script>") == 2  # the data's and the code's own
    assert page_data(run / "report.html")["runs"][0]["episodes"][0]["prompt"] == record["prompt"]


def test_a_report_that_cannot_be_written_does_not_fail_the_run(tmp_path, monkeypatch, capsys):
    def broken(runs, out=None):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(report_module, "write_report", broken)
    cfg = load_config(CONFIGS / "cartpole.yaml", [f"run.root={tmp_path}", "total_timesteps=256",
                                                  "eval.episodes=0", "run.progress=false"])  # fmt: skip
    run = train(cfg, "cp")
    assert (run / "summary.json").is_file() and not (run / "report.html").exists()
    err = capsys.readouterr().err
    assert f"textrlhf: warning: could not write {run / 'report.html'}: OSError" in err


def test_report_errors_name_the_folder(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 1
    assert f"{tmp_path} is not a run folder" in capsys.readouterr().err


def test_a_cartpole_report_has_curves_and_no_episodes(finished):
    data = page_data(finished / "report.html")
    assert data["runs"][0]["episodes"] == []
    assert "diagnostics/ess" in data["runs"][0]["metrics"]


# ----------------------------------------------------------------------------- export


def test_export_writes_one_record_per_logged_episode(calc_run, tmp_path):
    out = tmp_path / "episodes.jsonl"
    assert main(["export-trajectories", str(calc_run), str(out)]) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    logged = [
        json.loads(line) for line in (calc_run / "trajectories.jsonl").read_text().splitlines()
    ]
    assert len(records) == len(logged) == 12
    for record, source in zip(records, logged):
        assert list(record) == list(EXPORT_FIELDS)
        assert record == {k: source[k] for k in EXPORT_FIELDS}
    assert not list(tmp_path.glob(".*tmp"))  # atomic: no temp file left


def test_export_to_parquet_or_a_clear_error(calc_run, tmp_path, monkeypatch, capsys):
    out = tmp_path / "episodes.parquet"
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # as if pyarrow were not installed
    assert main(["export-trajectories", str(calc_run), str(out)]) == 1
    assert "needs pyarrow, which is not installed: pip install pyarrow" in capsys.readouterr().err
    assert not out.exists()
    monkeypatch.undo()
    pq = pytest.importorskip("pyarrow.parquet")
    assert main(["export-trajectories", str(calc_run), str(out)]) == 0
    table = pq.read_table(out).to_pylist()
    records = [
        json.loads(line) for line in (calc_run / "trajectories.jsonl").read_text().splitlines()
    ]
    assert len(table) == len(records)
    for row, record in zip(table, records):
        assert row["token_ids"] == record["token_ids"] and row["logprobs"] == record["logprobs"]
        assert json.loads(row["info"]) == record["info"]


@pytest.mark.parametrize(
    "name, message",
    [("x.csv", "must end in one of .jsonl, .parquet"), ("x.jsonl", "has no trajectories.jsonl")],
)
def test_export_errors_name_the_problem(finished, tmp_path, capsys, name, message):
    assert main(["export-trajectories", str(finished), str(tmp_path / name)]) == 1
    assert message in capsys.readouterr().err
