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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, overload

from ..pipelines.genome import Genome
from ..problems import Problem
from .config import CHECKPOINT_VERSION, OPERATIONAL, SearchConfig, SearchState
from .errors import EvolveError
from .evaluate import EvalJob, Evaluator, ModelsFactory, canonical, evaluation_seed, plain
from .operators import (
    InnovationCounter,
    complexity_penalty,
    initial_population,
    mean_rate,
    node_count,
    penalized_fitness,
)
from .reproduce import ReproductionRules, reproduce
from .selection import SelectionResult, select_and_report
from .species import adjusted_fitness, next_representatives, speciate
from .subsets import difficulty_rates, load_benchmark, select_subsets

__all__ = ["CHECKPOINT_VERSION", "OPERATIONAL", "Scored", "SearchConfig", "SearchState", "search"]


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


@overload
def search(
    config: SearchConfig,
    *,
    models_factory: ModelsFactory | None = ...,
    problems: Sequence[Problem] | None = ...,
    sandbox: Any = ...,
    stop_after: None = ...,
    on_generation: Callable[[int, SearchState], None] | None = ...,
) -> SelectionResult: ...


@overload
def search(
    config: SearchConfig,
    *,
    models_factory: ModelsFactory | None = ...,
    problems: Sequence[Problem] | None = ...,
    sandbox: Any = ...,
    stop_after: int,
    on_generation: Callable[[int, SearchState], None] | None = ...,
) -> SelectionResult | None: ...


def search(
    config: SearchConfig,
    *,
    models_factory: ModelsFactory | None = None,
    problems: Sequence[Problem] | None = None,
    sandbox: Any = None,
    stop_after: int | None = None,
    on_generation: Callable[[int, SearchState], None] | None = None,
) -> SelectionResult | None:
    """Run (or resume) the search, then the held-out comparison; returns a `SelectionResult`.

    `models_factory`: builds the models (anything with `.get(name)`); evaluation then runs in
    this process whatever `config.workers` says. `problems`: the benchmark's problems
    (default: load `config.benchmark`). `sandbox`: an open Sandbox to use (in-process only).
    `stop_after=g` returns None once g generations are done and checkpointed (as a kill
    would, minus the lost work); `on_generation(g, state)` is called after each checkpoint.
    """
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
