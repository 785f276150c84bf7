"""The NEAT-style search loop: evaluate, speciate, log, checkpoint, reproduce; then the
honest re-evaluation of the champion against the baseline on held-out problems.

    result = search(SearchConfig(out="runs/evolve", models=("gemma-270m",)))
    result = search(config, models_factory=lambda: FakeModels(...), problems=toy_problems)

Fitness of a genome = mean over K evaluations (distinct `RunSettings.seed`s) of its pass rate
on the search subset − 0.02 × nodes. All randomness (subsets, initial population,
reproduction) comes from one `random.Random(config.seed)`, whose state is checkpointed after
every generation in OUT/checkpoint.json together with the population, the innovation counter,
the species threshold and representatives, and the evaluation cache: running the same command
on an existing OUT resumes, and ends with the same result as an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..pipelines.genome import Genome, genome_from_dict
from ..problems import Problem
from ..settings import RunSettings
from .errors import EvolveError
from .evaluate import EvalJob, Evaluator, ModelsFactory, canonical, evaluation_seed, plain
from .operators import (
    InnovationCounter, MutationRates, complexity_penalty, initial_population, mean_rate, node_count,
    penalized_fitness,
)
from .reproduce import ReproductionRules, reproduce
from .species import ThresholdRule, adjusted_fitness, next_representatives, speciate
from .subsets import difficulty_rates, load_benchmark, select_subsets

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
        if not 0 <= self.elitism <= self.population:
            problems.append("elitism must be between 0 and the population size")
        if problems:
            raise EvolveError("; ".join(problems))

    def shaping(self) -> dict[str, Any]:
        """The settings that decide the result: a resumed search must have the same."""
        data = asdict(self)
        data["models"] = list(self.models)
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
class Scored:
    """One evaluated genome of one generation."""

    genome: Genome
    rates: list[float]  # pass rate of each evaluation
    penalty: float

    @property
    def mean(self) -> float:
        return mean_rate(self.rates)

    @property
    def fitness(self) -> float:
        return penalized_fitness(self.rates, self.penalty)


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


def _write_json(path: Path, data: Any) -> None:
    """Atomically: a kill while writing leaves the previous file."""
    partial = path.with_suffix(path.suffix + ".part")
    partial.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    os.replace(partial, path)


def _load_checkpoint(path: Path, config: SearchConfig) -> SearchState | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise EvolveError(f"{path}: unreadable checkpoint ({error}); remove it to start afresh") from None
    if data.get("version") != CHECKPOINT_VERSION:
        raise EvolveError(f"{path}: checkpoint version {data.get('version')}, expected {CHECKPOINT_VERSION}")
    saved, wanted = data["config"], json.loads(json.dumps(config.shaping()))
    differ = sorted(k for k in set(saved) | set(wanted) if saved.get(k) != wanted.get(k))
    if differ:
        details = ", ".join(f"{k}: {saved.get(k)!r} there, {wanted.get(k)!r} now" for k in differ)
        raise EvolveError(f"{path.parent} holds another search ({details}); use another --out")
    return SearchState.from_json(data)


def _truncate_log(path: Path, lines: int) -> None:
    """Drop the log lines of a generation that was interrupted (it runs again)."""
    if not path.exists():
        return
    with path.open(encoding="utf-8") as log:
        kept = [line for _, line in zip(range(lines), log)]
    path.write_text("".join(kept), encoding="utf-8")


def _fresh_state(config: SearchConfig, problems: Sequence[Problem]) -> SearchState:
    rng = random.Random(config.seed)
    rates = None
    if config.difficulty_from:
        rates = difficulty_rates(config.difficulty_from, problems[0].benchmark if problems else None)
    search_set, holdout_set = select_subsets(problems, config.problems, config.holdout, rng, rates)
    innovations = InnovationCounter()
    population = initial_population(rng, config.models, config.population, innovations, config.rates)
    return SearchState(
        search_ids=[p.id for p in search_set], holdout_ids=[p.id for p in holdout_set],
        population=population, innovations=innovations, rng=rng,
        threshold=config.threshold_rule().initial,
    )


def _better(candidate: dict[str, Any], best: dict[str, Any] | None) -> bool:
    """Champion order: higher fitness, then fewer nodes, then the earlier one."""
    if best is None:
        return True
    return (candidate["fitness"], -candidate["nodes"]) > (best["fitness"], -best["nodes"])


def search(
    config: SearchConfig,
    *,
    models_factory: ModelsFactory | None = None,
    problems: Sequence[Problem] | None = None,
    sandbox: Any = None,
    stop_after: int | None = None,
    on_generation: Callable[[int, SearchState], None] | None = None,
):
    """Run (or resume) the search, then the held-out comparison; returns a `SelectionResult`.

    `models_factory`: builds the models (anything with `.get(name)`); evaluation then runs in
    this process whatever `config.workers` says. `problems`: the benchmark's problems
    (default: load `config.benchmark`). `sandbox`: an open Sandbox to use (in-process only).
    `stop_after=g` returns None once g generations are done and checkpointed (as a kill
    would, minus the lost work); `on_generation(g, state)` is called after each checkpoint.
    """
    from .selection import select_and_report

    config.check()
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    if problems is None:
        problems = load_benchmark(config.benchmark, config.mbpp_data)
    if models_factory is None:
        _check_models(config)
    checkpoint_path, log_path = out / "checkpoint.json", out / "genomes.jsonl"
    state = _load_checkpoint(checkpoint_path, config)
    if state is None:
        state = _fresh_state(config, problems)
        log_path.write_text("", encoding="utf-8")
    else:
        _truncate_log(log_path, state.log_lines)

    by_id = {p.id: p for p in problems}
    missing = [pid for pid in state.search_ids + state.holdout_ids if pid not in by_id]
    if missing:
        raise EvolveError(f"the checkpoint names problems this benchmark lacks: {missing[:3]}")
    used = [by_id[pid] for pid in state.search_ids + state.holdout_ids]
    workers = 1 if models_factory is not None else config.workers
    evaluator = Evaluator(used, config.run_settings(), workers=workers, models_factory=models_factory,
                          sandbox=sandbox, rootdir=config.rootdir, cache=state.cache)
    bar = _progress(config, state.generation)
    try:
        while state.generation < config.generations:
            _run_generation(config, state, evaluator, log_path, bar)
            _write_json(checkpoint_path, state.to_json(config))
            if on_generation is not None:
                on_generation(state.generation, state)
            if stop_after is not None and state.generation >= stop_after and state.generation < config.generations:
                return None
        if bar is not None:
            bar.close()
            bar = None
        result = select_and_report(config, state, evaluator, by_id)
        _write_json(checkpoint_path, state.to_json(config))  # with the held-out evaluations
        return result
    finally:
        if bar is not None:
            bar.close()
        evaluator.close()


def _check_models(config: SearchConfig) -> None:
    """Stop at once, with what to do, when a named model is missing (loads nothing)."""
    from ..models import ModelPool

    pool = ModelPool(rootdir=Path(config.rootdir) if config.rootdir else None)
    for name in config.models:
        pool.locate(name)


def _run_generation(config: SearchConfig, state: SearchState, evaluator: Evaluator, log_path: Path,
                    bar: Any = None) -> None:
    generation, K = state.generation, config.evaluations
    seeds = [evaluation_seed(config.seed, "search", k) for k in range(K)]
    ids = tuple(state.search_ids)
    population = state.population
    jobs = [EvalJob(canonical(g), seed, ids) for g in population for seed in seeds]

    remaining = [K] * len(population)
    if bar is not None:
        bar.set_description(f"generation {generation + 1}/{config.generations}")

    def done(index: int) -> None:
        genome = index // K
        remaining[genome] -= 1
        if remaining[genome] == 0 and bar is not None:
            bar.set_postfix_str(f"genome {genome + 1}/{len(population)}", refresh=False)
            bar.update(1)

    results = evaluator.run(jobs, done)

    scored = [
        Scored(g, [results[i * K + k].pass_rate for k in range(K)],
               complexity_penalty(g, config.complexity_per_node))
        for i, g in enumerate(population)
    ]
    fitness = [s.fitness for s in scored]
    species, state.next_species = speciate(population, state.representatives, state.threshold,
                                           state.next_species)
    species_of = {i: s.id for s in species for i in s.members}
    adjusted = adjusted_fitness(fitness, species)

    with log_path.open("a", encoding="utf-8") as log:
        for i, s in enumerate(scored):
            record = {
                "generation": generation, "index": i, "genome": plain(s.genome),
                "evaluations": s.rates, "seeds": seeds, "mean": s.mean, "penalty": s.penalty,
                "fitness": s.fitness, "species": species_of[i], "adjusted_fitness": round(adjusted[i], 10),
                "nodes": node_count(s.genome),
            }
            log.write(json.dumps(record) + "\n")
            state.log_lines += 1
            candidate = {**record, "generation": generation}
            if _better(candidate, state.best):
                state.best = candidate

    state.history.append({
        "generation": generation,
        "best": max(fitness),
        "mean": sum(fitness) / len(fitness),
        "species": len(species),
        "threshold": state.threshold,
    })
    state.threshold = config.threshold_rule().adapt(state.threshold, len(species))
    state.representatives = next_representatives(population, species, fitness)
    state.generation += 1
    if state.generation < config.generations:
        rules = ReproductionRules(config.population, config.elitism, config.survival,
                                  config.crossover_rate, config.weaker_gene_rate, config.rates)
        state.population = reproduce(population, fitness, species, state.rng, config.models,
                                     state.innovations, rules)


def _progress(config: SearchConfig, generation: int):
    """One bar over the whole search (genomes of all generations), so its ETA is the search's."""
    if not config.progress or generation >= config.generations:
        return None
    from tqdm import tqdm

    return tqdm(total=config.generations * config.population, initial=generation * config.population,
                desc=f"generation {generation + 1}/{config.generations}", unit="genome",
                dynamic_ncols=True)
