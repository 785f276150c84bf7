"""Honest selection: the champion and the baseline re-evaluated on held-out problems.

The search's best fitness is an optimistic estimate: the champion was picked *because* it
scored well on those problems with those seeds. Both the champion and the baseline (the plain
refine loop: the first model of `--models` as generator and refiner, one stage of 3
iterations, no analyzer, default prompts and temperatures) are re-run on the held-out problems
(disjoint from the search subset) with K' fresh evaluation seeds. The report gives, for each,
the search score (K search seeds, search problems), the held-out score, and the selection
inflation = search pass rate − held-out pass rate; and the paired comparison of the champion
(B) against the baseline (A) on the held-out items by `stats.compare`, sample k of both being
the same evaluation seed. "Beats the baseline" means Δ > 0 with exact McNemar p < 0.05.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from tabulate import tabulate

from ..pipelines.genome import Genome, genome_from_dict
from ..problems import Problem
from ..record import Record
from ..results import ResultsWriter
from ..stats import BenchmarkComparison, Comparison, compare, render_comparison
from .config import SearchConfig, SearchState
from .evaluate import EvalJob, EvalResult, Evaluator, canonical, evaluation_seed, plain
from .operators import baseline_genome, complexity_penalty, mean_rate, node_count, penalized_fitness

SIGNIFICANCE = 0.05


@dataclass(frozen=True)
class Assessment:
    """One genome's search and held-out numbers."""

    label: str
    genome: Genome
    penalty: float
    search_rates: tuple[float, ...]  # pass rate per search evaluation (K)
    holdout_rates: tuple[float, ...]  # pass rate per held-out evaluation (K')

    @property
    def nodes(self) -> int:
        return node_count(self.genome)

    @property
    def search_pass(self) -> float:
        return mean_rate(self.search_rates)

    @property
    def holdout_pass(self) -> float:
        return mean_rate(self.holdout_rates)

    @property
    def search_fitness(self) -> float:
        return penalized_fitness(self.search_rates, self.penalty)

    @property
    def holdout_fitness(self) -> float:
        return penalized_fitness(self.holdout_rates, self.penalty)

    @property
    def inflation(self) -> float:
        """Selection inflation: search pass rate − held-out pass rate (the penalty cancels)."""
        return round(self.search_pass - self.holdout_pass, 10)


@dataclass(frozen=True)
class SelectionResult:
    champion: Assessment
    baseline: Assessment
    comparison: BenchmarkComparison  # A = baseline, B = champion, held-out problems
    beats_baseline: bool
    champion_generation: int
    history: tuple[dict[str, Any], ...]
    search_ids: tuple[str, ...]
    holdout_ids: tuple[str, ...]
    report: str
    out: Path


def describe(genome: Genome) -> str:
    """One line: `gen(model T=0.30 prompt#) → [1×3: analyzer(...) refiner(...)] ...`."""
    def node(n) -> str:
        prompt = "default prompt" if n.system_prompt is None else f"prompt {n.system_prompt[:24]!r}"
        return f"{n.model} T={n.temperature:.2f} {prompt}"

    parts = [f"generator({node(genome.generator)})"]
    for stage in genome.stages:
        inner = (f"analyzer({node(stage.analyzer)}) " if stage.analyzer else "") + f"refiner({node(stage.refiner)})"
        parts.append(f"stage#{stage.innovation} ×{stage.max_iterations}: {inner}")
    return " → ".join(parts)


def _records(label: str, problems: list[Problem], results: list[EvalResult], seeds: list[int],
             feedback: str, genome: Genome) -> list[Record]:
    """The held-out items as records (what stats.compare and `pytest-codegen compare` read),
    sample k being evaluation seed k."""
    properties = {"feedback": feedback, "genome": plain(genome)}
    return [
        Record(benchmark=problem.benchmark, problem_id=problem.id, passed=passed, outcome_class=outcome,
               sample=k, pipeline=f"evolve-{label}", properties={**properties, "seed": seed})
        for k, (seed, result) in enumerate(zip(seeds, results))
        for problem, passed, outcome in zip(problems, result.passed, result.classes)
    ]


def select_and_report(config: SearchConfig, state: SearchState, evaluator: Evaluator,
                      by_id: dict[str, Problem]) -> SelectionResult:
    out = Path(config.out)
    assert state.best is not None
    champion = genome_from_dict(state.best["genome"])
    baseline = baseline_genome(config.models[0])
    search_seeds = [evaluation_seed(config.seed, "search", k) for k in range(config.evaluations)]
    holdout_seeds = [evaluation_seed(config.seed, "holdout", k) for k in range(config.holdout_evaluations)]
    search_ids, holdout_ids = tuple(state.search_ids), tuple(state.holdout_ids)

    genomes = (("champion", champion), ("baseline", baseline))
    phases = (("search", search_seeds, search_ids), ("holdout", holdout_seeds, holdout_ids))
    jobs: list[EvalJob] = []
    names: list[str] = []  # what each job is, for the progress bar
    spans: dict[tuple[str, str], slice] = {}
    for label, genome in genomes:
        for phase, seeds, ids in phases:
            start = len(jobs)
            jobs += [EvalJob(canonical(genome), seed, ids) for seed in seeds]
            names += [f"{label} {phase} {k + 1}/{len(seeds)}" for k in range(len(seeds))]
            spans[label, phase] = slice(start, len(jobs))
    # One batch, so that workers share it; the search evaluations are mostly cached already.
    bar = _progress(config, len(jobs))

    def done(index: int) -> None:
        if bar is not None:
            bar.set_postfix_str(names[index], refresh=False)
            bar.update(1)

    try:
        results = evaluator.run(jobs, done)
    finally:
        if bar is not None:
            bar.close()

    assessed, records = {}, {}
    holdout_problems = [by_id[pid] for pid in holdout_ids]
    for label, genome in genomes:
        searched, held = results[spans[label, "search"]], results[spans[label, "holdout"]]
        assessed[label] = Assessment(
            label, genome, complexity_penalty(genome, config.complexity_per_node),
            tuple(r.pass_rate for r in searched), tuple(r.pass_rate for r in held),
        )
        records[label] = _records(label, holdout_problems, held, holdout_seeds, config.feedback, genome)

    comparison = compare(records["baseline"], records["champion"]).benchmarks[0]
    beats = comparison.delta > 0 and comparison.p_value < SIGNIFICANCE

    _write_json(out / "champion.json", {"fitness": assessed["champion"].search_fitness,
                                        "genome": plain(champion)})
    for label in ("champion", "baseline"):
        writer = ResultsWriter(out / f"holdout-{label}.jsonl")
        try:
            for record in records[label]:
                writer.write(record)
        finally:
            writer.close()

    result = SelectionResult(
        champion=assessed["champion"], baseline=assessed["baseline"], comparison=comparison,
        beats_baseline=beats, champion_generation=state.best["generation"],
        history=tuple(state.history), search_ids=search_ids, holdout_ids=holdout_ids,
        report="", out=out,
    )
    text = render_report(config, result)
    (out / "report.txt").write_text(text + "\n", encoding="utf-8")
    return replace(result, report=text)


def _progress(config: SearchConfig, total: int) -> Any:
    """A bar over the re-evaluation's jobs (one genome × one seed × a subset): after the search's
    bar it is the long phase (both genomes, K' fresh seeds on the held-out problems)."""
    if not config.progress:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc="held-out re-evaluation", unit="evaluation", dynamic_ncols=True)


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")


def render_report(config: SearchConfig, result: SelectionResult) -> str:
    c, b = result.champion, result.baseline
    K, K2 = config.evaluations, config.holdout_evaluations
    how = (f"stratified by pass rate in {config.difficulty_from}" if config.difficulty_from
           else f"seeded random sample (seed {config.seed})")
    lines = [
        f"pytest-codegen evolve: {result.comparison.benchmark}, models {', '.join(config.models)}, seed {config.seed}",
        f"search: population {config.population}, {config.generations} generations, "
        f"{len(result.search_ids)} problems ({how}), K={K} evaluations per genome, "
        f"fitness = mean pass rate − {config.complexity_per_node} × nodes",
        f"held-out: {len(result.holdout_ids)} other problems, K'={K2} fresh evaluation seeds; "
        f"feedback policy {config.feedback}, max tokens {config.max_tokens}",
        "",
        tabulate(
            [[h["generation"] + 1, f"{h['best']:.3f}", f"{h['mean']:.3f}", h["species"], f"{h['threshold']:.2f}"]
             for h in result.history],
            headers=["generation", "best fitness", "mean fitness", "species", "threshold"],
            disable_numparse=True,
        ),
        "",
        f"champion (found in generation {result.champion_generation + 1}): {describe(c.genome)}",
        f"baseline (plain refine loop, first model of --models): {describe(b.genome)}",
        "",
        tabulate(
            [[a.label, a.nodes, f"{a.search_pass:.3f}", f"{a.search_fitness:.3f}",
              f"{a.holdout_pass:.3f}", f"{a.holdout_fitness:.3f}", f"{a.inflation:+.3f}"]
             for a in (c, b)],
            headers=["genome", "nodes", f"search pass (K={K})", "search fitness",
                     f"held-out pass (K'={K2})", "held-out fitness", "inflation (search − held-out)"],
            disable_numparse=True,
        ),
        "",
        "champion (B) vs baseline (A) on the held-out problems, paired by evaluation seed:",
        render_comparison(Comparison((result.comparison,))),
        "",
    ]
    if c.genome == b.genome:
        lines.append("verdict: the champion IS the baseline genome; the search found nothing better.")
    elif result.beats_baseline:
        lines.append(f"verdict: the champion beats the baseline on held-out problems "
                     f"(Δ pass@1 {result.comparison.delta_pass1:+.3f}, "
                     f"McNemar p = {result.comparison.p_value:.4g} < {SIGNIFICANCE}).")
    else:
        lines.append(f"verdict: the champion does NOT beat the baseline on held-out problems "
                     f"(Δ pass@1 {result.comparison.delta_pass1:+.3f}, McNemar p = {result.comparison.p_value:.4g}; "
                     f"needs Δ > 0 and p < {SIGNIFICANCE}).")
    hidden = " --feedback=hidden" if config.feedback == "hidden" else ""
    lines.append(f"run the champion: pytest benchmarks/{config.benchmark} --pipeline={result.out / 'champion.json'} "
                 f"--max-tokens={config.max_tokens}{hidden}")
    lines.append(f"files in {result.out}: champion.json, report.txt, genomes.jsonl (every evaluated genome), "
                 "holdout-champion.jsonl and holdout-baseline.jsonl (pytest-codegen compare reads them), "
                 "checkpoint.json")
    return "\n".join(lines)

