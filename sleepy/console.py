"""What a run prints: progress while a stage runs, a table per stage, the night's summary, the table per cycle.

Everything a run shows goes through here, printed for the terminal and recorded with the `sleepy` logger, which
`to_job_log` sends to Hydra's job log (`<hydra.run.dir>/<job name>.log`) as plain text with timestamps.
"""

from __future__ import annotations

import logging
import sys

log = logging.getLogger("sleepy")
log.addHandler(logging.NullHandler())  # outside a Hydra job (a CLI, a test) what is printed is not repeated


def to_job_log() -> None:
    """Record the run's output in the job log Hydra set up (the file handlers on the root logger), and only there:
    the terminal gets it printed, with colour."""
    files = [h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]
    log.handlers = files or [logging.NullHandler()]  # no job log (hydra/job_logging=disabled): printed only
    log.setLevel(logging.INFO)
    log.propagate = False


def say(text: str) -> None:
    """A line of the run's output."""
    print(text, flush=True)
    log.info(text)


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)
    log.warning(message)


def error(message: str) -> None:
    print(f"sleepy: error: {message}", file=sys.stderr, flush=True)
    log.error(message)


def show(renderable, width: int | None = None, soft_wrap: bool = False) -> None:
    """A rich table (or text) on the terminal; the same, as plain text, in the job log."""
    from io import StringIO

    from rich.console import Console

    console = Console(width=width)
    console.print(renderable, soft_wrap=soft_wrap)
    if log.isEnabledFor(logging.INFO):
        text = StringIO()
        Console(file=text, width=console.width, color_system=None, force_terminal=False).print(renderable,
                                                                                             soft_wrap=soft_wrap)
        log.info("\n" + text.getvalue().rstrip())


def pct(x) -> str:
    return "-" if x is None or x != x else f"{100 * x:.0f}%"


def num(x, fmt: str = "{:.0f}") -> str:
    return "-" if x is None or x != x else fmt.format(x)


def print_summary(rows: list[dict], stage: str, cycle: int, run_id: str, skipped: int = 0,
                  adapter: str | None = None, attempts: int | None = None, model_errors: int = 0) -> None:
    """One stage: per family and overall, the pass rate with its interval, steps, repeat and persistent failures;
    under it the stage's attempts and how many of them were model errors (a call that failed: no reply to judge)."""
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"{stage} cycle {cycle}, {adapter or 'base model'}  (run {run_id}"
                    f"{f', resumed: {skipped} koans kept' if skipped else ''})",
              caption=None if attempts is None else f"{attempts} attempts, {model_errors} model errors")
    for col in ("family", "koans", "pass rate (95% CI)", "median steps", "steps, all koans", "repeat errors",
                "persistent failures"):
        t.add_column(col, justify="left" if col == "family" else "right")
    for r in rows:
        t.add_row(r["family"], str(r["n"]), f"{pct(r['pass_rate'])} [{pct(r['pass_rate_lo'])}, {pct(r['pass_rate_hi'])}]",
                  num(r["median_steps"], "{:.1f}"), num(r["mean_steps_all"], "{:.1f}"), pct(r["repeat_error_rate"]),
                  pct(r["persistent_failure_rate"]))
    show(t, width=max(Console().width, 110))


class Paced:
    """When to say how a long loop goes, and what: at its first and its last item and at most once every `every_s`
    seconds between, with the time an item takes and about how long is left (a real model's stage or night on a
    CPU runs for most of an hour; a log nobody watches still shows it moving)."""

    def __init__(self, total: int, every_s: float = 60.0, already: int = 0):
        import time

        self.clock = time.monotonic
        self.total, self.every_s, self.already = total, every_s, already
        self.start = self.last = self.clock()

    def due(self, done: int) -> tuple[float, str] | None:
        """(seconds an item, ", about N min left" or "") when `done` items are finished and a line is due, else None."""
        now = self.clock()
        if done not in (self.already + 1, self.total) and now - self.last < self.every_s:
            return None
        self.last = now
        per_item = (now - self.start) / max(done - self.already, 1)
        return per_item, f", about {(self.total - done) * per_item / 60:.0f} min left" if done < self.total else ""


def night_steps(cycle: int, total: int, every_s: float = 60.0):
    """A function (step, loss) that says how night `cycle`'s training goes (Paced)."""
    paced = Paced(total, every_s)

    def on_step(step: int, loss: float) -> None:
        if due := paced.due(step):
            per_step, left = due
            say(f"night {cycle}: step {step}/{total}, loss {loss:.4f}, {per_step:.1f} s a step{left}")

    return on_step


def print_night(cycle: int, metrics: dict[str, float], subspace: str, r: int) -> None:
    """The night: its examples and training, and for a subspace how much of the adapters' variance the bases keep."""
    if "night/steps" not in metrics:
        if metrics.get("night/failed_koans") == 0:
            say(f"night {cycle}: day {cycle} failed no train koan; nothing new to learn, no adapter trained")
        else:
            say(f"night {cycle}: no verified target for any failed koan; no adapter trained")
        return
    new, total = metrics.get("night/examples_new", metrics["night/examples"]), metrics["night/examples"]
    sources = [f"{v:.0f} {k.removeprefix('night/targets_')}" for k, v in metrics.items()
               if k.startswith("night/targets_") and v]
    if metrics.get("night/replay"):
        sources.append(f"{metrics['night/replay']:.0f} replayed")
    earlier = f" + {total - new:.0f} from earlier nights" if total > new else ""
    say(f"night {cycle}: trained on {new:.0f} new examples ({', '.join(sources) or 'none'}){earlier}: "
        f"{metrics['night/steps']:.0f} steps, loss {metrics['night/loss_first']:.2f} -> {metrics['night/loss_last']:.2f}, "
        f"{metrics['night/tokens_per_s']:.0f} tokens/s")
    if subspace != "none":
        kept = metrics["night/subspace_kept"]
        say(f"night {cycle}: {subspace} subspace, {metrics['night/subspace_k']:.0f} basis columns per module and side "
            f"keep {kept:.1%} of the adapters' variance; a task trains {metrics['night/trainable_params']:,.0f} "
            f"parameters ({metrics['night/trainable_params_lora_equivalent']:,.0f} for LoRA r={r})")
        if kept < 0.95:
            warn(f"the subspace keeps only {kept:.1%} of the adapters' variance for later nights; raise subspace.k "
                 "(k >= lora.r keeps a first night exact)")


def print_cycles(rows: list[dict], run_id: str, uri: str, experiment: str) -> None:
    """The experiment per cycle, and how to compare it in the MLflow UI."""
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"experiment {experiment}, run {run_id}",
              caption="night examples: the night's new verified examples / all the nights' so far")
    for col in ("cycle", "day pass", "night examples", "eval pass (95% CI)", "median steps", "repeat errors",
                "persistent failures", "regressions", "McNemar p vs 0", "MDE vs 0", "BWT", "forgetting"):
        t.add_column(col, justify="right", min_width={"night examples": 11, "eval pass (95% CI)": 16}.get(col))
    so_far = 0
    for c, r in enumerate(rows):
        new = r.get("night/examples_new", r.get("night/examples"))
        so_far += new or 0
        examples = "-" if new is None else f"{num(new)} new / {so_far:.0f}"
        t.add_row(str(c), pct(r.get("day/pass_rate")), examples,
                  f"{pct(r['eval/pass_rate'])} [{pct(r['eval/pass_rate_lo'])}, {pct(r['eval/pass_rate_hi'])}]",
                  num(r["eval/median_steps"], "{:.1f}"), pct(r.get("eval/repeat_error_rate")),
                  pct(r.get("eval/persistent_failure_rate")), num(r.get("eval/regressions")),
                  num(r.get("eval/mcnemar_p"), "{:.3f}"),
                  "-" if c == 0 else num(100 * r.get("eval/mde", float("nan")), "{:.1f} pts"),
                  num(r.get("cl/bwt"), "{:+.2f}"),
                  num(r.get("cl/forgetting"), "{:.2f}"))
    show(t, width=max(Console().width, 150))
    ui = f"mlflow ui --backend-store-uri {uri}" if uri.startswith("sqlite") else f"open {uri}"
    show(f"Compare runs: LITELLM_LOCAL_MODEL_COST_MAP=True .venv/bin/{ui}", soft_wrap=True)


def print_loop(closed: list[tuple[int, int, int]], eval_rates: tuple[float, float], tiny: bool) -> None:
    """Whether the loop closed: per day c, of the train koans night c-1 trained on, how many day c passed; with the
    tiny model, what that does and does not show."""
    for day, trained, passed in closed:
        say(f"The loop: night {day - 1} trained on {trained} failed train koan{'s' * (trained != 1)}, and day {day} "
            f"passed {passed} of them.")
    if not tiny:
        return
    chance = (f"the eval koans, which no night trains on, stay at chance ({pct(eval_rates[0])} at cycle 0, "
              f"{pct(eval_rates[1])} at the last cycle)")
    if any(passed for _, _, passed in closed):
        say(f"This is the tiny random model memorising the train koans it was trained on, not learning Rust: {chance}. "
            "A real model (see README.md) is needed to measure learning.")
    elif closed:
        say(f"The tiny model is random and did not memorise its train koans in this night's steps (the smoke "
            f"experiment's night does): its pass rates are noise, and {chance}.")
    else:
        say(f"The tiny model is random: its pass rates are noise, and {chance}.")


class Progress:
    """Koans done, passed, attempts and throughput while a stage runs: a bar on a terminal, else a line at the first
    koan, once a minute and at the last (Paced)."""

    def __init__(self, label: str, total: int, already: int, every_s: float = 60.0):
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
        from rich.progress import Progress as Bar

        self.label, self.already = label, already
        self.passed = self.attempts = 0
        terminal = sys.stdout.isatty()
        self.bar = Bar(TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                       TimeElapsedColumn(), disable=not terminal)
        self.task = self.bar.add_task("koans", total=total, completed=already, info="")
        self.paced = None if terminal else Paced(total, every_s, already)

    def __enter__(self):
        self.bar.start()
        return self

    def __exit__(self, *exc):
        self.bar.stop()
        task = self.bar.tasks[0]
        log.info(f"{self.label}: {task.completed - self.already:.0f} koans attempted ({self.already} kept from before), "
                 f"passed {self.passed}, {self.attempts} attempts, {task.elapsed or 0:.1f} s")

    def koan(self, passed: bool, attempts: int) -> None:
        self.passed += passed
        self.attempts += attempts
        task = self.bar.tasks[0]
        rate = task.completed / task.elapsed if task.elapsed else 0.0
        self.bar.update(self.task, advance=1, info=f"passed {self.passed}  attempts {self.attempts}  {rate:.2f} koans/s")
        done = int(task.completed)
        if self.paced and (due := self.paced.due(done)):
            per_koan, left = due
            say(f"{self.label}: {done}/{task.total:.0f} koans, passed {self.passed}, {self.attempts} attempts, "
                f"{per_koan:.0f} s a koan{left}")
        else:
            log.debug(f"{self.label}: {done}/{task.total:.0f} koans, passed {self.passed}")
