"""Results files: records appended one JSON line each as items finish, and read back, several
files (the shards of a run split across machines) as one run."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO

from .record import Record, RecordError


class ResultsWriter:
    """Appends records one line at a time and flushes, so an interrupted run keeps its items.

    With `append`, a file whose last line a killed run cut short gets a newline first, so the
    next record starts on a line of its own (readers skip the broken line).
    """

    def __init__(self, path: str | Path, *, append: bool = False) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file: IO[str] = self.path.open("a" if append else "w", encoding="utf-8")
        if append and self.path.stat().st_size:
            with self.path.open("rb") as existing:
                existing.seek(-1, 2)
                if existing.read(1) != b"\n":
                    self._file.write("\n")

    def write(self, record: Record | str) -> None:
        """Append a record, or its line (`Record.to_json`, as an xdist worker sends it)."""
        self._file.write((record.to_json() if isinstance(record, Record) else record) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class ResultsFileError(RecordError):
    """A results file that holds no run: a line that is no record (binary data, JSON that is not
    an object, a record lacking a required field), or shards that are not of one run.

    The message names the line, `path` the file."""

    def __init__(self, path: Path, message: str) -> None:
        super().__init__(message)
        self.path = path


def read_records(path: str | Path) -> Iterator[Record]:
    """Records of a results file (gzipped when its name ends in .gz); a line cut short by a
    killed run (the beginning of a JSON object that does not parse) is skipped. Anything else
    that is not a record raises `ResultsFileError`."""
    path = Path(path)
    with (gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb")) as lines:
        for number, raw in enumerate(lines, start=1):
            if not raw.strip():
                continue
            line = raw.decode("utf-8", "replace")
            try:
                data = json.loads(line)
            except ValueError:
                if line.lstrip().startswith("{"):
                    continue  # a record cut short
                raise ResultsFileError(
                    path, f"line {number} is not a JSON record (binary data or another format?)"
                ) from None
            if not isinstance(data, dict):
                raise ResultsFileError(path, f"line {number} is not a JSON object but {type(data).__name__}")
            try:
                yield Record.from_dict(data)
            except RecordError as error:
                raise ResultsFileError(path, f"line {number}: {error}") from None


SUFFIXES = (".jsonl", ".jsonl.gz")


def run_files(path: str | Path) -> list[Path]:
    """A results file, or the results files in a directory (a run's shards, gathered): its
    *.jsonl and *.jsonl.gz files, a gzipped copy of a file present left out."""
    path = Path(path)
    if not path.is_dir():
        return [path]
    names = {p.name for p in path.iterdir() if p.is_file() and p.name.endswith(SUFFIXES)}
    return [path / name for name in sorted(names) if not (name.endswith(".gz") and name[:-3] in names)]


def read_run(paths: Iterable[str | Path]) -> list[Record]:
    """The records of one run, from its results file or from the files of its shards (a run
    split across machines, each writing its own file).

    Refuses an item (benchmark, problem, sample) found in two files, and files of different
    runs: records with different `run_key`s (the settings that shape results) in the files.
    One file is read as it is (`stats` refuses an item twice in it)."""
    files = [Path(p) for p in paths]
    records: list[Record] = []
    seen: dict[tuple[str, str, int], Path] = {}
    keys: dict[str, Path] = {}
    if len(files) == 1:
        return list(read_records(files[0]))
    resolved = [p.resolve() for p in files]
    for index, path in enumerate(resolved):
        if path in resolved[:index]:
            raise ResultsFileError(files[index], "given twice")
    for path in files:
        shard = list(read_records(path))
        for key in sorted({r.run_key for r in shard}):
            if keys and key not in keys:
                other, theirs = next(iter(keys.items()))
                raise ResultsFileError(path, (
                    f"holds records of another run than {theirs} (run key {key or 'none'} against "
                    f"{other or 'none'}: other settings): shards of one run share every option but "
                    "the problems they select"))
            keys.setdefault(key, path)
        for record in shard:
            first = seen.setdefault(record.item, path)
            if first != path:
                benchmark, problem, sample = record.item
                raise ResultsFileError(path, (
                    f"{benchmark} {problem} sample {sample} is also in {first}: shards of a run "
                    "must not overlap"))
        records += shard
    return records
