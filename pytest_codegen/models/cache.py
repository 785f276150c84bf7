"""A generation cache in SQLite: the same request to the same weights is never generated twice.

Keyed by the model file's identity and the full request, its seed included except at temperature
0: greedy decoding ignores the seed, so a refinement round that asks again what an earlier round
asked (a program that came back unchanged, with the same feedback) is answered from the cache.
Entries written before that rule (keyed with a greedy request's seed) are still found. WAL mode and
a busy timeout let several xdist workers read and write the same file at once.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

from .backend import GenerationRequest, GenerationResponse, Mode, ModelBackend

_SCHEMA = """
CREATE TABLE IF NOT EXISTS generations (
    key TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    request TEXT NOT NULL,
    text TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    seconds REAL NOT NULL,
    finish_reason TEXT NOT NULL,
    created REAL NOT NULL
)
"""


_COLUMNS = ("key", "model", "request", "text", "prompt_tokens", "completion_tokens", "seconds", "finish_reason",
            "created")
_BUSY_SECONDS = 60


class GenerationCache:
    def __init__(self, directory: str | Path) -> None:
        self.path = Path(directory) / "generations.sqlite3"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, timeout=_BUSY_SECONDS, isolation_level=None)
        self._use_wal()
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(_SCHEMA)

    def _use_wal(self) -> None:
        """Switch to WAL. Workers opening a new cache together race for the switch, and SQLite
        answers the losers "database is locked" at once rather than after the busy timeout."""
        deadline = time.monotonic() + _BUSY_SECONDS
        while True:
            try:
                self._db.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as error:
                if "locked" not in str(error) or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

    @staticmethod
    def key(model_identity: str, request: GenerationRequest, *, seeded: bool = False) -> str:
        """The row's key; `seeded`: the seed kept even at temperature 0 (how keys were made
        before greedy requests dropped it)."""
        fields = request.to_dict()
        if request.temperature == 0 and not seeded:
            del fields["seed"]
        payload = json.dumps([model_identity, fields], sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()

    def get(self, model_identity: str, request: GenerationRequest) -> GenerationResponse | None:
        keys = [self.key(model_identity, request)]
        if request.temperature == 0:  # also under its seeded key (either row holds the same output)
            keys.append(self.key(model_identity, request, seeded=True))
        row = self._db.execute(
            "SELECT text, prompt_tokens, completion_tokens, seconds, finish_reason"
            f" FROM generations WHERE key IN ({', '.join('?' * len(keys))}) LIMIT 1",
            tuple(keys),
        ).fetchone()
        if row is None:
            return None
        text, prompt_tokens, completion_tokens, seconds, finish_reason = row
        return GenerationResponse(
            text, prompt_tokens, completion_tokens, seconds, finish_reason, cached=True
        )

    def put(
        self, model_identity: str, request: GenerationRequest, response: GenerationResponse
    ) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO generations VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                self.key(model_identity, request),
                model_identity,
                json.dumps(request.to_dict(), sort_keys=True),
                response.text,
                response.prompt_tokens,
                response.completion_tokens,
                response.seconds,
                response.finish_reason,
                time.time(),
            ),
        )

    def export_to(self, path: Path) -> int:
        """Write every generation to `path`, gzipped JSON lines sorted by key (an unchanged
        cache gives the same bytes): how a cache travels with the results it made, to a
        machine that lacks it. Returns how many."""
        import gzip

        rows = self._db.execute(f"SELECT {', '.join(_COLUMNS)} FROM generations ORDER BY key").fetchall()
        with gzip.GzipFile(path, "wb", mtime=0) as out:
            for row in rows:
                out.write((json.dumps(dict(zip(_COLUMNS, row)), sort_keys=True) + "\n").encode())
        return len(rows)

    def import_from(self, path: Path) -> int:
        """Add the generations of an `export_to` file that this cache lacks (what it has stays);
        returns how many were added. A malformed file is a ValueError naming it."""
        values = [tuple(row[column] for column in _COLUMNS) for row in read_export(path)]
        before = self._db.total_changes
        self._db.executemany(
            f"INSERT OR IGNORE INTO generations ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})",
            values,
        )
        return self._db.total_changes - before

    def close(self) -> None:
        self._db.close()


def read_export(path: Path) -> list[dict]:
    """The rows of an `export_to` file, each with every column (the request as its JSON text).
    A malformed file is a ValueError naming it."""
    import gzip

    try:
        with gzip.open(path, "rt", encoding="utf-8") as lines:
            rows = [json.loads(line) for line in lines if line.strip()]
        for row in rows:
            missing = [column for column in _COLUMNS if column not in row]
            if missing:
                raise KeyError(", ".join(missing))
    except (OSError, EOFError, ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{path}: not a generation cache export ({error})") from None
    return rows


class CachedBackend:
    """Answers from the cache when it can; loads the model only on the first miss.

    A fully cached re-run therefore never loads the weights. `calls` counts the requests that
    reached the model, so "the second run made no model call" is something a test can check.
    """

    def __init__(
        self,
        alias: str,
        mode: Mode,
        identity: str | Callable[[], str | None],
        load: Callable[[], ModelBackend],
        cache: GenerationCache | None,
    ) -> None:
        self.alias = alias
        self.mode: Mode = mode
        self._identity = identity
        self.cache = cache
        self.calls = 0
        self._load = load
        self._backend: ModelBackend | None = None

    @property
    def identity(self) -> str | None:
        """What the cache keys on; a callable is asked on first use (an external server's
        identity takes a request). None: a backend that cannot say, and is not cached."""
        if callable(self._identity):
            resolved = self._identity()
            if resolved is None:
                return None
            self._identity = resolved
        return self._identity

    def generate(self, request: GenerationRequest) -> GenerationResponse:
        identity = self.identity if self.cache is not None else None
        if self.cache is not None and identity is not None:
            hit = self.cache.get(identity, request)
            if hit is not None:
                return hit
        if self._backend is None:
            self._backend = self._load()
        self.calls += 1
        response = self._backend.generate(request)
        if self.cache is not None and identity is not None:
            self.cache.put(identity, request, response)
        return response

    def close(self) -> None:
        if self._backend is not None:
            self._backend.close()
            self._backend = None
