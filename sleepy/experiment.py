"""The experiment a Hydra job runs: `stage` = verify | day | eval.

    day(c):  the train koans -> agent(model [+ adapter]) -> sandbox -> episodes -> day/* metrics
    eval(c): the frozen eval koans -> agent -> sandbox -> episodes -> eval/* metrics with 95% intervals

One job is one MLflow run. A job re-run with `run_id=<that run>` resumes: koans it finished in the
stage are skipped, the rest are attempted, and the metrics are computed over all of them.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path

from sleepy.config import check_choices

ROOT = Path(__file__).resolve().parents[1]
STAGE_SPLIT = {"day": "train", "eval": "eval"}


def run(cfg) -> float | None:
    """Run the configured stage; returns the stage's headline number (for sweepers)."""
    from sleepy.koans import KoanError
    from sleepy.models import ModelLoadError

    try:
        check_choices(cfg)
        if cfg.stage == "verify":
            return verify(cfg)
        return attempt_stage(cfg)
    except (KoanError, ValueError, ModelLoadError) as e:
        print(f"sleepy: error: {e}", file=sys.stderr)
        sys.exit(2)


def select_koans(cfg, split: str | None = None):
    from sleepy.koans import load_pack

    k = cfg.koans
    return load_pack(k.pack).select(family=k.families, split=split or k.split, count=k.count)


def make_sandbox(cfg):
    from sleepy.sandbox import Sandbox, SandboxLimits

    s = cfg.sandbox
    return Sandbox(edition=s.edition, isolation_level=s.isolation, jobs=s.jobs, use_cache=s.cache,
                   limits=SandboxLimits(**s.limits))


def verify(cfg) -> float:
    """Judge every selected koan: broken code must fail as declared, the solution must pass."""
    from sleepy.koans.cli import verify_koans

    koans = select_koans(cfg)
    sandbox = make_sandbox(cfg)
    report = verify_koans(koans, sandbox)
    for f in report["failed"]:
        print(f"FAIL {f['id']}: {f['why']}")
    print(f"{report['verified']}/{report['koans']} koans verified (isolation: {sandbox.isolation})")
    if report["failed"]:
        sys.exit(1)
    return report["verified"] / max(1, report["koans"])


def attempt_stage(cfg) -> float:
    """day or eval: attempt the stage's koans, record episodes, log metrics at step = cycle."""
    from omegaconf import OmegaConf

    from sleepy.agent import StageContext, attempt_koans
    from sleepy.config import AgentConfig
    from sleepy.episodes import EpisodeStore
    from sleepy.models import make_backend
    from sleepy.tracking import Tracker, flatten

    stage, cycle = cfg.stage, int(cfg.cycle)
    koans = select_koans(cfg, STAGE_SPLIT[stage])
    if not koans:
        raise ValueError(f"no {STAGE_SPLIT[stage]} koans selected (koans.families={cfg.koans.families})")
    settings = AgentConfig(**OmegaConf.to_container(cfg.agent))
    tracker = Tracker(cfg.tracking.uri, cfg.experiment_name, cfg.tracking.artifact_root)
    run_id = tracker.start(cfg.run_id, run_name=_run_name(cfg))
    signal.signal(signal.SIGTERM, _terminate)
    status = "FAILED"
    try:
        tracker.log_params(flatten(OmegaConf.to_container(cfg, resolve=True)))
        tracker.set_tags(_hydra_tags())
        store = EpisodeStore(cfg.episodes.uri or ROOT / "mlruns" / "episodes")
        done = store.finished(run_id, stage, cycle)
        todo = [k for k in koans if k.id not in done]
        sandbox = make_sandbox(cfg)
        versions: list[int] = []
        if todo:
            backend = make_backend(cfg.model, seed=int(cfg.seed))
            ctx = StageContext(run_id, cfg.experiment_name, cycle, stage, cfg.model.name, None, int(cfg.seed))
            memory = _memory(store, settings) if settings.prompt == "memory" else None
            with _Progress(len(koans), len(done)) as progress:
                def on_done(koan, episodes):
                    versions.append(store.add_koan(episodes))
                    progress.koan(any(e.passed for e in episodes), len(episodes))

                attempt_koans(todo, backend, sandbox, settings, ctx, on_done, memory)
            backend.close()
        if settings.prompt == "memory" or stage == "day":
            store.index_diagnostics()
        metrics, table = stage_metrics(store, run_id, cfg.experiment_name, stage, cycle, settings)
        tracker.log_metrics(metrics, step=cycle)
        tracker.set_tags({f"episodes.version.{stage}.{cycle}": str(store.version()), "isolation": sandbox.isolation})
        _log_artifacts(tracker, store, run_id, stage, cycle)
        print_summary(table, stage, cycle, run_id, skipped=len(done))
        status = "FINISHED"
        return metrics[f"{stage}/pass_rate"]
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        tracker.end(status)


def _terminate(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def _run_name(cfg) -> str:
    from hydra.core.hydra_config import HydraConfig

    try:
        hc = HydraConfig.get()
        overrides = ",".join(hc.overrides.task) or "defaults"
        return f"{cfg.stage}{cfg.cycle}:{overrides}"[:250]
    except ValueError:
        return f"{cfg.stage}{cfg.cycle}"


def _hydra_tags() -> dict[str, str]:
    from hydra.core.hydra_config import HydraConfig

    try:
        hc = HydraConfig.get()
    except ValueError:
        return {}
    tags = {f"hydra.choice.{k}": str(v) for k, v in hc.runtime.choices.items() if not k.startswith("hydra/")}
    tags["hydra.overrides"] = " ".join(hc.overrides.task)
    tags["hydra.output_dir"] = hc.runtime.output_dir
    return tags


def _memory(store, settings):
    """Retrieve successful train-split episodes whose fixed errors read like the current ones."""
    def recall(diagnostics: str) -> list[tuple[str, str]]:
        try:
            hits = store.search_diagnostics(diagnostics[:500], limit=settings.memory_k * 4, passed=None)
        except Exception:  # noqa: BLE001 - no index yet: nothing to remember
            return []
        fixed = store.frame(passed=True, split="train")
        if fixed.is_empty() or hits.is_empty():
            return []
        out = []
        for row in hits.filter(hits["split"] == "train").iter_rows(named=True):
            match = fixed.filter((fixed["run_id"] == row["run_id"]) & (fixed["koan_id"] == row["koan_id"])
                                 & (fixed["cycle"] == row["cycle"]) & (fixed["sample"] == row["sample"]))
            if match.height:
                out.append((row["diagnostics"], match["code"][0]))
            if len(out) == settings.memory_k:
                break
        return out
    return recall


def stage_metrics(store, run_id: str, experiment: str, stage: str, cycle: int, settings):
    """MLflow metrics of this stage and cycle, and the per-family table; earlier cycles come from this run,
    or else from the latest run of the same experiment that recorded them."""
    import polars as pl

    from sleepy.metrics import cycle_metrics, koan_outcomes, pass_at_k_table

    now = store.frame(run_id=run_id, stage=stage, cycle=cycle)
    frames = [now]
    for c in {cycle - 1, 0} - {cycle}:
        if c >= 0:
            frames.append(_earlier(store, run_id, experiment, stage, c))
    episodes = pl.concat([f for f in frames if f.height], how="vertical_relaxed")
    outcomes = koan_outcomes(episodes, settings.max_attempts)
    m = cycle_metrics(outcomes, cycle)
    metrics = m.as_mlflow(stage)
    metrics[f"{stage}/koans"] = m.n
    metrics[f"{stage}/attempts"] = now.height
    metrics[f"{stage}/tokens_out"] = float(now["tokens_out"].sum())
    metrics[f"{stage}/model_errors"] = float((now["reason"] == "model_error").sum())
    if settings.samples > 1:
        ks = tuple(k for k in (1, 2, 5, 10) if k <= settings.samples)
        for k, v in pass_at_k_table(now, ks).items():
            metrics[f"{stage}/pass_at_{k}"] = v
    table = family_table(outcomes, cycle)
    return metrics, table


def _earlier(store, run_id, experiment, stage, cycle):
    mine = store.frame(run_id=run_id, stage=stage, cycle=cycle)
    if mine.height:
        return mine
    theirs = store.frame(experiment=experiment, stage=stage, cycle=cycle)
    if theirs.is_empty():
        return theirs
    latest = theirs.sort("created_at")["run_id"][-1]
    return theirs.filter(theirs["run_id"] == latest)


def family_table(outcomes, cycle: int) -> list[dict]:
    """Per family and overall: n, passed, pass rate with its 95% interval, median steps, repeat error rate."""
    from sleepy.metrics import cycle_metrics

    rows = []
    families = sorted(set(outcomes.filter(outcomes["cycle"] == cycle)["family"]))
    for family in [*families, None]:
        part = outcomes if family is None else outcomes.filter(outcomes["family"] == family)
        m = cycle_metrics(part, cycle)
        rows.append({"family": family or "all", "n": m.n, "passed": m.passed, "pass_rate": m.pass_rate,
                     "lo": m.pass_rate_lo, "hi": m.pass_rate_hi, "median_steps": m.median_steps,
                     "repeat_error_rate": m.repeat_error_rate})
    return rows


def print_summary(rows: list[dict], stage: str, cycle: int, run_id: str, skipped: int = 0) -> None:
    from rich.console import Console
    from rich.table import Table

    def pct(x):
        return "-" if x != x else f"{100 * x:.0f}%"

    t = Table(title=f"{stage} cycle {cycle}  (run {run_id}{f', resumed: {skipped} koans kept' if skipped else ''})")
    for col in ("family", "koans", "pass rate (95% CI)", "median steps", "repeat error rate"):
        t.add_column(col, justify="left" if col == "family" else "right")
    for r in rows:
        steps = "-" if r["median_steps"] != r["median_steps"] else f"{r['median_steps']:.1f}"
        t.add_row(r["family"], str(r["n"]), f"{pct(r['pass_rate'])} [{pct(r['lo'])}, {pct(r['hi'])}]", steps,
                  pct(r["repeat_error_rate"]))
    Console().print(t)


def _log_artifacts(tracker, store, run_id, stage, cycle) -> None:
    import tempfile

    from hydra.core.hydra_config import HydraConfig

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"episodes_{stage}_{cycle}.parquet"
        store.frame(run_id=run_id, stage=stage, cycle=cycle).write_parquet(path)
        tracker.log_artifacts(path, "episodes")
    try:
        tracker.log_artifacts(Path(HydraConfig.get().runtime.output_dir) / ".hydra", "hydra")
    except ValueError:
        pass


class _Progress:
    """Koans done, passed, attempts and throughput while a stage runs (quiet when not a terminal)."""

    def __init__(self, total: int, already: int):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.passed = self.attempts = 0
        self.progress = Progress(TextColumn("[bold]koans"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[info]}"), TimeElapsedColumn(),
                                 disable=not sys.stdout.isatty())
        self.task = self.progress.add_task("koans", total=total, completed=already, info="")

    def __enter__(self):
        self.progress.start()
        return self

    def __exit__(self, *exc):
        self.progress.stop()

    def koan(self, passed: bool, attempts: int) -> None:
        self.passed += passed
        self.attempts += attempts
        task = self.progress.tasks[0]
        rate = task.completed / task.elapsed if task.elapsed else 0.0
        self.progress.update(self.task, advance=1, info=f"passed {self.passed}  attempts {self.attempts}  "
                                                         f"{rate:.2f} koans/s")
