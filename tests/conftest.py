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


@pytest.fixture(scope="session")
def sandbox():
    from pytest_codegen.sandbox import Limits, Sandbox

    with Sandbox(Limits(wall_seconds=5, cpu_seconds=5, memory_mb=512)) as box:
        yield box


# The default model is fetched on first use; the tests never fetch a model (CI must not download
# the Qwen files). Tests of the fetching paths unset this and serve fake packages locally.
os.environ.setdefault("CODEGEN_OFFLINE", "1")
