"""Sanitized MBPP (427 problems), read from a local file or downloaded once and checksum-verified.

The file is google-research's `sanitized-mbpp.json`. It is not on PyPI and must never be
committed; where it comes from, in order: an explicit path (`--mbpp-data`), the environment
variable `CODEGEN_MBPP_DATA`, the user cache, a download from the official URL into that cache.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import sys
import tempfile
import urllib.error
import urllib.request
import warnings
from functools import lru_cache
from pathlib import Path

from ..problems import Problem, TestCase

BENCHMARK = "mbpp"
URL = "https://raw.githubusercontent.com/google-research/google-research/master/mbpp/sanitized-mbpp.json"
SHA256 = "ca95deaa9a01ef0a6f439f88bcf0dd3db3563d22f22aad6cae04ebb9a8d8c8e9"
ENV_VAR = "CODEGEN_MBPP_DATA"
N_PROBLEMS = 427


class MBPPDataError(RuntimeError):
    """The data file is missing, cannot be fetched, or is not the official file."""


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "pytest-codegen"


def data_path(explicit: str | os.PathLike | None = None, *, download: bool = True) -> Path:
    """Where the data file is, fetching it into the user cache if nothing else is given."""
    if explicit or os.environ.get(ENV_VAR):
        path = Path(explicit or os.environ[ENV_VAR]).expanduser()
        origin = "--mbpp-data" if explicit else ENV_VAR
        if not path.is_file():
            raise MBPPDataError(f"{origin} points to {path}, which is not a file.")
        return path
    cached = cache_dir() / "sanitized-mbpp.json"
    if cached.is_file():
        return cached
    if not download:
        raise MBPPDataError(f"sanitized MBPP is not in {cached} and downloading is off.")
    return _download(cached)


def _download(target: Path) -> Path:
    try:
        with urllib.request.urlopen(URL, timeout=30) as response:
            payload = response.read()
    except (urllib.error.URLError, OSError) as error:
        raise MBPPDataError(
            f"could not download sanitized MBPP from {URL} ({error}). Download it by hand and "
            f"pass --mbpp-data PATH or set {ENV_VAR}=PATH (sha256 {SHA256})."
        ) from error
    digest = hashlib.sha256(payload).hexdigest()
    if digest != SHA256:
        raise MBPPDataError(
            f"the file downloaded from {URL} has sha256 {digest}, not the official {SHA256}; "
            "it was not saved."
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    # A file of its own per process, then an atomic rename: concurrent xdist workers that all
    # download never read or clobber half a file.
    handle, partial = tempfile.mkstemp(dir=target.parent, suffix=".part")
    with os.fdopen(handle, "wb") as out:
        out.write(payload)
    os.replace(partial, target)
    return target


@lru_cache(maxsize=4)
def load_problems(path: str | os.PathLike | None = None) -> tuple[Problem, ...]:
    """All 427 problems; any file that is not the official one is refused with the reason."""
    source = data_path(path)
    payload = source.read_bytes()
    digest = hashlib.sha256(payload).hexdigest()
    if digest != SHA256:
        raise MBPPDataError(
            f"{source} has sha256 {digest}, not the official sanitized MBPP ({SHA256}). "
            f"Use the official file from {URL}."
        )
    try:
        records = json.loads(payload)
        problems = tuple(to_problem(record) for record in records)
    except (ValueError, KeyError, TypeError, SyntaxError) as error:
        raise MBPPDataError(f"{source} is not a sanitized MBPP file: {error!r}") from error
    if len(problems) != N_PROBLEMS:
        raise MBPPDataError(f"{source} holds {len(problems)} problems, expected {N_PROBLEMS}.")
    return problems


def to_problem(record: dict) -> Problem:
    asserts = record["test_list"]
    tests = tuple(
        # The first assert is the one example that the usual MBPP prompt shows a model.
        TestCase(name=f"assert[{index}]", source=source, visible=index == 0)
        for index, source in enumerate(asserts)
    )
    return Problem(
        id=f"Mbpp/{record['task_id']}",
        benchmark=BENCHMARK,
        prompt=record["prompt"],
        entry_point=entry_point(record["code"], asserts),
        tests=tests,
        canonical_solution=record["code"],
        test_setup="\n".join([*(record.get("test_imports") or []), *_modules_only_the_program_imports(record)]),
        metadata={"source_file": record.get("source_file", "")},
    )


def _modules_only_the_program_imports(record: dict) -> list[str]:
    """`import m` for each standard-library module the tests read but `test_imports` does not
    import (Mbpp/596's tests use `sys`, which only the reference solution imports): the tests
    get the real module, not whatever the candidate binds to that name."""
    imported = set()
    for line in record.get("test_imports") or []:
        for node in ast.walk(ast.parse(line)):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                imported |= {(alias.asname or alias.name).split(".")[0] for alias in node.names}
    read = {node.id for source in record["test_list"] for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load)}
    return [f"import {name}" for name in sorted(read - imported) if name in sys.stdlib_module_names]


def entry_point(code: str, asserts: list[str]) -> str:
    """The function the tests call: the first called name that the solution defines."""
    with warnings.catch_warnings():  # some solutions have invalid escapes in strings
        warnings.simplefilter("ignore", SyntaxWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        tree = ast.parse(code)
    defined = {
        node.name
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
    }
    for source in asserts:
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in defined:
                return node.func.id
    raise ValueError(f"no function of the solution is called by the tests: {asserts[0]!r}")
