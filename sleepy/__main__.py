"""python -m sleepy: the Hydra experiment runner (see README.md)."""

from __future__ import annotations

import os

from sleepy.pipes import quiet_on_closed_pipe

for _key, _value in (("HF_HUB_OFFLINE", "1"), ("LITELLM_LOCAL_MODEL_COST_MAP", "True"),
                     ("MLFLOW_DISABLE_TELEMETRY", "true")):
    os.environ.setdefault(_key, _value)


@quiet_on_closed_pipe
def main() -> None:
    import sys

    import hydra

    from sleepy import shipped
    from sleepy.config import check_override_keys, register

    conf = str(shipped("conf"))
    groups = {d for d in os.listdir(conf) if os.path.isdir(os.path.join(conf, d))}
    if error := check_override_keys(overrides(sys.argv[1:]), groups):
        print(f"sleepy: error: {error}", file=sys.stderr)
        sys.exit(2)
    register()
    hydra.main(version_base="1.3", config_path=conf, config_name="config")(_run)()


def overrides(argv: list[str]) -> list[str]:
    """The config overrides on a command line, as Hydra's own parser reads it: its flags (-m, --cfg job, -cp DIR,
    --info ...) and their values are Hydra's; with -sc/--shell-completion the words are the completion's, not keys."""
    from hydra._internal.utils import get_args_parser

    args, _ = get_args_parser().parse_known_args(argv)
    return [] if args.shell_completion else list(args.overrides)


def _run(cfg) -> float | None:
    """One job, in this process or a launcher's worker (which does not run this module's top level)."""
    import signal
    import sys
    import warnings

    from sleepy.console import to_job_log
    from sleepy.experiment import run

    # peft asks transformers a question transformers 5 deprecated; nothing for a user to act on
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    to_job_log()

    try:
        return run(cfg)
    except KeyboardInterrupt as e:  # Ctrl-C or SIGTERM: the run is already marked KILLED, its episodes are stored
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(128 + getattr(e, "signum", signal.SIGINT))  # now, not after seconds of interpreter teardown


if __name__ == "__main__":
    main()
