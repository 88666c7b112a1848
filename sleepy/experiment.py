"""The experiment a Hydra job runs: `stage` = verify | day | eval | cycle.

    cycle:     eval(0) with the base model, then for c in 1..cycles: day(c) -> night(c) -> eval(c)
    day(c):    the train koans -> agent(model + adapter of night c-1) -> sandbox -> episodes -> day/* metrics
    night(c):  the day's failed train koans -> verified targets (+ replay) -> LoRA, plain or subspace
               coefficients (sleepy/night/fit.py) -> adapter c, served back
    eval(c):   the frozen eval koans -> agent(model + adapter c) -> episodes -> eval/* metrics with 95% intervals

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
        if cfg.stage == "cycle":
            return cycle(cfg)
        return attempt_stage(cfg)
    except (KoanError, ValueError, ModelLoadError) as e:
        print(f"sleepy: error: {e}", file=sys.stderr)
        sys.exit(2)


def select_koans(cfg):
    """The koans the `koans` group selects (verify; day and eval pick their split in Job.koans)."""
    from sleepy.koans.registry import load_configured

    k = cfg.koans
    return load_configured(k, make_sandbox(cfg)).select(family=k.families, split=k.split, count=k.count)


def make_sandbox(cfg):
    from sleepy.sandbox import Sandbox, SandboxLimits

    s = cfg.sandbox
    return Sandbox(edition=s.edition, isolation_level=s.isolation, jobs=s.jobs, use_cache=s.cache,
                   limits=SandboxLimits(**s.limits), runs=s.runs)


def verify(cfg) -> float:
    """Judge every selected koan: broken code must fail as declared, the solution must pass, no eval koan leaks."""
    from sleepy.koans.verify import print_report
    from sleepy.koans.verify import verify as verify_all

    report = verify_all(select_koans(cfg), make_sandbox(cfg))
    print_report(report)
    if report["failed"]:
        sys.exit(1)
    return report["verified"] / max(1, report["koans"])


def attempt_stage(cfg) -> float:
    """stage=day|eval alone: attempt the stage's koans at cycle `cycle` (with that cycle's adapter when
    an earlier cycle job of this run trained one)."""
    with Job(cfg) as job:
        metrics = job.attempt(cfg.stage, int(cfg.cycle), job.adapter_for(cfg.stage, int(cfg.cycle)))
        return metrics[f"{cfg.stage}/pass_rate"]


def cycle(cfg) -> float:
    """The experiment: eval(0) with the base model, then `cycles` x [day -> night -> eval]."""
    if cfg.night.enabled:
        check_night_config(cfg)  # before anything is started
    with Job(cfg) as job:
        if cfg.night.enabled:
            job.check_night()  # refuse at start, not after hours of day and eval
        rows = [job.attempt("eval", 0, None)]
        for c in range(1, int(cfg.cycles) + 1):
            day = job.attempt("day", c, job.adapter_for("day", c))  # the adapter of the night before
            night = job.night(c) if cfg.night.enabled else {}
            rows.append(job.attempt("eval", c, job.adapter_for("eval", c)) | day | night)
        print_cycles(rows, job.run_id, job.tracker.uri, cfg.experiment_name)
        return rows[-1]["eval/pass_rate"]


def check_night_config(cfg) -> None:
    """The night's settings, checked before a run starts rather than after hours of day and eval."""
    from sleepy.night.trainer import import_unsloth, resolve_trainer

    s = cfg.subspace
    if s.method != "none":
        from sleepy.night.subspace import check_rule

        check_rule(s.k, s.explained_variance, prefix="subspace.")
        if cfg.night.trainer == "unsloth":
            raise ValueError("subspace nights train coefficients through peft's forward: use night.trainer=peft "
                             f"or auto with subspace={s.method}")
        if s.method == "uwsh":
            _uwsh_sources(cfg, exclude=None)
    elif resolve_trainer(cfg.night.trainer) == "unsloth":
        import_unsloth()  # before the backend brings transformers and peft in


def _adapters_dir(cfg) -> Path:
    """Where nights save adapters: <adapters_dir>/<run id>/cycle<N>."""
    return Path(cfg.adapters_dir or ROOT / "mlruns" / "adapters")


def _uwsh_sources(cfg, exclude: Path | None) -> list[Path]:
    """The peft adapters uwsh extracts its fixed basis from (none of this run's)."""
    from sleepy.night.adapter_io import find_adapters

    source = cfg.subspace.source or _adapters_dir(cfg)
    found = find_adapters(source, exclude=exclude) if Path(source).is_dir() or cfg.subspace.source else []
    if not found:
        raise ValueError(f"subspace.source={source}: no peft LoRA adapter there to extract the uwsh basis from "
                         "(run +experiment=lora first, or point subspace.source at a directory of adapters)")
    return found


class Job:
    """One Hydra job = one MLflow run, with its episode store, sandbox, model and adapters."""

    def __init__(self, cfg):
        self.cfg = cfg

    def __enter__(self):
        from omegaconf import OmegaConf

        from sleepy.config import AgentConfig
        from sleepy.episodes import EpisodeStore
        from sleepy.koans.registry import load_configured
        from sleepy.tracking import Tracker, flatten

        cfg = self.cfg
        self.pack = load_configured(cfg.koans, make_sandbox(cfg))
        self.settings = AgentConfig(**OmegaConf.to_container(cfg.agent))
        self.tracker = Tracker(cfg.tracking.uri, cfg.experiment_name, cfg.tracking.artifact_root)
        self.run_id = self.tracker.start(cfg.run_id, run_name=_run_name(cfg))
        self.status = "FAILED"
        signal.signal(signal.SIGTERM, _terminate)
        self.tracker.log_params(flatten(OmegaConf.to_container(cfg, resolve=True)))
        self.tracker.set_tags(_hydra_tags())
        self.store = EpisodeStore(cfg.episodes.uri or ROOT / "mlruns" / "episodes")
        self.sandbox = make_sandbox(cfg)
        self.adapters_root = _adapters_dir(cfg) / self.run_id
        self._backend = None
        return self

    def __exit__(self, kind, exc, tb):
        if kind is None:
            self.status = "FINISHED"
        elif issubclass(kind, KeyboardInterrupt):
            self.status = "KILLED"
        if self._backend is not None:
            self._backend.close()
        self.tracker.end(self.status)
        return False

    @property
    def backend(self):
        if self._backend is None:
            from sleepy.models import make_backend

            self._backend = make_backend(self.cfg.model, seed=int(self.cfg.seed))
        return self._backend

    def koans(self, stage: str):
        k = self.cfg.koans
        koans = self.pack.select(family=k.families, split=STAGE_SPLIT[stage], count=k.count)
        if not koans:
            raise ValueError(f"no {STAGE_SPLIT[stage]} koans selected (koans.families={k.families})")
        return koans

    # -- day and eval ---------------------------------------------------------------------------
    def attempt(self, stage: str, cycle: int, adapter: str | None) -> dict[str, float]:
        """The agent attempts the stage's koans (those this run has not finished); metrics at step = cycle."""
        from sleepy.agent import StageContext, attempt_koans

        koans = self.koans(stage)
        done = self.store.finished(self.run_id, stage, cycle)
        todo = [k for k in koans if k.id not in done]
        if todo:
            ctx = StageContext(self.run_id, self.cfg.experiment_name, cycle, stage, self.cfg.model.name, adapter,
                               int(self.cfg.seed))
            memory = _memory(self.store, self.settings) if self.settings.prompt == "memory" else None
            with _Progress(f"{stage} {cycle}", len(koans), len(done)) as progress:
                def on_done(koan, episodes):
                    self.store.add_koan(episodes)
                    progress.koan(any(e.passed for e in episodes), len(episodes))

                attempt_koans(todo, self.backend, self.sandbox, self.settings, ctx, on_done, memory,
                              router=self.router(adapter))
        if self.settings.prompt == "memory" or stage == "day":
            self.store.index_diagnostics()
        metrics, table = stage_metrics(self.store, self.run_id, self.cfg.experiment_name, stage, cycle, self.settings)
        subsets = []
        if stage == "eval":  # per pack and subset: n and the minimum detectable effect against cycle 0
            from sleepy.subsets import report

            k = self.cfg.koans
            koans = self.koans(stage) + self.pack.select(family=k.families, split="train", count=k.count)
            subset_metrics, subsets = report(self.store.frame(run_id=self.run_id, stage=stage, cycle=cycle),
                                             _earlier(self.store, self.run_id, self.cfg.experiment_name, stage, 0),
                                             koans, cycle, self.settings.max_attempts)
            metrics.update(subset_metrics)
        self.tracker.log_metrics(metrics, step=cycle)
        self.tracker.set_tags({f"episodes.version.{stage}.{cycle}": str(self.store.version()),
                               "isolation": self.sandbox.isolation})
        _log_artifacts(self.tracker, self.store, self.run_id, stage, cycle)
        print_summary(table, stage, cycle, self.run_id, skipped=len(done), adapter=adapter)
        if subsets:
            from sleepy.subsets import print_rows

            print_rows(subsets, f"{stage} cycle {cycle} by pack and subset")
        return metrics

    # -- night ----------------------------------------------------------------------------------
    def adapter_dir(self, cycle: int) -> Path:
        return self.adapters_root / f"cycle{cycle}"

    def adapter_dir_of(self, name: str) -> Path:
        """The directory of the adapter served as `name` (cycle<N>)."""
        return self.adapter_dir(int(name.removeprefix("cycle")))

    def adapter_for(self, stage: str, cycle: int) -> str | None:
        """The newest adapter a stage of this cycle uses (eval: this cycle's night; day: the night before),
        loaded into the backend; None for the base model."""
        last = cycle if stage == "eval" else cycle - 1
        for c in range(last, 0, -1):
            path = self.adapter_dir(c)
            if (path / "DONE").exists():
                name = f"cycle{c}"
                if name not in self.backend.adapters:
                    self.backend.load_adapter(name, str(path))
                return name
        return None

    def router(self, adapter: str | None):
        """subspace.route=family: each koan to its family's adapter of the night `adapter` came from."""
        if adapter is None or self.cfg.subspace.method == "none" or self.cfg.subspace.route != "family":
            return None
        from sleepy.routing import FamilyRouter, family_by_code

        routes = self.adapter_dir_of(adapter) / "routes"
        adapters = {}
        for path in sorted(p for p in routes.iterdir() if p.is_dir()) if routes.is_dir() else []:
            name = adapters[path.name] = f"{adapter}-{path.name}"
            if name not in self.backend.adapters:
                self.backend.load_adapter(name, str(path))
        return FamilyRouter(family_by_code(k for k in self.pack.koans if k.split == "train"), adapters, adapter)

    def check_night(self) -> None:
        """A night needs a backend that serves adapters and local base weights to train on."""
        if not getattr(self.backend, "serves_adapters", False):
            raise ValueError(f"model '{self.cfg.model.name}' ({self.cfg.model.provider or self.cfg.model.backend}) "
                             "cannot serve adapters: a night stage needs model=tiny, an hf model or vllm "
                             "(or night.enabled=false)")
        if not self.backend.path:
            raise ValueError("a night trains on local base weights: set model.path to them")

    def night(self, cycle: int) -> dict[str, float]:
        """Verified targets for the day's failed train koans (+ replay) -> LoRA -> adapter_<cycle>."""
        from sleepy.night.dataset import build_examples, failed_koans

        out = self.adapter_dir(cycle)
        if (out / "DONE").exists():  # resumed: this night already trained its adapter
            return {}
        night = self.cfg.night
        train = {k.id: k for k in self.koans("day")}
        eval_ids = {k.id for k in self.pack.koans if k.split == "eval"}
        day = self.store.frame(run_id=self.run_id, stage="day", cycle=cycle)
        previous = self.adapter_for("day", cycle)  # self targets come from it; lora.mode=continue trains it on
        failed = failed_koans(day, train)
        replay = _replay(self.store, self.run_id, cycle, train, night.replay, len(failed), int(self.cfg.seed))
        teacher = _teacher(night.teacher)
        examples, stats = build_examples(
            failed, replay, list(night.targets), self.sandbox, eval_ids, backend=self.backend, teacher=teacher,
            self_samples=night.self_samples, temperature=night.self_temperature, max_tokens=self.settings.max_tokens,
            adapter=previous)
        earlier = _earlier_examples(self.adapters_root, cycle) if self.cfg.lora.mode == "new" else []
        metrics = {f"night/{k}": float(v) for k, v in stats.items()}
        metrics["night/examples"] = float(len(examples) + len(earlier))
        if not examples and not earlier:
            self.tracker.log_metrics(metrics, step=cycle)
            print(f"night {cycle}: no verified target for any failed koan; no adapter trained")
            return metrics
        result = self._train(examples, earlier, cycle, out, previous)
        metrics.update({"night/steps": result.steps, "night/loss_first": result.loss_first,
                        "night/loss_last": result.loss_last, "night/trainable_params": result.trainable_params,
                        "night/trainable_params_lora_equivalent": result.lora_params,
                        "night/tokens_per_s": result.tokens_per_s, "night/seconds": result.seconds,
                        "night/tasks": len(result.tasks)})
        if self.cfg.subspace.method != "none":
            metrics.update({"night/subspace_k": result.basis_columns, "night/subspace_kept": result.kept})
            if result.sources:
                metrics["night/subspace_sources"] = result.sources
        self.tracker.log_metrics(metrics, step=cycle)
        self.tracker.set_tags({f"night.{cycle}.episodes_version": str(self.store.version())})
        self.tracker.log_artifacts(out, f"adapters/cycle{cycle}")
        print(f"night {cycle}: {len(examples)} new examples ({stats}), {result.steps} steps, "
              f"loss {result.loss_first:.3f} -> {result.loss_last:.3f}, {result.tokens_per_s:.0f} tokens/s")
        if self.cfg.subspace.method != "none":
            print(f"night {cycle}: {self.cfg.subspace.method} subspace, {result.basis_columns:.0f} basis columns per "
                  f"module and side keep {result.kept:.1%} of the adapters' variance; a task trains "
                  f"{result.trainable_params:,} parameters ({result.lora_params:,} for LoRA r={self.cfg.lora.r})")
            if result.kept < 0.95:
                print(f"warning: the exported adapters lose {1 - result.kept:.1%} of their variance to the subspace; "
                      f"raise subspace.k (k >= lora.r keeps a first night exact)", file=sys.stderr)
        return metrics

    def _train(self, examples, earlier, cycle: int, out: Path, previous: str | None):
        """Train the night's adapter into out (via a .partial directory), then serve it as cycle<N>."""
        import json
        import shutil

        from sleepy.night.fit import fit_night

        previous_dir = self.adapter_dir_of(previous) if previous else None
        tmp = out.with_name(out.name + ".partial")
        result = fit_night(self.backend.path, self._groups([*earlier, *examples], cycle), tmp, lora=self.cfg.lora,
                           night=self.cfg.night, subspace=self.cfg.subspace, device=self.cfg.model.device,
                           dtype=self.cfg.model.dtype, seed=int(self.cfg.seed) * 1000 + cycle, previous=previous_dir,
                           sources=self._sources)
        with open(tmp / "examples.jsonl", "w", encoding="utf-8") as f:
            for x in examples:
                f.write(json.dumps({"koan_id": x.koan_id, "source": x.source, "messages": list(x.messages),
                                    "response": x.response}) + "\n")
        (tmp / "DONE").write_text(json.dumps({"cycle": cycle, "episodes_version": self.store.version(),
                                              "tasks": result.tasks}))
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
        self.backend.load_adapter(f"cycle{cycle}", str(out))
        return result

    def _groups(self, examples, cycle: int) -> dict[str, list]:
        """The night's tasks: one (named for the night), or one per koan family under subspace.route=family."""
        if self.cfg.subspace.method == "none" or self.cfg.subspace.route == "mean":
            return {f"night{cycle}": examples}
        family = {k.id: k.family for k in self.pack.koans}
        groups: dict[str, list] = {}
        for x in examples:
            groups.setdefault(family[x.koan_id], []).append(x)
        return dict(sorted(groups.items()))

    def _sources(self) -> list[Path]:
        return _uwsh_sources(self.cfg, exclude=self.adapters_root)


def _replay(store, run_id: str, cycle: int, train: dict, fraction: float, n_new: int, seed: int):
    """Earlier successes of this run's days, as (koan, prompt, code), `fraction` x the night's new examples."""
    import random

    if fraction <= 0:
        return []
    wins = store.frame(run_id=run_id, stage="day", passed=True)
    wins = wins.filter(wins["cycle"] <= cycle)
    rows = [(train[r["koan_id"]], r["prompt"], r["code"]) for r in wins.iter_rows(named=True) if r["koan_id"] in train]
    random.Random(seed * 7919 + cycle).shuffle(rows)
    return rows[:max(1, round(fraction * max(1, n_new)))]


def _earlier_examples(root: Path, cycle: int):
    """Examples of this run's earlier nights (lora.mode=new trains a fresh adapter on all of them)."""
    import json

    from sleepy.night.dataset import Example

    out = []
    for c in range(1, cycle):
        path = root / f"cycle{c}" / "examples.jsonl"
        if path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                d = json.loads(line)
                out.append(Example(d["koan_id"], d["source"], tuple(d["messages"]), d["response"]))
    return out


def _teacher(teacher):
    if not teacher.provider:
        return None
    from sleepy.models.litellm_backend import LiteLLMBackend

    backend = LiteLLMBackend(teacher.name, teacher.provider, teacher.api_base, teacher.api_key)
    backend.check()
    return backend


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


def _pct(x) -> str:
    return "-" if x != x else f"{100 * x:.0f}%"


def print_summary(rows: list[dict], stage: str, cycle: int, run_id: str, skipped: int = 0,
                  adapter: str | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"{stage} cycle {cycle}, {adapter or 'base model'}  (run {run_id}"
                    f"{f', resumed: {skipped} koans kept' if skipped else ''})")
    for col in ("family", "koans", "pass rate (95% CI)", "median steps", "repeat error rate"):
        t.add_column(col, justify="left" if col == "family" else "right")
    for r in rows:
        steps = "-" if r["median_steps"] != r["median_steps"] else f"{r['median_steps']:.1f}"
        t.add_row(r["family"], str(r["n"]), f"{_pct(r['pass_rate'])} [{_pct(r['lo'])}, {_pct(r['hi'])}]", steps,
                  _pct(r["repeat_error_rate"]))
    Console().print(t)


def print_cycles(rows: list[dict], run_id: str, uri: str, experiment: str) -> None:
    """The experiment per cycle, and how to compare it in the MLflow UI."""
    from rich.console import Console
    from rich.table import Table

    def num(x, fmt="{:.0f}"):
        return "-" if x is None or x != x else fmt.format(x)

    t = Table(title=f"experiment {experiment}, run {run_id}")
    for col in ("cycle", "day pass", "night examples", "eval pass (95% CI)", "median steps", "repeat errors",
                "regressions", "McNemar p vs 0", "MDE vs 0"):
        t.add_column(col, justify="right")
    for c, r in enumerate(rows):
        t.add_row(str(c), _pct(r.get("day/pass_rate", float("nan"))), num(r.get("night/examples")),
                  f"{_pct(r['eval/pass_rate'])} [{_pct(r['eval/pass_rate_lo'])}, {_pct(r['eval/pass_rate_hi'])}]",
                  num(r["eval/median_steps"], "{:.1f}"), _pct(r["eval/repeat_error_rate"]),
                  num(r["eval/regressions"]), num(r["eval/mcnemar_p"], "{:.3f}"),
                  "-" if c == 0 else num(100 * r.get("eval/mde", float("nan")), "{:.1f} pts"))
    console = Console(width=max(Console().width, 120))
    console.print(t)
    ui = f"mlflow ui --backend-store-uri {uri}" if uri.startswith("sqlite") else f"open {uri}"
    console.print(f"Compare runs: LITELLM_LOCAL_MODEL_COST_MAP=True .venv/bin/{ui}", soft_wrap=True)


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

    def __init__(self, label: str, total: int, already: int):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.passed = self.attempts = 0
        self.progress = Progress(TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(),
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
