"""How the sandbox's processes start (the server from the client, the forker from the server).

A fresh `python -I -S` imports one of the sandbox's files by name from its directory, not
through the package (so nothing of `pytest_codegen/__init__` or a model backend comes along,
and the module comes from its cached bytecode), takes that directory off the import path and
out of `sys.modules` again, and calls the module's `main` with one string argument. Kept free
of imports beyond `os` and `sys`: both the client and the server load it.
"""

from __future__ import annotations

import os
import sys

_CODE = (
    "import sys; sys.path.insert(0, sys.argv[1]); module = __import__(sys.argv[2]); "
    "del sys.path[0], sys.modules[module.__name__]; module.main(sys.argv[3])"
)


def command(path: str, argument: str) -> list[str]:
    """The command line that runs `main(argument)` of the sandbox file at `path`."""
    directory, filename = os.path.split(os.path.abspath(path))
    return [sys.executable, "-I", "-S", "-c", _CODE, directory, os.path.splitext(filename)[0], argument]
