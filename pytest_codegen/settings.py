"""Everything a run is configured with, independent of how it was given (pytest options, CLI)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class RunSettings:
    pipeline: str = "single"
    replay: str | None = None
    # Models: `model` serves every role that is not named on its own.
    # The default can code (HumanEval pass@1 in the 50s) and is fetched on first use; CI and the
    # offline tests name gemma-270m, which installs from PyPI but solves almost nothing.
    model: str = "qwen-coder-0.5b"
    generator: str | None = None
    refiner: str | None = None
    analyzer: str | None = None
    critic: str | None = None
    temperature: float | None = None  # None: each role's own default
    refiner_temperature: float | None = None  # every role after the generator; None: as above
    max_tokens: int = 512
    seed: int = 0
    n_ctx: int = 4096
    threads: int | None = None  # None: split the cores between xdist workers
    verbose_llama: bool = False
    # Where models run: "embedded" (the session's model server), "in-process" (each process
    # loads its own), or the base URL of an external OpenAI-compatible server.
    model_server: str = "embedded"
    model_slots: int | None = None  # sequences the embedded server decodes together
    decode: str = "batched"  # "sequential": one sequence at a time, bit-reproducible
    model_timeout: float = 600.0  # seconds one request to a model server may take
    cache_dir: str | None = None  # None: no generation cache
    # Execution-feedback loops.
    rounds: int = 3
    early_stop: bool = True
    feedback: str = "visible"  # "visible": only tests a model may see; "hidden": the scoring tests
    # Execution limits of one sandboxed run.
    exec_timeout: float = 10.0
    exec_memory_mb: int = 1024

    def role_model(self, role: str) -> str:
        return getattr(self, role, None) or self.model


# Settings that change what a run produces; the rest (threads, cache, logging, where the model
# runs and whether it is batched: see README, Determinism) only how fast.
_NOT_RESULT_SHAPING = ("threads", "verbose_llama", "cache_dir", "model_server", "model_slots",
                       "decode", "model_timeout")


# Settings whose whole effect the genome (also in the key) records, left out of the key while
# unset so that results files written before they existed still resume.
_RECORDED_BY_THE_GENOME = ("refiner_temperature",)


def run_key(settings: RunSettings, genome: dict | None = None) -> str:
    """Identifies the work a results file holds, so a resumed run never mixes in another's.

    Files named in the settings count by content: an edited genome or replay file is other work.
    """
    import hashlib
    import json
    from dataclasses import asdict
    from pathlib import Path

    shaping = {k: v for k, v in asdict(settings).items()
               if k not in _NOT_RESULT_SHAPING and not (k in _RECORDED_BY_THE_GENOME and v is None)}
    shaping["genome"] = genome
    if settings.replay and Path(settings.replay).is_file():
        shaping["replay"] = hashlib.sha256(Path(settings.replay).read_bytes()).hexdigest()
    return hashlib.sha256(json.dumps(shaping, sort_keys=True).encode()).hexdigest()[:16]


def check_options(settings: RunSettings, *, samples: int | None = None, min_pass: float | None = None,
                  names: Mapping[str, str] | None = None) -> None:
    """Refuse settings no run can mean, naming the option: a ValueError per bad value.

    `names`: how to name a setting that did not come from its command-line option (an ini
    key), by field name.

    (A zero memory limit would remove the limit, a zero or NaN timeout would fail or never
    end every run, zero tokens would make generation unbounded.)"""
    import math

    problems = []
    names = names or {}

    def positive(value: float | None, name: str, option: str, what: str) -> None:
        if value is not None and (not math.isfinite(value) or value <= 0):
            problems.append(f"{names.get(name, option)} must be {what} greater than 0, not {value:g}")

    positive(settings.exec_timeout, "exec_timeout", "--exec-timeout", "a number of seconds")
    positive(settings.exec_memory_mb, "exec_memory_mb", "--exec-memory", "a number of MB")
    positive(settings.max_tokens, "max_tokens", "--max-tokens", "a number of tokens")
    positive(settings.n_ctx, "n_ctx", "--n-ctx", "a context size")
    positive(settings.threads, "threads", "--threads", "a thread count")
    for option, t in (("--temperature", settings.temperature), ("--refiner-temperature", settings.refiner_temperature)):
        if t is not None and (not math.isfinite(t) or t < 0):
            problems.append(f"{option} must be 0 or more, not {t:g}")
    if settings.rounds < 1:
        problems.append(f"--rounds must be at least 1, not {settings.rounds}")
    if samples is not None and samples < 1:
        problems.append(f"--samples must be at least 1, not {samples}")
    if min_pass is not None and not 0 <= min_pass <= 1:
        problems.append(f"--codegen-min-pass must be between 0 and 1, not {min_pass:g}")
    if problems:
        raise ValueError("; ".join(problems))


CACHE_DIR = ".codegen-cache"  # the generation cache's directory in the rootdir, unless given
CACHE_FILE = "generations.sqlite3"  # models.cache.GenerationCache's file in the cache directory


def check_generation_cache(directory: str | None) -> None:
    """A ValueError naming the file when the generation cache in `directory` is not a usable
    SQLite database (rather than a raw sqlite3 error from the first generation)."""
    if not directory:
        return
    import sqlite3
    from pathlib import Path

    path = Path(directory) / CACHE_FILE
    if not path.exists():
        return
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=60)
        try:
            verdict = db.execute("PRAGMA quick_check").fetchone()
        finally:
            db.close()
    except sqlite3.Error as error:
        verdict = (str(error),)
    if verdict != ("ok",):
        raise ValueError(
            f"the generation cache {path} is corrupt ({verdict[0] if verdict else 'unreadable'}): "
            "delete it, or run with --no-codegen-cache"
        )
