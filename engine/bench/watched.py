"""What a watched demo costs, in a real browser (python -m engine bench live --browser): the app is
served (`streamlit run app.py`, runs in a temporary folder), Chromium opens it and presses Start demo
(the demo and its lambda = 0 twin train inside the server, as for a visitor; the time from that click
to the first concept map, on this fresh server, is reported too, and to the first UMAP map: until
then UMAP's one-off warm-up shares the cores), then the live view is open (watched) and closed
(about:blank: no session refreshes anything) in alternating windows, each starting settle_s after
the switch: a viewer loads the page once, and for about half a minute after a load Chromium works
harder (plotly.js parsed and compiled in each plot's frame: 0.42, 0.25, 0.19 of a core in three
15-s windows after one load), which a paired window right after each load would charge to
watching. Then the page is loaded once more and left open for kept_windows windows from the load
on: how much the load costs, and whether watching costs more as the run goes on.
Steps/s of the DEML run come from its metrics.jsonl at each window's ends; the result is the median
of watched / unwatched over adjacent windows, so a shared, noisy machine still gives a fair ratio
(the issue's target: >= 0.8). Where the time goes: the cores each part used in each window (Linux
/proc): training (the server's children, where the app's jobs train, and any training thread in the
server itself), the rest of the server (Streamlit, figures, UMAP), Chromium, and everything else.
Needs Playwright and Chromium (requirements-dev.txt; CHROMIUM)."""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

from engine.config import REPO
from engine.errors import UserError
from engine.train.job import OS_THREAD_NAME
from engine.viz.project import UMAP_WARMING

CHROMIUM = os.environ.get("CONCEPTSCAPE_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]
VIEWPORT = {"width": 1366, "height": 768}


def last_step(run_dir: Path) -> int:
    """The last training step recorded in the run's metrics.jsonl (0 before any)."""
    step = 0
    try:
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    except OSError:
        return 0
    for line in reversed(lines):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and record.get("kind") == "train":
            return int(record["step"])
    return step


PARTS = ("training", "server", "chromium", "other")
_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stat(path: str) -> tuple[str, int, float] | None:
    """(comm, ppid, CPU seconds) of a /proc/.../stat file; None if it is gone."""
    try:
        text = Path(path).read_text()
    except OSError:
        return None
    comm, rest = text[text.index("(") + 1:text.rindex(")")], text[text.rindex(")") + 2:].split()
    return comm, int(rest[1]), (int(rest[11]) + int(rest[12])) / _TICK  # utime + stime


def cpu_seconds(server: int) -> dict[tuple[str, int], float]:
    """CPU seconds used so far, by (part of PARTS, pid) (module doc; "other" under pid 0), from /proc;
    {} where there is no /proc. Per pid, so a process that ends within a window drops out of it
    instead of taking its time away from the others (window_cores)."""
    if not Path("/proc/stat").exists():
        return {}
    procs = {int(d): st for d in os.listdir("/proc") if d.isdigit() and (st := _stat(f"/proc/{d}/stat"))}
    # the server: its whole time (threads that ended included) less its training threads' (app jobs in a thread)
    threads = [st for tid in os.listdir(f"/proc/{server}/task") if (st := _stat(f"/proc/{server}/task/{tid}/stat"))]
    training = sum(st[2] for st in threads if st[0] == OS_THREAD_NAME.decode())
    out: dict[tuple[str, int], float] = {("training", server): training,
                                         ("server", server): procs[server][2] - training if server in procs else 0.0}

    def descends(pid: int) -> bool:
        for _ in range(20):
            pid = procs[pid][1] if pid in procs else 0
            if pid == server:
                return True
            if pid <= 1:
                return False
        return False

    for pid, (comm, _, seconds) in procs.items():
        if pid != server and descends(pid):
            out[("training", pid)] = seconds
        elif "chrom" in comm or comm == "headless_shell":
            out[("chromium", pid)] = seconds
    cpu = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    busy = sum(map(int, cpu)) - int(cpu[3]) - int(cpu[4])  # all but idle and iowait
    out[("machine", 0)] = busy / _TICK
    return out


def window_cores(before: dict, after: dict, seconds: float) -> dict[str, float]:
    """Cores each of PARTS used between two cpu_seconds() readings `seconds` apart: processes alive
    at both ends, and those started in between; "other" is the machine's busy time less the rest."""
    used = dict.fromkeys(PARTS, 0.0)
    for key, value in after.items():
        if key[0] in used:
            used[key[0]] += value - before.get(key, 0.0)
    used["other"] = after.get(("machine", 0), 0.0) - before.get(("machine", 0), 0.0) - sum(used.values())
    return {part: round(max(0.0, v) / seconds, 3) for part, v in used.items()}


DEMO_STEPS = 100_000  # the served demo trains this long, so every window finds it training (it is stopped after)
# streamlit run, in a process whose demo preset trains DEMO_STEPS (the demo itself is over in about 300
# steps: too short for alternating windows); everything else as the app serves it
SERVE = ("import sys; from engine import config; config.PRESETS['demo'] = dict(config.PRESETS['demo'], steps={steps}); "
         "from streamlit.web import cli; sys.argv = ['streamlit', 'run', {app!r}] + {flags!r}; cli.main()")


def _serve(runs: Path, port: int) -> subprocess.Popen:
    env = {**os.environ, "CONCEPTSCAPE_RUNS": str(runs), "CONCEPTSCAPE_UPLOADS": str(runs.parent / "uploads")}
    flags = ["--server.port", str(port), "--server.headless", "true", "--browser.gatherUsageStats", "false"]
    proc = subprocess.Popen([sys.executable, "-c", SERVE.format(steps=DEMO_STEPS, app=str(REPO / "app.py"), flags=flags)],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2).status == 200:
                return proc
        except OSError:
            time.sleep(0.3)
    proc.kill()
    raise UserError("bench live --browser: the app did not start within 60 s")


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _until_umap(page, clicked: float, timeout_s: float = 180.0) -> float:
    """Seconds from the click until the run's map is a UMAP layout (its note no longer says UMAP is
    warming up; engine.viz.project)."""
    body = page.frame_locator(".st-key-live_map iframe").locator("body")
    deadline = time.monotonic() + timeout_s
    while UMAP_WARMING in (body.text_content() or "") and time.monotonic() < deadline:
        time.sleep(0.25)
    return time.monotonic() - clicked


def watched_ratio(rounds: int = 4, window_s: float = 15.0, warm_s: float = 10.0, settle_s: float = 20.0,
                  kept_windows: int = 3, log=sys.stderr) -> dict:
    """Watched against unwatched steps/s of a demo started from the page (see the module docstring)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        raise UserError("bench live --browser needs Playwright: pip install -r requirements-dev.txt") from None
    if not Path(CHROMIUM).exists():
        raise UserError(f"bench live --browser needs Chromium at {CHROMIUM} (set CONCEPTSCAPE_CHROMIUM)")
    with tempfile.TemporaryDirectory(prefix="bench-watched-") as tmp:
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        proc = _serve(Path(tmp) / "runs", port)
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
                page = browser.new_context(viewport=VIEWPORT).new_page()
                page.set_default_timeout(180_000)
                page.goto(url)
                page.get_by_role("button", name="Start demo").click()
                clicked = time.monotonic()
                # a marker drawn on the map (ui.glide_map's frame; before the first snapshot it holds a message)
                map_drawn = page.frame_locator(".st-key-live_map iframe").locator(".scatterlayer path.point").first
                map_drawn.wait_for()
                click_to_map = time.monotonic() - clicked
                print(f"[watched] Start demo to the first concept map on a fresh server: {click_to_map:.1f} s",
                      file=log, flush=True)
                run = urllib.parse.parse_qs(urllib.parse.urlparse(page.url).query)["run"][0]
                run_dir = Path(run) if Path(run).is_absolute() else REPO / run
                # UMAP's one-off warm-up (numba compiling: ~10 s of a core the first time, ~1 s once cached)
                # may still run when a visitor clicks at once: the cold start's cost, not watching's
                click_to_umap = _until_umap(page, clicked)
                print(f"[watched] Start demo to the first UMAP map: {click_to_umap:.1f} s", file=log, flush=True)
                time.sleep(warm_s)  # past the first steps' one-off costs
                rates: dict[str, list[float]] = {"watched": [], "unwatched": []}
                cores: dict[str, list[dict]] = {"watched": [], "unwatched": []}
                for r in range(rounds):
                    for mode in ("watched", "unwatched") if r % 2 == 0 else ("unwatched", "watched"):
                        if mode == "watched":
                            page.goto(f"{url}/?run={urllib.parse.quote(run)}")
                            map_drawn.wait_for()
                        else:
                            page.goto("about:blank")
                        time.sleep(settle_s)  # a viewer loads the page once: see the module docstring
                        s0, t0, c0 = last_step(run_dir), time.monotonic(), cpu_seconds(proc.pid)
                        time.sleep(window_s)
                        seconds, c1 = time.monotonic() - t0, cpu_seconds(proc.pid)
                        rate = (last_step(run_dir) - s0) / seconds
                        rates[mode].append(rate)
                        cores[mode].append(window_cores(c0, c1, seconds) if c0 else {})
                        print(f"[watched] round {r + 1}/{rounds} {mode}: {rate:.2f} steps/s, cores used: {cores[mode][-1]}",
                              file=log, flush=True)
                # then the page loaded once more and left open, as a viewer watches: the load's cost, and
                # does the view's cost grow with the run?
                page.goto(f"{url}/?run={urllib.parse.quote(run)}")
                map_drawn.wait_for()
                kept_open = []
                for k in range(kept_windows):
                    t0, c0 = time.monotonic(), cpu_seconds(proc.pid)
                    time.sleep(window_s)
                    kept_open.append(window_cores(c0, cpu_seconds(proc.pid), time.monotonic() - t0) if c0 else {})
                    print(f"[watched] kept open, window {k + 1}/{kept_windows}: cores used: {kept_open[-1]}",
                          file=log, flush=True)
                browser.close()
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
    ratios = [w / u for w, u in zip(rates["watched"], rates["unwatched"]) if u > 0]
    return {"click_to_map_s": round(click_to_map, 2), "click_to_umap_s": round(click_to_umap, 2),
            "rounds": rounds, "window_s": window_s, "steps_per_s": rates,
            "ratio_median": round(statistics.median(ratios), 3) if ratios else None,
            "cores_used_median": {mode: {p: round(statistics.median(w[p] for w in windows), 3) for p in windows[0]}
                                  for mode, windows in cores.items() if windows and windows[0]},
            "kept_open_cores": kept_open,
            "settle_s": settle_s,
            "note": "DEML run of Start demo (its twin trains beside it), live view open vs closed, paired windows "
                    "starting settle_s after each switch; then kept_windows windows from a load, the view left open"}
