"""python -m sleepy: the Hydra experiment runner (see README.md)."""

from __future__ import annotations

import os
import warnings

for _key, _value in (("HF_HUB_OFFLINE", "1"), ("LITELLM_LOCAL_MODEL_COST_MAP", "True"),
                     ("MLFLOW_DISABLE_TELEMETRY", "true")):
    os.environ.setdefault(_key, _value)
# peft asks transformers a question transformers 5 deprecated; nothing for a user to act on
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)


def main() -> None:
    import sys

    import hydra

    from sleepy import shipped
    from sleepy.config import check_override_keys, register

    conf = str(shipped("conf"))
    groups = {d for d in os.listdir(conf) if os.path.isdir(os.path.join(conf, d))}
    if error := check_override_keys(sys.argv[1:], groups):
        print(f"sleepy: error: {error}", file=sys.stderr)
        sys.exit(2)
    register()
    hydra.main(version_base="1.3", config_path=conf, config_name="config")(_run)()


def _run(cfg) -> float | None:
    import signal
    import sys

    from sleepy.experiment import run

    try:
        return run(cfg)
    except KeyboardInterrupt as e:  # Ctrl-C or SIGTERM: the run is already marked KILLED, its episodes are stored
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(128 + getattr(e, "signum", signal.SIGINT))  # now, not after seconds of interpreter teardown


if __name__ == "__main__":
    main()
