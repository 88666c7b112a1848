"""What a run prints: progress while a stage runs, a table per stage, the night's summary, the table per cycle."""

from __future__ import annotations

import sys


def pct(x) -> str:
    return "-" if x is None or x != x else f"{100 * x:.0f}%"


def num(x, fmt: str = "{:.0f}") -> str:
    return "-" if x is None or x != x else fmt.format(x)


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def print_summary(rows: list[dict], stage: str, cycle: int, run_id: str, skipped: int = 0,
                  adapter: str | None = None) -> None:
    """One stage: per family and overall, the pass rate with its interval, steps, repeat and persistent failures."""
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"{stage} cycle {cycle}, {adapter or 'base model'}  (run {run_id}"
                    f"{f', resumed: {skipped} koans kept' if skipped else ''})")
    for col in ("family", "koans", "pass rate (95% CI)", "median steps", "steps, all koans", "repeat errors",
                "persistent failures"):
        t.add_column(col, justify="left" if col == "family" else "right")
    for r in rows:
        t.add_row(r["family"], str(r["n"]), f"{pct(r['pass_rate'])} [{pct(r['pass_rate_lo'])}, {pct(r['pass_rate_hi'])}]",
                  num(r["median_steps"], "{:.1f}"), num(r["mean_steps_all"], "{:.1f}"), pct(r["repeat_error_rate"]),
                  pct(r["persistent_failure_rate"]))
    Console().print(t)


def print_night(cycle: int, metrics: dict[str, float], subspace: str, r: int) -> None:
    """The night: its examples and training, and for a subspace how much of the adapters' variance the bases keep."""
    if "night/steps" not in metrics:
        print(f"night {cycle}: no verified target for any failed koan; no adapter trained")
        return
    targets = ", ".join(f"{k.removeprefix('night/targets_')} {v:.0f}" for k, v in metrics.items()
                        if k.startswith("night/targets_"))
    print(f"night {cycle}: {metrics['night/examples']:.0f} examples (targets: {targets}; replay "
          f"{metrics['night/replay']:.0f}), {metrics['night/steps']:.0f} steps, loss {metrics['night/loss_first']:.3f} -> "
          f"{metrics['night/loss_last']:.3f}, {metrics['night/tokens_per_s']:.0f} tokens/s")
    if subspace != "none":
        kept = metrics["night/subspace_kept"]
        print(f"night {cycle}: {subspace} subspace, {metrics['night/subspace_k']:.0f} basis columns per module and side "
              f"keep {kept:.1%} of the adapters' variance; a task trains {metrics['night/trainable_params']:,.0f} "
              f"parameters ({metrics['night/trainable_params_lora_equivalent']:,.0f} for LoRA r={r})")
        if kept < 0.95:
            warn(f"the subspace keeps only {kept:.1%} of the adapters' variance for later nights; raise subspace.k "
                 "(k >= lora.r keeps a first night exact)")


def print_cycles(rows: list[dict], run_id: str, uri: str, experiment: str) -> None:
    """The experiment per cycle, and how to compare it in the MLflow UI."""
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"experiment {experiment}, run {run_id}")
    for col in ("cycle", "day pass", "night examples", "eval pass (95% CI)", "median steps", "repeat errors",
                "persistent failures", "regressions", "McNemar p vs 0", "MDE vs 0", "BWT", "forgetting"):
        t.add_column(col, justify="right")
    for c, r in enumerate(rows):
        t.add_row(str(c), pct(r.get("day/pass_rate")), num(r.get("night/examples")),
                  f"{pct(r['eval/pass_rate'])} [{pct(r['eval/pass_rate_lo'])}, {pct(r['eval/pass_rate_hi'])}]",
                  num(r["eval/median_steps"], "{:.1f}"), pct(r.get("eval/repeat_error_rate")),
                  pct(r.get("eval/persistent_failure_rate")), num(r.get("eval/regressions")),
                  num(r.get("eval/mcnemar_p"), "{:.3f}"),
                  "-" if c == 0 else num(100 * r.get("eval/mde", float("nan")), "{:.1f} pts"),
                  num(r.get("cl/bwt"), "{:+.2f}"),
                  num(r.get("cl/forgetting"), "{:.2f}"))
    console = Console(width=max(Console().width, 140))
    console.print(t)
    ui = f"mlflow ui --backend-store-uri {uri}" if uri.startswith("sqlite") else f"open {uri}"
    console.print(f"Compare runs: LITELLM_LOCAL_MODEL_COST_MAP=True .venv/bin/{ui}", soft_wrap=True)


class Progress:
    """Koans done, passed, attempts and throughput while a stage runs (quiet when not a terminal)."""

    def __init__(self, label: str, total: int, already: int):
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
        from rich.progress import Progress as Bar

        self.passed = self.attempts = 0
        self.bar = Bar(TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                       TimeElapsedColumn(), disable=not sys.stdout.isatty())
        self.task = self.bar.add_task("koans", total=total, completed=already, info="")

    def __enter__(self):
        self.bar.start()
        return self

    def __exit__(self, *exc):
        self.bar.stop()

    def koan(self, passed: bool, attempts: int) -> None:
        self.passed += passed
        self.attempts += attempts
        task = self.bar.tasks[0]
        rate = task.completed / task.elapsed if task.elapsed else 0.0
        self.bar.update(self.task, advance=1, info=f"passed {self.passed}  attempts {self.attempts}  {rate:.2f} koans/s")
