"""sleepy: a config-driven experiment runner for a continual-learning agent that fixes Rust compile errors."""

from pathlib import Path


def shipped(name: str) -> Path:
    """A folder sleepy ships with its code (`conf`, `koans`): beside the package in a checkout or an editable install,
    inside it (sleepy/data/<name>) when installed from a wheel."""
    here = Path(__file__).resolve().parent
    for path in (here.parent / name, here / "data" / name):
        if path.is_dir():
            return path
    raise FileNotFoundError(f"sleepy's {name}/ folder is neither beside the package nor in it ({here}): reinstall sleepy")
