"""The experiment one Hydra job runs. Read this file first.

    run(cfg)          checks every setting, then runs the stage `stage` names; returns its headline metric
    run_cycles(job)   evaluate(0) with the base model, then for c in 1..cycles: day(c) -> night(c) -> evaluate(c)
    day(c)            the train koans -> agent (model + adapter of night c-1) -> sandbox -> episodes -> day/*
    night(c)          the day's failed train koans -> verified targets (+ replay) -> LoRA or subspace task -> adapter c
    evaluate(c)       the eval koans, and the train koans learned so far -> agent (model + adapter c) -> eval/*,
                      recall/* and cl/* (the accuracy matrix: backward and forward transfer, forgetting)

One job is one MLflow run (sleepy/job.py holds its context). A job re-run with `run_id=<that run>` resumes it:
what a stage finished is kept, the rest is attempted, and the metrics are computed over all of it.
"""

from __future__ import annotations

import sys

from sleepy import console
from sleepy.config import ConfigError, validate
from sleepy.job import Job, make_sandbox, uwsh_sources


def run(cfg) -> float | None:
    """Run the configured stage; returns its headline number (for sweepers). Bad settings stop it before anything
    starts, one line each."""
    from sleepy.koans import KoanError
    from sleepy.models.base import ModelLoadError, ModelServerError
    from sleepy.runlock import RunLocked
    from sleepy.stores import StoreError

    try:
        validate(cfg)
        if cfg.stage == "verify":
            return verify(cfg)
        job = Job(cfg)
        with job:
            if cfg.stage == "cycle":
                return run_cycles(job)
            stage = day if cfg.stage == "day" else evaluate
            return stage(job, int(cfg.cycle))[f"{cfg.stage}/pass_rate"]
    except (ConfigError, KoanError, ValueError, ModelLoadError, StoreError, RunLocked) as e:
        for line in str(e).splitlines():
            console.error(line)
        sys.exit(2)
    except ModelServerError as e:
        print(f"sleepy: error: {e}; run {job.run_id} is FAILED and keeps what finished: resume it with "
              f"run_id={job.run_id} once the server answers", file=sys.stderr)
        sys.exit(1)


def run_cycles(job: Job) -> float:
    """The experiment: evaluate(0) with the base model, then `cycles` x [day -> night -> evaluate]."""
    job.check_night()  # refuse at start, not after hours of day and eval
    rows = [evaluate(job, 0)]
    for c in range(1, int(job.cfg.cycles) + 1):
        rows.append(day(job, c) | night(job, c) | evaluate(job, c))
    console.print_cycles(rows, job.run_id, job.tracker.uri, job.cfg.experiment_name)
    console.print_loop(loop_closed(job), (rows[0]["eval/pass_rate"], rows[-1]["eval/pass_rate"]),
                       tiny=job.cfg.model.backend == "tiny")
    return rows[-1]["eval/pass_rate"]


def loop_closed(job: Job) -> list[tuple[int, int, int]]:
    """Per day c after a night: (c, the train koans night c-1 learned, how many of them day c passed)."""
    from sleepy.metrics import koan_outcomes

    out = []
    for c in range(2, int(job.cfg.cycles) + 1):
        learned, days = job.adapters.learned(c - 1), job.history.episodes("day", c)
        if learned and days.height:
            passed = koan_outcomes(days, job.settings.max_attempts).filter("passed")["koan_id"]
            out.append((c, len(learned), len(learned & set(passed))))
    return out


def day(job: Job, cycle: int) -> dict[str, float]:
    """The agent attempts the train koans, served the adapter of the night before."""
    return attempt(job, "day", cycle, job.koans("day"), night=job.adapters.latest(cycle - 1))


def night(job: Job, cycle: int) -> dict[str, float]:
    """Verified targets for the day's failed train koans (+ replayed earlier successes) -> a LoRA, or a subspace
    task, trained on them (and with lora.mode=new on every earlier night's) -> adapter <cycle>, served from now on."""
    from sleepy.models.base import sample_seed
    from sleepy.night.dataset import build_examples, earlier_successes, failed_koans

    cfg, n = job.cfg, job.cfg.night
    if not cfg.night.enabled or job.adapters.done(cycle):  # disabled, or resumed after this night finished
        return {}
    previous = job.adapters.latest(cycle - 1)  # self targets come from it; lora.mode=continue trains it on
    train = {k.id: k for k in job.koans("day")}
    days = job.store.frame(run_id=job.run_id, stage="day")
    failed = failed_koans(days.filter(days["cycle"] == cycle), train)
    replay = earlier_successes(days, train, cycle, n.replay, len(failed), int(cfg.seed))
    examples, stats = build_examples(
        failed, replay, list(n.targets), job.sandbox, job.eval_ids, backend=job.backend, teacher=job.teacher(),
        self_samples=n.self_samples, temperature=n.self_temperature, max_tokens=job.settings.max_tokens,
        adapter=job.load_adapter(previous), seed=sample_seed(cfg.seed, "night", cycle))
    earlier = job.adapters.examples(before=cycle) if cfg.lora.mode == "new" else []
    metrics = {f"night/{k}": float(v) for k, v in stats.items()} | {"night/examples": len(examples) + len(earlier),
                                                                     "night/examples_new": len(examples)}
    if examples or earlier:
        metrics |= train_adapter(job, cycle, examples, earlier, previous).as_mlflow()
    job.tracker.log_metrics(metrics, step=cycle)
    job.tracker.set_tags({f"night.{cycle}.episodes_version": str(job.store.version())})
    console.print_night(cycle, metrics, cfg.subspace.method, cfg.lora.r)
    return metrics


def train_adapter(job: Job, cycle: int, examples: list, earlier: list, previous: int | None):
    """Fit night `cycle`'s adapter in a partial directory, then finish it (examples, DONE), log and serve it."""
    from sleepy.night.adapters import origin
    from sleepy.night.fit import fit_night, night_tasks

    cfg = job.cfg
    family_of = {k.id: k.family for k in job.pack.koans} if cfg.subspace.method != "none" and \
        cfg.subspace.route == "family" else None
    steps_before = int(sum(v for c, v in job.tracker.history("night/steps").items() if c < cycle))
    with job.tracker.stream("night/loss", offset=steps_before) as on_step:  # step = the run's training step
        fit = fit_night(job.backend.path, night_tasks([*earlier, *examples], cycle, family_of),
                        job.adapters.partial(cycle), lora=cfg.lora, night=cfg.night, subspace=cfg.subspace,
                        device=cfg.model.device, dtype=cfg.model.dtype, seed=int(cfg.seed) * 1000 + cycle,
                        previous=job.adapters.dir(previous) if previous else None,
                        sources=lambda: uwsh_sources(cfg, job.adapters.root), on_step=on_step)
    out = job.adapters.commit(cycle, examples, {"episodes_version": job.store.version(), "tasks": fit.tasks})
    job.tracker.log_artifacts(out, f"adapters/cycle{cycle}")
    if fit.sources:  # uwsh's basis: which adapters, of which runs
        job.tracker.log_json([origin(p) for p in fit.sources], f"adapters/cycle{cycle}", "uwsh_sources.json")
    job.load_adapter(cycle)
    return fit


def evaluate(job: Job, cycle: int) -> dict[str, float]:
    """The agent attempts the eval koans, and again the train koans the nights so far learned, served night
    `cycle`'s adapter: the eval metrics, and the accuracy matrix with its continual-learning metrics."""
    served = job.adapters.latest(cycle)
    metrics = attempt(job, "eval", cycle, job.koans("eval"), night=served) | by_subset(job, cycle)
    tasks = {c: learned for c in range(1, cycle + 1) if (learned := job.adapters.learned(c))}
    if tasks:
        learned = set().union(*tasks.values())
        attempt(job, "recall", cycle, [k for k in job.koans("day") if k.id in learned], night=served)
        metrics |= continual(job, cycle, tasks)
    return metrics


def by_subset(job: Job, cycle: int) -> dict[str, float]:
    """The eval per pack and subset: n, the pass rate and the minimum detectable effect against cycle 0."""
    from sleepy.subsets import print_rows, report

    metrics, rows = report(job.history.episodes("eval", cycle), job.history.baseline("eval", cycle) if cycle else None,
                           job.koans("eval") + job.koans("day"), cycle, job.settings.max_attempts)
    job.tracker.log_metrics(metrics, step=cycle)
    if rows:
        print_rows(rows, f"eval cycle {cycle} by pack and subset")
    return metrics


def continual(job: Job, cycle: int, tasks: dict[int, set[str]]) -> dict[str, float]:
    """R[i][j], the pass rate on night j's koans after night i, for i <= cycle; from it GEM's backward and forward
    transfer and Chaudhry's forgetting, logged at step = cycle (the matrix itself as an artifact)."""
    from sleepy.metrics import accuracy_matrix, continual_metrics

    R = accuracy_matrix([job.history.outcomes_after(i) for i in range(cycle + 1)], tasks)
    metrics = {f"cl/{k}": v for k, v in continual_metrics(R).items()} | {f"cl/R/night{j}": v for j, v in R[-1].items()}
    job.tracker.log_metrics(metrics, step=cycle)
    job.tracker.log_json({"tasks": {j: sorted(t) for j, t in tasks.items()}, "R": R}, "accuracy_matrix", f"cycle{cycle}.json")
    return metrics


def attempt(job: Job, stage: str, cycle: int, koans: list, night: int | None) -> dict[str, float]:
    """The agent attempts the koans this run has not finished at (stage, cycle), served night `night`'s adapter;
    the stage's metrics over all of them, logged at step = cycle."""
    from sleepy.agent import StageContext, attempt_koans
    from sleepy.metrics import koan_outcomes

    job.tracker.log_koans(stage, koans, job.pack.root)
    adapter = job.load_adapter(night)
    done = job.store.finished(job.run_id, stage, cycle)
    retried = job.store.recorded(job.run_id, stage, cycle) - done  # model errors last time: attempted afresh
    todo = [k for k in koans if k.id not in done]
    if todo:
        ctx = StageContext(job.run_id, job.cfg.experiment_name, cycle, stage, job.cfg.model.name, adapter, int(job.cfg.seed))
        with console.Progress(f"{stage} {cycle}", len(koans), len(done)) as progress:
            def on_done(koan, episodes):
                if koan.id in retried:
                    job.store.forget(job.run_id, stage, cycle, koan.id)
                job.store.add_koan(episodes)
                progress.koan(any(e.passed for e in episodes), len(episodes))

            attempt_koans(todo, job.backend, job.sandbox, job.settings, ctx, on_done, job.memory(stage, cycle),
                          router=job.router(night))
    metrics, table = job.stage_metrics(stage, cycle)
    job.tracker.log_metrics(metrics, step=cycle)
    job.tracker.set_tags({f"episodes.version.{stage}.{cycle}": str(job.store.version())})
    episodes = job.history.episodes(stage, cycle)
    job.tracker.log_frame(episodes, "episodes", f"episodes_{stage}_{cycle}.parquet")
    job.tracker.log_csv(koan_outcomes(episodes, job.settings.max_attempts), "episodes", f"summary_{stage}_{cycle}.csv")
    console.print_summary(table, stage, cycle, job.run_id, skipped=len(done), adapter=adapter, attempts=episodes.height,
                          model_errors=int(metrics.get(f"{stage}/model_errors", 0)))
    if metrics.get(f"{stage}/model_errors"):
        model_errors(job, stage, cycle)
    return metrics


def model_errors(job: Job, stage: str, cycle: int) -> None:
    """Say that some model calls failed (not enough to stop the stage), and tag the first error."""
    import polars as pl

    failed = job.history.episodes(stage, cycle).filter(pl.col("reason") == "model_error")
    first = failed["signature"][0].removeprefix("model_error: ")
    job.tracker.set_tags({f"{stage}.{cycle}.first_model_error": first[:500]})
    console.warn(f"{stage} cycle {cycle}: {failed.height} model calls failed (first: {first[:200]}); their koans are "
                 f"attempted again when the run is resumed with run_id={job.run_id}")


def verify(cfg) -> float:
    """Judge every selected koan: broken code must fail as declared, the solution must pass, no eval koan leaks."""
    from sleepy.koans.registry import load_configured
    from sleepy.koans.verify import print_report
    from sleepy.koans.verify import verify as verify_all

    k = cfg.koans
    sandbox = make_sandbox(cfg.sandbox)
    report = verify_all(load_configured(k, sandbox).select(family=k.families, split=k.split, count=k.count), sandbox)
    print_report(report)
    if report["failed"]:
        sys.exit(1)
    return report["verified"] / max(1, report["koans"])
