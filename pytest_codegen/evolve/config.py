"""The search's settings and its checkpointed state: the data `search` and `selection` share.

`SearchConfig` says what a search computes (its `shaping()` settings must match for a resume)
and how it runs (the `OPERATIONAL` fields); `SearchState` is everything the checkpoint holds.
Kept apart from the loop (`search`) and the held-out check (`selection`), which both use them,
so neither of those imports the other's module for its types.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from typing import Any

from ..pipelines.genome import Genome, genome_from_dict
from ..settings import RunSettings
from .errors import EvolveError
from .evaluate import plain
from .operators import InnovationCounter, MutationRates
from .species import ThresholdRule

CHECKPOINT_VERSION = 1


@dataclass(frozen=True)
class SearchConfig:
    out: str
    benchmark: str = "humaneval"
    problems: int = 25  # search subset
    holdout: int = 25  # held-out subset, disjoint from the search subset
    population: int = 20
    generations: int = 10
    evaluations: int = 3  # K: evaluations (seeds) per genome during the search
    holdout_evaluations: int = 3  # K': fresh seeds for the held-out re-evaluation
    models: tuple[str, ...] = ("gemma-270m",)
    seed: int = 0
    max_tokens: int = 512
    difficulty_from: str | None = None
    feedback: str = "visible"
    target_species: int = 4  # the study keeps 3-5
    elitism: int = 2
    complexity_per_node: float = 0.02
    survival: float = 0.5
    crossover_rate: float = 0.75
    weaker_gene_rate: float = 0.3
    initial_threshold: float = 1.0
    threshold_step: float = 0.1
    rates: MutationRates = MutationRates()
    n_ctx: int = 4096
    exec_timeout: float = 10.0
    exec_memory_mb: int = 1024
    # Operational: how the search runs, not what it computes (may change between resumes).
    mbpp_data: str | None = None
    workers: int = 1
    codegen_cache: str | None = None
    threads: int | None = None
    rootdir: str | None = None
    progress: bool = True

    def check(self) -> None:
        problems = []
        for name in ("problems", "holdout", "population", "generations", "evaluations",
                     "holdout_evaluations", "workers", "target_species", "max_tokens"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be at least 1")
        if not self.models:
            problems.append("name at least one model")
        if not 0 <= self.rates.switch_kind <= 1:
            problems.append("the switch-kind rate must be between 0 and 1")
        if not 0 <= self.elitism <= self.population:
            problems.append("elitism must be between 0 and the population size")
        if problems:
            raise EvolveError("; ".join(problems))

    def shaping(self) -> dict[str, Any]:
        """The settings that decide the result: a resumed search must have the same."""
        data = asdict(self)
        data["models"] = list(self.models)
        if not self.rates.switch_kind:  # the study's search space: as checkpoints made before it
            del data["rates"]["switch_kind"]
        for name in OPERATIONAL:
            data.pop(name)
        return data

    def threshold_rule(self) -> ThresholdRule:
        return ThresholdRule(self.target_species, self.initial_threshold, self.threshold_step)

    def run_settings(self) -> RunSettings:
        return RunSettings(
            pipeline="evolve", model=self.models[0], max_tokens=self.max_tokens,
            n_ctx=self.n_ctx, threads=self.threads, cache_dir=self.codegen_cache,
            feedback=self.feedback, exec_timeout=self.exec_timeout,
            exec_memory_mb=self.exec_memory_mb,
        )


OPERATIONAL = ("out", "mbpp_data", "workers", "codegen_cache", "threads", "rootdir", "progress")


@dataclass
class SearchState:
    """Everything the checkpoint holds."""

    search_ids: list[str]
    holdout_ids: list[str]
    population: list[Genome]
    innovations: InnovationCounter
    rng: random.Random
    threshold: float
    representatives: list[tuple[int, Genome]] = field(default_factory=list)
    next_species: int = 1
    generation: int = 0  # generations completed
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] | None = None  # the champion so far
    cache: dict[str, dict] = field(default_factory=dict)
    log_lines: int = 0  # lines of genomes.jsonl written by completed generations

    def to_json(self, config: SearchConfig) -> dict[str, Any]:
        version, internal, gauss = self.rng.getstate()
        return {
            "version": CHECKPOINT_VERSION,
            "config": config.shaping(),
            "search_ids": self.search_ids,
            "holdout_ids": self.holdout_ids,
            "generation": self.generation,
            "population": [plain(g) for g in self.population],
            "innovation": self.innovations.last,
            "rng_state": [version, list(internal), gauss],
            "threshold": self.threshold,
            "representatives": [[sid, plain(g)] for sid, g in self.representatives],
            "next_species": self.next_species,
            "history": self.history,
            "best": self.best,
            "log_lines": self.log_lines,
            "cache": self.cache,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SearchState:
        rng = random.Random()
        version, internal, gauss = data["rng_state"]
        rng.setstate((version, tuple(internal), gauss))
        return cls(
            search_ids=data["search_ids"], holdout_ids=data["holdout_ids"],
            population=[genome_from_dict(g) for g in data["population"]],
            innovations=InnovationCounter(data["innovation"]), rng=rng,
            threshold=data["threshold"],
            representatives=[(sid, genome_from_dict(g)) for sid, g in data["representatives"]],
            next_species=data["next_species"], generation=data["generation"],
            history=data["history"], best=data["best"], cache=data["cache"],
            log_lines=data["log_lines"],
        )
