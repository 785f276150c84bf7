"""Everything a run is configured with, independent of how it was given (pytest options, CLI)."""

from __future__ import annotations

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
    max_tokens: int = 512
    seed: int = 0
    n_ctx: int = 4096
    threads: int | None = None  # None: split the cores between xdist workers
    verbose_llama: bool = False
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


# Settings that change what a run produces; the rest (threads, cache, logging) only how fast.
_NOT_RESULT_SHAPING = ("threads", "verbose_llama", "cache_dir")


def run_key(settings: RunSettings, genome: dict | None = None) -> str:
    """Identifies the work a results file holds, so a resumed run never mixes in another's.

    Files named in the settings count by content: an edited genome or replay file is other work.
    """
    import hashlib
    import json
    from dataclasses import asdict
    from pathlib import Path

    shaping = {k: v for k, v in asdict(settings).items() if k not in _NOT_RESULT_SHAPING}
    shaping["genome"] = genome
    if settings.replay and Path(settings.replay).is_file():
        shaping["replay"] = hashlib.sha256(Path(settings.replay).read_bytes()).hexdigest()
    return hashlib.sha256(json.dumps(shaping, sort_keys=True).encode()).hexdigest()[:16]
