"""The job report: report.json (everything, machine-readable) and a self-contained report.html (tables and plots as
embedded PNG) under the job's run directory, `<dead_letter.dir>/<job_id>/`.

Written at the end of `reembed run` and `reembed verify`, and on demand by `reembed report`. It reads only the job's
checkpoint state and the files in its run directory (dead letters, verify.json), so it needs no server.

Plots need matplotlib (`pip install 'reembed[report]'`); without it the report still has every table and figure in
numbers and says how to get the plots.
"""

from __future__ import annotations

import base64
import datetime as dt
import io
import json
import logging
import time
from typing import Any

from engine.flow.rundir import RunDir
from engine.flow.state import JobState, RunRecord

log = logging.getLogger(__name__)

REPORT_VERSION = 1
TIMELINE_MAX = 600  # points kept per run's throughput timeline: enough for a smooth plot of any run length
RUNS_MAX = 20  # runs (first + resumes) kept in the checkpoint
PLOTS_HINT = "plots need matplotlib: pip install 'reembed[report]' (or matplotlib>=3.7), then run `reembed report`"


# --- what a run leaves behind ---------------------------------------------------------------------------------------

def _thin(points: list, limit: int) -> list:
    if len(points) <= limit:
        return list(points)
    step = (len(points) - 1) / (limit - 1)
    return [points[round(i * step)] for i in range(limit)]


def _timeline(stats) -> list[list[float]]:
    points = [[round(t, 3), int(n)] for t, n in _thin(stats.timeline, TIMELINE_MAX)]
    if points and points[0][0] > 0:
        points.insert(0, [0.0, points[-1][1] - stats.processed])  # where this run started (a resume starts past 0)
    return points


def record_run(runs: list[RunRecord], stats: Any, stages: dict[str, Any] | None = None) -> list[RunRecord]:
    """The job's run history with this run appended (its counts, timeline and pages in flight per stage,
    compacted)."""
    entry = RunRecord(
        ended_at=time.time(),
        pipeline_s=round(stats.pipeline_s, 3),
        points=stats.processed,
        points_per_s=round(stats.processed / stats.pipeline_s, 1) if stats.pipeline_s else 0.0,
        pages_read=stats.pages_read,
        pages_written=stats.pages_written,
        pages_redone=stats.pages_redone,
        points_redone=stats.points_redone,
        write_requests=stats.write_requests,
        retries=dict(stats.retries),
        dead_letters=stats.dead_count,
        timeline=_timeline(stats),
        stages=stages,
        lanes=list(getattr(stats, "lanes", {}).values()),
        driver_cpu_s=round(getattr(stats, "driver_cpu_s", 0.0), 3),
    )
    return [*runs, entry][-RUNS_MAX:]


# --- building -------------------------------------------------------------------------------------------------------

def _iso(ts: float | None) -> str | None:
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).isoformat(timespec="seconds") if ts else None


def _read_verify(directory: RunDir) -> dict[str, Any] | None:
    try:
        text = directory.read_text("verify.json")
        return json.loads(text) if text is not None else None
    except (OSError, json.JSONDecodeError) as exc:
        log.warning("ignoring unreadable %s: %s", directory.display("verify.json"), exc)
        return None


def build_report(cfg, state: JobState, directory: RunDir, verify: dict[str, Any] | None = None) -> dict[str, Any]:
    from engine.verify.dead_letters import dead_letter_summary

    latest = state.verify.to_dict() if state.verify is not None else None
    if verify is None:
        verify = _read_verify(directory)
        # verify.json on this machine may be older than the checkpoint's latest verify (run elsewhere).
        if verify is not None and latest is not None and abs(verify.get("at", 0) - latest.get("at", 0)) > 1e-3:
            verify = None
    if verify is None and latest is not None:
        verify = {**latest, "details": False}
    dead, _ = dead_letter_summary(state.dead_letters)
    runs = [r.to_dict() for r in state.runs]
    retries: dict[str, int] = {}
    for r in state.runs:
        for cause, n in r.retries.items():
            retries[cause] = retries.get(cause, 0) + n
    model = state.model
    return {
        "report_version": REPORT_VERSION,
        "generated_at": _iso(time.time()),
        "job": {
            "job_id": state.job_id,
            "source": cfg.source.collection,
            "target": state.decision.collection if state.decision is not None else
            (cfg.target.collection or cfg.source.collection),
            "alias": cfg.target.alias,
            "strategy": cfg.strategy,
            "server": state.server,
            "finished": state.finished,
            "created_at": _iso(state.created_at),
            "updated_at": _iso(state.updated_at),
            "points_written": state.written,
            "points_skipped": state.skipped,
            "shards": [{"shard": s.shard, "lo": s.lo, "hi": s.hi, "done": s.done, "written": s.written,
                        "skipped": s.skipped} for s in state.shards],
        },
        "model": {k: model.get(k) for k in ("name", "revision", "fingerprint", "dim", "pooling", "normalize",
                                            "max_length", "dtype", "device") if k in model},
        "runs": runs,
        "retries": retries,
        "dead_letters": dead,
        "verify": verify,
        "verify_history": [{"at": v.at, "passed": v.passed, "failed": v.failed} for v in state.verify_history],
        "events": [e.to_dict() for e in state.events],
        "config": cfg.redacted(),
    }


# --- plots ----------------------------------------------------------------------------------------------------------

def _png(fig) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=96, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _figure(rows: int = 1, height: float = 3.2):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, height * rows), layout="constrained")
    axes = [fig.add_subplot(rows, 1, i + 1) for i in range(rows)]
    for ax in axes:
        ax.grid(alpha=0.3)
    return fig, axes


def _plot_throughput(runs: list[dict]) -> str | None:
    lines = [r for r in runs if len(r.get("timeline") or []) >= 2]
    if not lines:
        return None
    fig, (ax, ax_rate) = _figure(2)
    for i, r in enumerate(lines):
        t = [p[0] for p in r["timeline"]]
        n = [p[1] for p in r["timeline"]]
        label = f"run {i + 1}" if len(lines) > 1 else "run"
        ax.plot(t, n, label=label)
        # Rate over steps of at least 1/60 of the run so that back-to-back checkpoints do not spike it.
        step = max(0.05, (t[-1] - t[0]) / 60)
        rt, rv, j = [], [], 0
        for k in range(1, len(t)):
            if t[k] - t[j] >= step or k == len(t) - 1:
                if t[k] > t[j]:
                    rt.append((t[k] + t[j]) / 2)
                    rv.append((n[k] - n[j]) / (t[k] - t[j]))
                j = k
        ax_rate.plot(rt, rv, marker=".", label=label)
    ax.set_title("points committed (written + skipped) over the run")
    ax.set_ylabel("points")
    ax_rate.set_title("throughput")
    ax_rate.set_xlabel("seconds since the pipeline started")
    ax_rate.set_ylabel("points/s")
    if len(lines) > 1:
        ax.legend()
    return _png(fig)


def _plot_stages(runs: list[dict]) -> str | None:
    last = next((r for r in reversed(runs) if r.get("stages") and r["stages"].get("samples")), None)
    if last is None:
        return None
    stages, samples = last["stages"]["stages"], last["stages"]["samples"]
    fig, (ax,) = _figure(1)
    t = [s[0] for s in samples]
    for i, name in enumerate(stages):
        ax.step(t, [s[i + 1] for s in samples], where="post", label=f"{name} (pages in flight)")
    total = [sum(s[1:]) for s in samples]
    ax.step(t, total, where="post", label="all stages", color="black", alpha=0.5)
    if last.get("window"):
        ax.axhline(last["window"], color="red", linestyle="--", label="window: the coordinator waits (backpressure)")
    ax.set_title("pages in flight per stage (last run)")
    ax.set_xlabel("seconds since the pipeline started")
    ax.set_ylabel("pages")
    ax.legend(fontsize="small")
    return _png(fig)


def _plot_bars(title: str, counts: dict[str, float], ylabel: str) -> str | None:
    if not counts:
        return None
    fig, (ax,) = _figure(1, height=2.8)
    names = list(counts)
    ax.barh(names, [counts[n] for n in names], color="#4c72b0")
    ax.invert_yaxis()
    ax.set_title(title)
    ax.set_xlabel(ylabel)
    return _png(fig)


def _plot_scores(lf: dict[str, Any]) -> str | None:
    old, new = lf.get("old_scores") or [], lf.get("new_scores") or []
    if not old and not new:
        return None
    fig, (ax,) = _figure(1)
    if old:
        ax.hist(old, bins=40, alpha=0.6, label=f"old vectors (source), {len(old)} scores")
    if new:
        ax.hist(new, bins=40, alpha=0.6, label=f"new vectors (target), {len(new)} scores")
    ax.set_title(f"top-{lf.get('k')} neighbour scores of sampled points, old vs new (each in its own space)")
    ax.set_xlabel("similarity score")
    ax.set_ylabel("count")
    ax.legend()
    return _png(fig)


def _plot_recall(verify: dict[str, Any]) -> str | None:
    index = verify.get("index") or {}
    quality = verify.get("quality") or {}
    lf = quality.get("label_free") or {}
    lab = quality.get("labelled") or {}
    bars: list[tuple[str, float, str]] = []
    if "recall" in index:
        bars.append((f"HNSW recall@{index.get('k')}", index["recall"], "#55a868"))
    if "topk_overlap" in lf:
        bars.append((f"top-{lf.get('k')} overlap old/new", lf["topk_overlap"], "#8172b2"))
        bars.append(("top-1 match old/new", lf["top1_match"], "#8172b2"))
    if "self_retrieval_old" in lf:
        bars.append(("self-retrieval@1 old", lf["self_retrieval_old"], "#c44e52"))
    if "self_retrieval_new" in lf:
        bars.append(("self-retrieval@1 new", lf["self_retrieval_new"], "#4c72b0"))
    for side, colour in (("old", "#c44e52"), ("new", "#4c72b0")):
        if side in lab:
            for metric, label in (("recall", f"recall@{lab.get('k')}"), ("ndcg", f"nDCG@{lab.get('ndcg_at')}"),
                                  ("mrr", "MRR")):
                bars.append((f"labelled {label} {side}", lab[side][metric], colour))
    hybrid = quality.get("hybrid") or {}
    for side, colour in (("dense", "#4c72b0"), ("sparse", "#dd8452"), ("fusion", "#55a868")):
        if hybrid.get(side):
            bars.append((f"hybrid nDCG@{hybrid.get('ndcg_at')} {side}", hybrid[side]["ndcg"], colour))
    if not bars:
        return None
    fig, (ax,) = _figure(1, height=max(2.5, 0.4 * len(bars) + 1))
    ax.barh([b[0] for b in bars], [b[1] for b in bars], color=[b[2] for b in bars])
    for i, b in enumerate(bars):
        ax.text(min(b[1], 1.0) + 0.01, i, f"{b[1]:.3f}", va="center", fontsize="small")
    ax.set_xlim(0, 1.12)
    ax.invert_yaxis()
    ax.set_title("recall and quality (red: old vectors, blue: new, green: index health)")
    return _png(fig)


def make_plots(report: dict[str, Any]) -> tuple[dict[str, str], str | None]:
    """name -> base64 PNG, and a note when plots are unavailable."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return {}, PLOTS_HINT
    plots: dict[str, str | None] = {
        "throughput": _plot_throughput(report["runs"]),
        "stages": _plot_stages(report["runs"]),
        "retries": _plot_bars("retried requests by cause", report["retries"], "retries"),
        "dead_letters": _plot_bars("dead letters by reason", report["dead_letters"].get("reasons") or {}, "points"),
    }
    verify = report.get("verify") or {}
    if verify.get("details", True) and verify:
        plots["recall"] = _plot_recall(verify)
        plots["scores"] = _plot_scores((verify.get("quality") or {}).get("label_free") or {})
    return {k: v for k, v in plots.items() if v}, None


# --- HTML -----------------------------------------------------------------------------------------------------------

_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px auto;max-width:1100px;color:#222;
background:#fff;padding:0 16px}
h1{font-size:24px;margin-bottom:4px}h2{font-size:18px;border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:28px}
table{border-collapse:collapse;margin:8px 0;font-size:13px}td,th{border:1px solid #ddd;padding:4px 8px;
text-align:left;vertical-align:top}th{background:#f4f4f4}.pass{color:#1a7f37;font-weight:600}
.fail{color:#cf222e;font-weight:600}.info,.skipped{color:#555}.banner{padding:12px 16px;border-radius:6px;
font-size:18px;font-weight:600;margin:12px 0}.banner.pass{background:#dafbe1}.banner.fail{background:#ffebe9}
.banner.none{background:#fff8c5;color:#6b5300}.muted{color:#666;font-size:13px}img{max-width:100%;margin:8px 0}
code{background:#f4f4f4;padding:1px 4px;border-radius:3px}
"""


def _fmt(x: Any) -> Any:
    return f"{x:.3f}" if isinstance(x, float) else x


def _thousands(x: Any) -> str:
    return f"{x:,}" if isinstance(x, (int, float)) else str(x)


def _template():
    import jinja2

    # autoescape on for everything: every value from a payload, a config or a server message is escaped.
    env = jinja2.Environment(loader=jinja2.PackageLoader("engine.verify", "templates"), autoescape=True,
                             undefined=jinja2.ChainableUndefined, keep_trailing_newline=True)
    env.filters.update(iso=_iso, thousands=_thousands)
    return env.get_template("report.html.j2")


def _range(s: dict[str, Any]) -> str:
    key = f" key {s['shard_key']}" if s.get("shard_key") is not None else ""
    return f"[{'start' if s['lo'] is None else s['lo']}, {'end' if s['hi'] is None else s['hi']}){key}"


def _metric_rows(section: dict[str, Any] | None, sides: tuple[str, ...]) -> list[list[Any]]:
    if not section:
        return []
    return [[side, _fmt(m["recall"]), _fmt(m["ndcg"]), _fmt(m["mrr"])]
            for side in sides if (m := section.get(side)) is not None]


def _model_line(model: dict[str, Any]) -> str:
    return (f"{model.get('name')} (revision {model.get('revision') or '-'}), {model.get('dim')}-d, "
            f"pooling {model.get('pooling')}, normalize {model.get('normalize')}")


def render_html(report: dict[str, Any], plots: dict[str, str], note: str | None = None) -> str:
    """The self-contained report.html (templates/report.html.j2): tables, and plots as embedded PNG."""
    verify = report.get("verify")
    details = verify or {}
    quality = details.get("quality") or {}
    dead = report["dead_letters"]
    return _template().render(
        report=report, job=report["job"], model_line=_model_line(report.get("model") or {}), verify=verify,
        note=note, plots=plots, css=_CSS, index=details.get("index") or {}, dead=dead,
        labelled=quality.get("labelled"), hybrid=quality.get("hybrid"),
        labelled_rows=_metric_rows(quality.get("labelled"), ("old", "new")),
        hybrid_rows=_metric_rows(quality.get("hybrid"), ("dense", "sparse", "fusion")),
        shard_rows=[[s["shard"], _range(s), s["source"], s["target"], s.get("committed"), s["missing"], s["extra"],
                     ", ".join(map(str, (s.get("missing_ids") or []) + (s.get("extra_ids") or [])))[:200]]
                    for s in details.get("shards") or []],
        run_rows=[[i + 1, _iso(r.get("ended_at")), f"{r.get('points', 0):,}", r.get("points_per_s"),
                   r.get("pipeline_s"), r.get("pages_written"), r.get("pages_redone"), r.get("write_requests"),
                   sum((r.get("retries") or {}).values()), r.get("dead_letters")]
                  for i, r in enumerate(report["runs"])],
        dead_rows=[[r["id"], r["shard"], r["reason"]] for r in dead.get("sample") or []],
        event_rows=[[e.get("action"), _iso(e.get("at")),
                     ", ".join(f"{k}={v}" for k, v in e.items() if k not in ("action", "at"))]
                    for e in report["events"]],
        config_json=json.dumps(report["config"], indent=1),
    )


def write_report(cfg, state: JobState, directory: RunDir, verify: dict[str, Any] | None = None) -> str:
    """Write report.json and report.html into the job's run directory; returns where report.html is."""
    report = build_report(cfg, state, directory, verify)
    plots, note = make_plots(report)
    if note:
        log.warning("report without plots: %s", note)
    directory.write_text("report.json", json.dumps(report, indent=1, sort_keys=True, default=str))
    path = directory.write_text("report.html", render_html(report, plots, note))
    log.info("report: %s", path)
    return path


def write_report_quietly(cfg, state: JobState, directory: RunDir) -> str | None:
    """write_report for the end of a run: a report that cannot be written is a warning, never a failed run."""
    try:
        return write_report(cfg, state, directory)
    except Exception as exc:  # noqa: BLE001 - the run itself succeeded
        log.warning("could not write the job report: %s", exc)
        return None
