"""How the sandbox's processes start (the server from the client, the forker from the server).

A fresh `python -s -S` imports one of the sandbox's files by name from its directory, not
through the package (so nothing of `pytest_codegen/__init__` or a model backend comes along,
and the module comes from its cached bytecode), takes that directory off the import path and
out of `sys.modules` again, and calls the module's `main` with one string argument. Kept free
of imports beyond `os` and `sys`: both the client and the server load it.
"""

from __future__ import annotations

import os
import sys

# Not -I: its -E would ignore PYTHONHASHSEED. The environment is the caller's own making
# (`environment`), and the working directory `-c` puts first on the path is replaced by the
# file's directory, then taken off with it.
_CODE = (
    "import sys; sys.path[0] = sys.argv[1]; module = __import__(sys.argv[2]); "
    "del sys.path[0], sys.modules[module.__name__]; module.main(sys.argv[3])"
)

# Every sandbox process hashes strings with this seed: the order of a set of strings, in a
# program's results and output or in a failure message a refiner is shown, is the same in
# every run.
HASH_SEED = "0"


def command(path: str, argument: str) -> list[str]:
    """The command line that runs `main(argument)` of the sandbox file at `path`."""
    directory, filename = os.path.split(os.path.abspath(path))
    return [sys.executable, "-s", "-S", "-c", _CODE, directory, os.path.splitext(filename)[0], argument]


def environment(variables: dict[str, str]) -> dict[str, str]:
    """The whole environment of a sandbox process: `variables` and the fixed hash seed."""
    return {**variables, "PYTHONHASHSEED": HASH_SEED}
