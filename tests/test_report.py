"""The self-contained HTML report, from short real runs (a DEML run and its lambda = 0 twin)."""
from __future__ import annotations

import json
import re

import pytest

from engine import cli
from engine.config import preset
from engine.runs import RunDir
from engine.train.launch import start_run
from engine.viz.report import build_report

TINY = dict(dataset="glyphs:classes=60,drawings=8,seed=1", steps=8, width=8, concept_dim=16, meta_batch=2,
            ext_batch=8, val_every=4, val_episodes=8, snapshot_every=2, checkpoint_every=8)


@pytest.fixture(scope="module")
def twins(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    dirs = []
    for lam in (1.0, 0.0):
        trainer, run = start_run(preset("smoke").with_overrides(lam=lam, **TINY), str(root / f"lam{lam:g}"))
        trainer.run(run)
        dirs.append(str(run.path))
    return dirs


def test_report_is_self_contained_and_complete(twins, tmp_path):
    deml, vanilla = twins
    out = tmp_path / "report.html"
    summary = build_report(deml, str(out), method="pca", episodes=20, curve_episodes=10)
    page = out.read_text(encoding="utf-8")
    assert summary["twin"] == vanilla and summary["frames"] == len(RunDir(deml).snapshot_steps())
    # offline: plotly.js is inlined once, nothing is fetched from anywhere
    assert not re.search(r"<script[^>]+src=", page) and not re.search(r"<link[^>]+href=", page)
    assert page.count("Plotly.newPlot") == 3 and len(page) > 3_000_000  # the inlined library is ~4.7 MB
    # what a stakeholder needs: results of both twins, curves, the animation, the configuration
    assert "DEML (λ = 1)" in page and "vanilla (λ = 0)" in page
    assert f"{summary['test_accuracy']:.3f}" in page
    assert '"frames"' in page or "frames" in page
    n_frames = len(re.findall(r'"name":\s*"(\d+)"', page))
    assert n_frames >= summary["frames"]
    assert "Regions exact" in page  # PCA layout: the discriminator's regions are exact
    assert "ext_batch" in page  # the configuration table
    # the evaluations it needed were recorded, and are reused next time
    kinds = [e["kind"] for e in RunDir(deml).read_evaluations()]
    assert kinds.count("evaluate") == 1 and kinds.count("curve") == 1
    build_report(deml, str(tmp_path / "again.html"), method="pca", episodes=20, curve_episodes=10)
    assert len(RunDir(deml).read_evaluations()) == 2


def test_report_without_a_twin_says_how_to_get_one(twins, tmp_path):
    out = tmp_path / "solo.html"
    summary = build_report(twins[0], str(out), twin=None, method="pca", episodes=10, curve_episodes=5)
    assert summary["twin"] is None
    page = out.read_text(encoding="utf-8")
    assert "No λ = 0 twin" in page and "vanilla (λ = 0)" not in page


def test_report_command_line(twins, tmp_path, capsys):
    out = tmp_path / "cli.html"
    code = cli.main(["report", twins[1], "-o", str(out), "--method", "pca", "--episodes", "10"])
    assert code == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["report"] == str(out) and out.is_file() and result["twin"] == twins[0]
    assert cli.main(["report", twins[1], "-o", str(tmp_path / "x.pdf")]) == 2
    assert "error: the report is an HTML file" in capsys.readouterr().err
