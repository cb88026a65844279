"""python -m engine bench summary --results RESULT.json...: benchmark results as markdown tables for
BENCHMARKS.md, and for Omniglot an accuracy-against-training-time plot (a standalone SVG, so BENCHMARKS.md shows it without plotly's
image export, which would need a browser engine at run time). `--smoke` summarises built-in
example results (examples()) through the same code."""
from __future__ import annotations

import json
import tempfile
from html import escape
from pathlib import Path

from engine.bench.deml import summarise
from engine.bench.omniglot import SETTINGS, setting_name
from engine.errors import UserError

COLOURS = {"protonet": "#1f77b4", "maml": "#d62728", "metasgd": "#2ca02c", "matching": "#9467bd", "reptile": "#8c564b"}
PANEL_W, PANEL_H, MARGIN, TOP = 330, 220, 48, 46  # px: one panel, the gaps, the title band


def load_results(paths: list[str]) -> list[dict]:
    out = []
    for p in paths:
        try:
            result = json.loads(Path(p).read_text())
        except (OSError, ValueError) as e:
            raise UserError(f"{p}: not a benchmark result ({e})") from None
        if not isinstance(result, dict) or result.get("benchmark") not in ("omniglot", "deml"):
            raise UserError(f"{p}: not the output of `python -m engine bench omniglot` or `bench deml`")
        out.append(result)
    return out


def label(result: dict) -> str:
    return f"{result['learner']} λ={result['lam']:g}"


def pct(mean_ci, sign: bool = False) -> str:
    """(0.9312, 0.0041) -> '93.1 ± 0.4' (percent); sign=True: '+93.1 ± 0.4', never '-0.0'."""
    mean, ci = round(100 * mean_ci[0], 1) + 0.0, 100 * mean_ci[1]
    text = f"{mean:+.1f}" if sign else f"{mean:.1f}"
    return text if ci != ci else f"{text} ± {ci:.1f}"  # ci is nan for a single seed


def omniglot_table(results: list[dict]) -> str:
    names = [setting_name(w, k) for w, k in SETTINGS]
    lines = ["| learner | λ | training | " + " | ".join(names) + " |", "|---|---|---|" + "---|" * len(names)]
    for r in results:
        cells = [pct((r["final"][n]["accuracy"], r["final"][n]["ci95"])) for n in names]
        lines.append(f"| {r['learner']} | {r['lam']:g} | {r['train_seconds'] / 60:.1f} min ({r['steps']} steps) | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


def _stroke(result: dict) -> str:
    """A run's line style: its learner's colour, dashed for lambda = 0."""
    dash = ' stroke-dasharray="5,3"' if result["lam"] == 0 else ""
    return f'stroke="{COLOURS.get(result["learner"], "#333")}"{dash}'


def accuracy_time_svg(results: list[dict]) -> str:
    """Test accuracy against training minutes, one panel per setting, one line per run
    (dashed: lambda = 0)."""
    if not results:
        raise UserError("no results to plot")
    t_max = max(p["train_seconds"] for r in results for p in r["curve"]) / 60 or 1.0
    parts = []
    for i, (ways, shots) in enumerate(SETTINGS):
        name = setting_name(ways, shots)
        ox, oy = MARGIN + (i % 2) * (PANEL_W + MARGIN), TOP + (i // 2) * (PANEL_H + MARGIN)
        accs = [p[name]["accuracy"] for r in results for p in r["curve"]]
        lo = min(max(0.0, min(accs) - 0.01), 0.95)  # the panel's lowest accuracy

        def xy(minutes, acc):
            return ox + PANEL_W * minutes / t_max, oy + PANEL_H * (1 - (acc - lo) / (1 - lo))

        parts.append(f'<rect x="{ox}" y="{oy}" width="{PANEL_W}" height="{PANEL_H}" fill="none" stroke="#999"/>')
        parts.append(f'<text x="{ox}" y="{oy - 6}" font-size="13" font-weight="bold">{name}</text>')
        for frac in (0, 0.5, 1):  # y ticks
            acc = lo + frac * (1 - lo)
            _, y = xy(0, acc)
            parts.append(f'<text x="{ox - 4}" y="{y + 4}" font-size="10" text-anchor="end">{100 * acc:.0f}%</text>')
        for frac in (0, 0.5, 1):  # x ticks
            x, _ = xy(frac * t_max, lo)
            parts.append(f'<text x="{x}" y="{oy + PANEL_H + 13}" font-size="10" text-anchor="middle">'
                         f'{frac * t_max:.0f} min</text>')
        for r in results:
            pts = " ".join(f"{x:.1f},{y:.1f}" for x, y in (xy(p["train_seconds"] / 60, p[name]["accuracy"])
                                                          for p in r["curve"]))
            parts.append(f'<polyline points="{pts}" fill="none" {_stroke(r)} stroke-width="1.8"/>')
    legend_y = TOP + 2 * (PANEL_H + MARGIN) - 10
    for j, r in enumerate(results):
        x = MARGIN + (j % 3) * 230
        y = legend_y + (j // 3) * 18
        parts.append(f'<line x1="{x}" y1="{y}" x2="{x + 24}" y2="{y}" {_stroke(r)} stroke-width="2"/>')
        parts.append(f'<text x="{x + 30}" y="{y + 4}" font-size="12">{escape(label(r))}</text>')
    width = 2 * PANEL_W + 3 * MARGIN
    height = legend_y + 18 * ((len(results) + 2) // 3) + 10
    title = "Omniglot, unseen alphabets: test accuracy against training time (2 CPU cores)"
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'font-family="sans-serif"><rect width="100%" height="100%" fill="white"/>'
            f'<text x="{MARGIN}" y="18" font-size="14">{escape(title)}</text>{"".join(parts)}</svg>')


def deml_table(result: dict) -> str:
    """Mean ± t-CI over seeds, and the paired gain over vanilla, at equal steps and equal time (meta-test);
    the meta-validation mean at equal steps where recorded; and the lambda chosen on meta-validation."""
    settings = list(next(iter(result["summary"].values())))
    with_val = all("validation" in e[s] for e in result["summary"].values() for s in settings)
    head = []
    for s in settings:
        head += [f"{s} test, equal steps", f"{s} gain", f"{s} test, equal time", f"{s} gain"]
        head += [f"{s} val, equal steps"] if with_val else []
    lines = ["| variant | " + " | ".join(head) + " |", "|---|" + "---|" * len(head)]
    for name, entry in result["summary"].items():
        cells = []
        for s in settings:
            e = entry[s]
            cells += [pct(e["equal_steps"]), gain(e.get("gain_equal_steps")),
                      pct(e["equal_time"]), gain(e.get("gain_equal_time"))]
            cells += [pct(e["validation"]["equal_steps"])] if with_val else []
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    seeds = len(result.get("seeds", []))
    compared = len([n for n in result["summary"] if n != "vanilla"])
    lines.append(f"\n{seeds} seed{'s' * (seeds != 1)} per cell; ± is the Student-t 95% interval over seeds "
                 f"({max(seeds - 1, 0)} degrees of freedom); {compared} variants each compared with vanilla, with no "
                 "correction for that many comparisons; overlapping intervals do not order two variants.")
    for s, c in (deml_selection(result) or {}).items():
        lines.append(f"\n{s}: lambda chosen on meta-validation among {c['compared']} variants: {c['variant']} "
                     f"(lambda {c['lam']:g}, val {100 * c['val_accuracy']:.1f}); its meta-test accuracy "
                     f"{pct(c['test']['equal_steps'])}.")
    return "\n".join(lines)


def deml_selection(result: dict) -> dict | None:
    from engine.bench.deml import choose_lambda

    return choose_lambda(result["runs"])


def merge_deml(results: list[dict]) -> dict | None:
    """One deml result from several of the same study (e.g. a sweep extended later): their runs
    side by side, summarised again. A variant in two results keeps the first one's runs."""
    if not results:
        return None
    same = ("train_alphabets", "test_alphabets", "steps", "seeds", "episodes", "test_queries")
    first = results[0]
    for r in results[1:]:
        if differ := [k for k in same if r.get(k) != first.get(k)]:
            raise UserError(f"these deml results are from different studies (they differ in {', '.join(differ)})")
    runs = {}
    for r in results:
        for name, rows in r["runs"].items():
            runs.setdefault(name, rows)
    return {**first, "runs": runs, "summary": summarise(runs)}


def gain(mean_ci) -> str:
    return "" if mean_ci is None else pct(mean_ci, sign=True)


def summary(paths: list[str], svg_out: str | None = None) -> dict:
    results = load_results(paths)
    omniglot = sorted((r for r in results if r["benchmark"] == "omniglot"),
                      key=lambda r: (r["learner"], -r["lam"], r["seed"]))
    deml = merge_deml([r for r in results if r["benchmark"] == "deml"])
    out = {"benchmark": "summary", "tables": [deml_table(deml)] if deml else []}
    if omniglot:
        out["tables"].insert(0, omniglot_table(omniglot))
        if svg_out:
            Path(svg_out).write_text(accuracy_time_svg(omniglot))
            out["svg"] = svg_out
    return out


# --- the command ------------------------------------------------------------------------------
def add_arguments(parser) -> None:
    parser.add_argument("--results", nargs="+", metavar="JSON", help="outputs of bench omniglot / deml")
    parser.add_argument("--svg", metavar="FILE.svg", help="write the accuracy-against-time plot here")


def run(args) -> None:
    """Prints markdown (to paste into BENCHMARKS.md), not JSON."""
    if args.smoke:
        with tempfile.TemporaryDirectory(prefix="bench-summary-") as tmp:
            tables = summary(write_examples(tmp), args.svg or f"{tmp}/plot.svg")["tables"]
    elif not args.results:
        raise UserError("bench summary needs --results FILE.json ... (outputs of bench omniglot or bench deml)")
    else:
        tables = summary(args.results, args.svg)["tables"]
    print("\n\n".join(tables))
    return None


def write_examples(folder: str) -> list[str]:
    """examples() as JSON files in folder (read back as real results are); their paths."""
    paths = []
    for i, result in enumerate(examples()):
        paths.append(str(Path(folder) / f"example{i}.json"))
        Path(paths[-1]).write_text(json.dumps(result))
    return paths


def examples() -> list[dict]:
    """Made-up results shaped like those of bench omniglot (two runs) and bench deml (a study and
    a --no-controls extension of it), for --smoke."""
    def point(acc):
        return {setting_name(w, k): {"accuracy": acc, "ci95": 0.01} for w, k in SETTINGS}

    omniglot = [{"benchmark": "omniglot", "learner": learner, "lam": lam, "seed": 0, "steps": 10,
                 "train_seconds": 60.0, "final": point(acc),
                 "curve": [{"step": 5, "train_seconds": 30.0, **point(acc - 0.1)},
                           {"step": 10, "train_seconds": 60.0, **point(acc)}]}
                for learner, lam, acc in (("protonet", 1.0, 0.9), ("maml", 0.0, 0.8))]

    def rows(acc, time_acc=None):
        return [{"seed": s, "steps": 2, "seconds": 1.0, "equal_steps": {"5w1s": acc + s / 100},
                 **({"equal_time": {"5w1s": time_acc + s / 100}} if time_acc else {})} for s in (0, 1)]

    study = dict(benchmark="deml", train_alphabets=["a"], test_alphabets=["t"], steps=2, seeds=[0, 1], episodes=3,
                 test_queries=2)
    deml = [{**study, "runs": {"deml": rows(0.8), "vanilla": rows(0.7, 0.72)}},
            {**study, "runs": {"deml-lam10": rows(0.85)}}]
    return omniglot + [{**r, "summary": summarise(r["runs"])} for r in deml]
