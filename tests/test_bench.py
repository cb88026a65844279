"""Smoke versions of the benchmarks, so the commands in BENCHMARKS.md cannot rot."""
from __future__ import annotations

import contextlib
import io
import json
import re

import numpy as np
import pytest

from engine.bench import BENCHMARKS
from engine.bench.throughput import throughput
from engine.cli import main
from engine.config import preset
from engine.errors import UserError

NEEDS_OMNIGLOT = {"omniglot", "deml", "headstart", "smalldata"}  # their --smoke still trains on Omniglot (zips too)
SLOW = {"projection", "live", "omniglot", "deml", "cost"}


def bench(*argv) -> tuple[int, str, str]:
    """`python -m engine bench ARGV` in-process: (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["bench", *argv])
    return code, out.getvalue(), err.getvalue()


@pytest.mark.parametrize("name", [pytest.param(n, marks=[pytest.mark.slow] * (n in SLOW)) for n in BENCHMARKS])
def test_every_benchmark_runs_its_smoke_form(name, request):
    if name in NEEDS_OMNIGLOT:
        request.getfixturevalue("omniglot_dir")  # skips where the data is missing
    code, out, err = bench(name, "--smoke")
    assert code == 0, err
    if name == "summary":  # markdown tables, not JSON: two omniglot runs, and a deml study merged with its extension
        omniglot, deml = out.strip().split("\n\n")[:2]  # then the notes under the deml table
        assert omniglot.startswith("| learner | λ | training | 5w1s") and len(omniglot.splitlines()) == 4
        assert [line.split(" | ")[0] for line in deml.splitlines()[2:]] == ["| deml", "| vanilla", "| deml-lam10"]
    else:
        assert json.loads(out.strip().splitlines()[-1])["benchmark"] == name


def test_bench_help_lists_every_benchmark_and_each_its_own_flags():
    def help_text(*argv) -> str:
        out = io.StringIO()
        with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_:
            main(["bench", *argv, "--help"])
        assert exit_.value.code == 0
        return out.getvalue()

    listed = re.findall(r"^ {4}(\S+)", help_text(), re.MULTILINE)  # "    NAME   its help", wrapped or not
    assert listed == list(BENCHMARKS)
    for name in BENCHMARKS:
        assert "--smoke" in help_text(name)
    assert "--parts" in help_text("cost") and "--parts" not in help_text("deml")


@pytest.mark.parametrize("argv, message", [
    (["throughput", "--rounds", "0"], "--rounds must be at least 1 (got 0)"),
    (["cost", "--parts", "vmap,nope"], "--parts: unknown nope; choose from settings, vmap, scaling, memory"),
    (["deml", "--seeds", "0,x"], "--seeds takes comma-separated numbers"),
    (["omniglot", "--minutes", "5", "--steps", "10"], "give the training budget as --minutes or --steps, not both"),
    (["summary"], "bench summary needs --results FILE.json"),
    (["projection", "--rounds", "3"], "unrecognized arguments: --rounds 3"),  # another benchmark's flag
    (["smalldata", "--set", "head-start"], "--set 'head-start': write NAME=VALUE"),
    (["smalldata", "--set", "nope=1"], "--set nope: not a train setting"),
    (["profile", "--smoke", "--set", "norm=layer"], "--set: setting 'norm' is 'layer', which is not one of batch"),
    (["profile", "--smoke", "--set", "ways=two"], "--set: setting 'ways' is 'two', which is not a whole number"),
    (["nonesuch"], "invalid choice: 'nonesuch'"),
], ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_bench_bad_input_is_one_error_line(argv, message):
    code, out, err = bench(*argv)
    assert code == 2 and out == "" and err.count("\n") == 1 and err.startswith("error: "), err
    assert message in err


TINY = dict(dataset="glyphs:classes=60,drawings=8,seed=1", width=8, concept_dim=16, meta_batch=2, ext_batch=8)


@pytest.mark.parametrize("learner", ["protonet", "maml"])
def test_throughput_benchmark_reports_a_ratio(learner):
    result = throughput(preset("smoke").with_overrides(learner=learner, inner_steps=2, **TINY), rounds=2,
                        steps_per_round=2, log=io.StringIO())
    assert result["images_per_step"] == 2 * 5 * (1 + 4) + 8  # tasks x ways x (shots + queries) + external
    assert result["trainer_ms_per_step"] > 0 and result["raw_ms_per_step"] > 0
    assert 0 < result["ratio_min"] <= result["ratio_median"] <= result["ratio_max"]


@pytest.mark.slow
def test_projection_benchmark_smoke():
    from engine.bench.projection import REFINE_SWEEP, projection_benchmark

    result = projection_benchmark(None, points=(60,), reps=1, stability_max_points=60, log=io.StringIO())
    (row,) = result["results"]
    assert row["points"] == 60 and row["umap_update_s"] > 0 and row["regions_exact_pca_60x60_s"] > 0
    stability = row["stability"]
    assert stability["frames"] == result["source"]["snapshots"]
    # the measured claim: warm-started, aligned updates move less than independent (aligned) refits
    assert stability["ratio_update_vs_aligned_refits"] < 1.0
    sweep = row["refine_sweep"]  # each epoch count of the sweep: a time and a trustworthiness in (0, 1]
    assert {f"epochs_{e}" for e in REFINE_SWEEP} < set(sweep) and 0 < sweep["fresh_fit_trustworthiness"] <= 1
    assert all(sweep[f"epochs_{e}"]["update_s"] > 0 and 0 < sweep[f"epochs_{e}"]["trustworthiness"] <= 1
               for e in REFINE_SWEEP)


TINY_MODEL = dict(width=8, concept_dim=16, val_episodes=4, probe_classes=2, probe_per_class=2)


@pytest.mark.slow
def test_omniglot_benchmark_smoke(omniglot_dir, tmp_path):
    """Two steps on the real background set: four settings scored on the unseen alphabets at each
    mark, a normal run directory left behind, and the acceptance command on another npz."""
    import json

    import numpy as np

    from engine.bench.omniglot import omniglot_benchmark
    from engine.cli import main

    result = omniglot_benchmark(str(tmp_path / "run"), "protonet", 1.0, steps=2, episodes=3,
                                overrides=TINY_MODEL, log=io.StringIO())
    assert set(result["final"]) == {"5w1s", "5w5s", "20w1s", "20w5s"}
    assert [p["step"] for p in result["curve"]] == [1, 2]
    assert 0 < result["curve"][0]["train_seconds"] < result["curve"][1]["train_seconds"]
    for r in result["final"].values():
        assert 0 <= r["accuracy"] <= 1 and r["ci95"] >= 0
    splits = json.loads((tmp_path / "run" / "splits.json").read_text())["units"]
    assert result["test_alphabets"] == splits["meta-test"] and len(splits["meta-test"]) == 6
    assert not set(splits["meta-test"]) & (set(splits["meta-train"]) | set(splits["external"]))
    assert json.loads((tmp_path / "run" / "bench.json").read_text())["final"] == result["final"]

    # `evaluate RUN --dataset FILE.npz --classes all` on data laid out like the background file
    with np.load(omniglot_dir / "images_background.npz") as bg:
        np.savez(tmp_path / "other.npz", images=bg["images"][-25:], labels=np.arange(25)[:, None].repeat(20, 1))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["evaluate", str(tmp_path / "run"), "--dataset", str(tmp_path / "other.npz"), "--classes", "all",
                     "--ways", "20", "--shots", "1", "--episodes", "50"]) == 0
    scored = json.loads(out.getvalue())
    assert scored["ways"] == 20 and scored["episodes"] == 50 and 0 < scored["accuracy"] <= 1


DEML_DATA = "glyphs:classes=400,drawings=6,seed=2"  # 20 alphabets: 2 val, 4 test, 4 external, 10 train


@pytest.mark.slow
def test_deml_benchmark_smoke():
    from engine.bench.deml import deml_benchmark

    result = deml_benchmark(train_alphabets=2, steps=2, seeds=(0, 1), sweep=(0.5,), cross_domain="digits",
                            episodes=3, val_episodes=3, dataset=DEML_DATA, queries=2, overrides=TINY_MODEL,
                            log=io.StringIO())
    assert set(result["runs"]) == {"deml", "vanilla", "pooled", "deml-eps", "deml-digits", "deml-lam0.5"}
    assert [r["lam"] for r in result["runs"]["deml-eps"]] == [1e-9, 1e-9]
    assert all(set(r["val_equal_steps"]) == {"5w1s", "20w1s"} for rows in result["runs"].values() for r in rows)
    assert result["selection"]["5w1s"]["chosen_on"] == "meta-validation"
    assert len(result["train_alphabets"]) == 2 and not set(result["train_alphabets"]) & set(result["test_alphabets"])
    for name, rows in result["runs"].items():
        assert [r["seed"] for r in rows] == [0, 1] and all(r["steps"] == 2 for r in rows)
    for row, deml in zip(result["runs"]["vanilla"], result["runs"]["deml"]):
        # equal time: vanilla trains on until it has used the DEML run's training time
        assert row["equal_time_seconds"] >= deml["seconds"] and row["equal_time_steps"] >= 2
    summary = result["summary"]
    assert "gain_equal_steps" not in summary["vanilla"]["5w1s"]
    pooled, vanilla = result["runs"]["pooled"], result["runs"]["vanilla"]
    expected = np.mean([p["equal_time"]["20w1s"] - v["equal_time"]["20w1s"] for p, v in zip(pooled, vanilla)])
    assert summary["pooled"]["20w1s"]["gain_equal_time"][0] == pytest.approx(expected)


def test_deml_study_of_the_demo_recipe_trains_on_glyph_alphabets():
    from engine.bench.deml import deml_benchmark

    result = deml_benchmark(train_alphabets=2, steps=1, seeds=(0,), sweep=(), cross_domain="", episodes=2,
                            val_episodes=2, recipe="demo", dataset=DEML_DATA, queries=1,
                            overrides=TINY_MODEL, log=io.StringIO())
    assert result["recipe"] == "demo" and result["dataset"].startswith("glyphs")
    assert [a.startswith("alphabet") for a in result["train_alphabets"]] == [True, True]
    assert set(result["runs"]) == {"deml", "vanilla", "pooled", "deml-eps"}


def test_lambda_is_chosen_on_validation_and_reported_with_its_test_number():
    from engine.bench.deml import choose_lambda, summarise
    from engine.bench.summary import deml_table

    def rows(lam, test, val):
        return [{"seed": s, "lam": lam, "equal_steps": {"5w1s": test + s / 100}, "equal_time": {"5w1s": test + s / 100},
                 "val_equal_steps": {"5w1s": val}} for s in range(5)]

    # the best on test (lam 10) is not the best on validation (lam 3): validation decides
    runs = {"vanilla": rows(0.0, 0.70, 0.60), "deml-eps": rows(1e-9, 0.70, 0.60), "deml": rows(1.0, 0.75, 0.65),
            "deml-lam3": rows(3.0, 0.78, 0.70), "deml-lam10": rows(10.0, 0.80, 0.69), "pooled": rows(0.0, 0.9, 0.9)}
    chosen = choose_lambda(runs)["5w1s"]
    assert chosen["variant"] == "deml-lam3" and chosen["lam"] == 3.0 and chosen["chosen_on"] == "meta-validation"
    assert chosen["compared"] == 5  # pooled is another kind of control, not a lambda
    assert chosen["test"]["split"] == "meta-test" and chosen["test"]["equal_steps"][0] == pytest.approx(0.80)
    summary = summarise(runs)
    assert summary["deml"]["5w1s"]["split"] == "meta-test"
    assert summary["deml"]["5w1s"]["validation"]["split"] == "meta-validation"
    table = deml_table({"summary": summary, "runs": runs, "seeds": list(range(5))})
    assert "5w1s test, equal steps" in table and "5w1s val, equal steps" in table
    assert "chosen on meta-validation among 5 variants: deml-lam3" in table and "4 degrees of freedom" in table


def test_intervals_use_the_student_t_quantile_of_their_degrees_of_freedom():
    from engine.eval.evaluate import mean_ci95, t95

    # published two-sided 95% quantiles; at 10 and 30 df too (an old table fell back to 1.96 there)
    for df, t in ((1, 12.706), (2, 4.303), (4, 2.776), (9, 2.262), (10, 2.228), (30, 2.042), (599, 1.964)):
        assert t95(df) == pytest.approx(t, abs=1e-3), df
    mean, ci = mean_ci95([0.90, 0.92, 0.94])
    assert mean == pytest.approx(0.92) and ci == pytest.approx(4.303 * 0.02 / np.sqrt(3), rel=1e-3)
    eleven = np.linspace(0.8, 0.9, 11)
    assert mean_ci95(eleven)[1] == pytest.approx(2.228 * eleven.std(ddof=1) / np.sqrt(11), rel=1e-3)
    assert np.isnan(mean_ci95([0.5])[1])


def test_cost_benchmark_smoke():
    from engine.bench import cost as bench_cost

    rows = bench_cost.vmap_benchmark(1, 1, io.StringIO(), meta_batches=(2,))
    assert [(r["learner"], r["meta_batch"]) for r in rows] == [("maml", 2), ("metasgd", 2)]
    assert all(r["step_ratio_vmap_to_loop"] > 0 and r["learner_ratio_vmap_to_loop"] > 0 for r in rows)
    rows = bench_cost.scaling_benchmark(1, 1, io.StringIO(), grid={"ways": (2, 3)})
    assert [r["images_per_step"] for r in rows] == [4 * 2 * 6 + 64, 4 * 3 * 6 + 64]


@pytest.mark.slow
def test_cost_settings_and_memory_smoke():
    from engine.bench import cost as bench_cost

    rows = bench_cost.settings_benchmark(1, 1, io.StringIO(), compile_too=False)  # compiling takes a minute
    names = [r["setting"] for r in rows]
    assert names[0].startswith("channels_last") and "NCHW (torch's default)" in names and "one G pass per task" in names
    assert rows[0]["ratio_to_default"] == 1.0 and all(r["ms"] > 0 for r in rows if "ms" in r)
    (row,) = bench_cost.memory_benchmark(presets=("smoke",), steps=3, log=io.StringIO())
    assert 50 < row["peak_rss_mib"] < 4096


def test_summary_renders_tables_and_plot(tmp_path):
    import json

    from engine.bench.summary import summary

    point = {s: {"accuracy": 0.9, "ci95": 0.01} for s in ("5w1s", "5w5s", "20w1s", "20w5s")}
    results = []
    for i, (learner, lam) in enumerate((("protonet", 1.0), ("maml", 0.0))):
        r = {"benchmark": "omniglot", "learner": learner, "lam": lam, "seed": 0, "steps": 10, "train_seconds": 60.0,
             "final": point, "curve": [{"step": 5, "train_seconds": 30.0, **point}, {"step": 10, "train_seconds": 60.0, **point}]}
        results.append(tmp_path / f"r{i}.json")
        results[-1].write_text(json.dumps(r))
    out = summary([str(p) for p in results], str(tmp_path / "plot.svg"))
    table = out["tables"][0].splitlines()
    assert table[0].startswith("| learner | λ | training | 5w1s") and len(table) == 4
    assert "| maml | 0 | 1.0 min (10 steps) | 90.0 ± 1.0" in table[2]
    svg = (tmp_path / "plot.svg").read_text()
    assert svg.startswith("<svg") and svg.count("<polyline") == 8 and "maml λ=0" in svg


def test_summary_merges_an_extended_deml_sweep(tmp_path):
    import json

    from engine.bench.deml import summarise
    from engine.bench.summary import summary

    def rows(acc, time_acc=None):
        return [{"seed": s, "steps": 3, "seconds": 1.0, "equal_steps": {"5w1s": acc + s / 100},
                 **({"equal_time": {"5w1s": time_acc + s / 100}} if time_acc else {})} for s in (0, 1, 2)]

    study = dict(benchmark="deml", train_alphabets=["a"], test_alphabets=["t"], steps=3, seeds=[0, 1, 2],
                 episodes=10, test_queries=2)
    full = {**study, "runs": {"deml": rows(0.80), "vanilla": rows(0.70, 0.72)}}
    extra = {**study, "runs": {"deml": rows(0.80), "deml-lam10": rows(0.90)}}
    for name, r in (("full", full), ("extra", extra)):
        r["summary"] = summarise(r["runs"])
        (tmp_path / f"{name}.json").write_text(json.dumps(r))
    (table,) = summary([str(tmp_path / "full.json"), str(tmp_path / "extra.json")])["tables"]
    lam10 = next(line for line in table.splitlines() if line.startswith("| deml-lam10 |"))
    # 0.90 vs vanilla's 0.70 at equal steps (+20.0 points) and vs its 0.72 at equal time (+18.0)
    assert "| +20.0 ± 0.0 |" in lam10 and "| +18.0 ± 0.0 |" in lam10
    (tmp_path / "other.json").write_text(json.dumps({**extra, "steps": 4}))
    with pytest.raises(UserError, match="different studies"):
        summary([str(tmp_path / "full.json"), str(tmp_path / "other.json")])


def test_smalldata_scores_only_the_alphabets_the_training_zip_lacks(omniglot_dir):
    from engine.bench.smalldata import SCORE_ZIP, TRAIN_ZIP, unseen_alphabets
    from engine.data.imageset import Preprocess
    from engine.data.sources import load_imageset

    prep = Preprocess(28, 1, "auto")
    unseen = unseen_alphabets(load_imageset(str(omniglot_dir / SCORE_ZIP), prep),
                              load_imageset(str(omniglot_dir / TRAIN_ZIP), prep))
    assert sorted(set(unseen.groups)) == ["Japanese_(katakana)", "Sanskrit", "Tagalog"]
    assert unseen.num_classes == 47 + 42 + 17


@pytest.mark.slow
def test_small_data_meets_the_engines_first_acceptance(omniglot_dir):
    """The engine's small-data check as `python -m engine train --dataset images_background_small1.zip
    --steps 400` trains it (the head start on, as auto chooses for a gray zip): >= 0.85 5-way 1-shot on
    small2's alphabets small1 lacks. Seed 0 read 0.883 on 600 episodes (5 seeds: 0.882 +- 0.004; from
    scratch 0.840 +- 0.005, BENCHMARKS.md); the same seed gives the same number."""
    from engine.bench.smalldata import smalldata_benchmark

    result = smalldata_benchmark(seeds=(0,), episodes=200, log=io.StringIO())
    (run,) = result["runs"]
    assert run["head_start"] == "on" and result["steps"] == 400
    assert result["accuracy"] >= 0.85, result
