"""A run's adapter layout (sleepy/night/adapters.py): nights are staged, finished with one rename, found again."""

import json

from sleepy.night.adapters import RunAdapters
from sleepy.night.dataset import Example


def example(koan, source="reference"):
    return Example(koan, source, ({"role": "user", "content": f"fix {koan}"},), f"```rust\n// {koan}\n```")


def night(adapters, cycle, *examples):
    path = adapters.partial(cycle)
    (path / "adapter_config.json").write_text("{}")
    return adapters.commit(cycle, list(examples), {"episodes_version": 7, "tasks": [f"night{cycle}"]})


def test_a_finished_night_is_found_with_what_it_learned(tmp_path):
    adapters = RunAdapters(tmp_path / "run")
    assert adapters.latest(3) is None and not adapters.done(1)
    out = night(adapters, 1, example("a"), example("b"), example("c", "replay"))
    assert out == tmp_path / "run" / "cycle1" and (out / "adapter_config.json").exists()
    assert json.loads((out / "DONE").read_text()) == {"cycle": 1, "episodes_version": 7, "tasks": ["night1"]}
    assert adapters.done(1) and adapters.latest(1) == adapters.latest(5) == 1 and adapters.latest(0) is None
    assert adapters.learned(1) == {"a", "b"}  # a replayed success is not learned that night
    assert [x.koan_id for x in adapters.examples(before=2)] == ["a", "b", "c"]
    assert adapters.examples(before=1) == []


def test_a_night_killed_before_it_finished_is_not_served_and_is_redone(tmp_path):
    adapters = RunAdapters(tmp_path / "run")
    night(adapters, 1, example("a"))
    killed = adapters.partial(2)
    (killed / "half_written").write_text("x")
    assert adapters.latest(2) == 1 and adapters.learned(2) == set() and not adapters.done(2)
    again = adapters.partial(2)
    assert again == killed and list(again.iterdir()) == []  # what the killed night left is dropped
    night(adapters, 2, example("b"))
    assert adapters.latest(2) == 2 and not killed.exists()


def test_family_routes_are_found_by_family(tmp_path):
    adapters = RunAdapters(tmp_path / "run")
    out = night(adapters, 1, example("a"))
    for family in ("lifetimes", "borrow_checker"):
        (out / "routes" / family).mkdir(parents=True)
    assert adapters.routes(1) == {"borrow_checker": out / "routes" / "borrow_checker",
                                  "lifetimes": out / "routes" / "lifetimes"}
    assert adapters.routes(2) == {}
