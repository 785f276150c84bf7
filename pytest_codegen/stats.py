"""Statistics over result records: pass@k, pass@1 over samples with a bootstrap interval, and
the paired comparison of two runs (exact McNemar, paired bootstrap, the study's σ effect size).

Conventions:

* Each benchmark in a results file is analysed on its own.
* A problem has N samples indexed 0..N-1. Sample s of every problem together is "run s" of the
  study's "5-run mean ± SD", so SDs here are over sample indices, never over problems.
* "Problems solved" of a run is the mean over samples, i.e. the sum of per-problem pass rates;
  pass@1 is that divided by the number of problems.
* Comparisons are B − A: A is the baseline.

Only the standard library is used (plus tabulate for the text tables, as report.py does).
"""

from __future__ import annotations

import math
import random
import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tabulate import tabulate

if TYPE_CHECKING:
    from .record import Record

DEFAULT_RESAMPLES = 2000
DEFAULT_SEED = 0
CONFIDENCE = 0.95

# problem_id -> {sample index: passed}
Outcomes = dict[str, dict[int, bool]]

SAMPLE_PAIRING = "sample-wise"
PROBLEM_PAIRING = "per-problem"


class StatsError(ValueError):
    """Records that cannot be analysed as asked (an item twice)."""


class ComparisonError(StatsError):
    """Two runs that must not be compared: different benchmarks, feedback policies or problems.

    `restrictable` is true when restricting both runs to the problems they share would help.
    """

    def __init__(self, message: str, *, restrictable: bool = False) -> None:
        super().__init__(message)
        self.restrictable = restrictable


# ----------------------------------------------------------------------------- records


def outcomes_by_benchmark(records: Iterable[Record]) -> dict[str, Outcomes]:
    """benchmark -> problem -> sample -> passed, sorted by benchmark and problem."""
    table: dict[str, dict[str, dict[int, bool]]] = defaultdict(lambda: defaultdict(dict))
    for record in records:
        benchmark, problem, sample = record.item
        samples = table[benchmark][problem]
        if sample in samples:
            # Averaging over duplicates would silently mix pipelines or appended runs.
            raise StatsError(
                f"two records for {benchmark} {problem} sample {sample}: "
                "does this file hold several runs or pipelines?"
            )
        samples[sample] = record.passed
    return {name: {p: dict(s) for p, s in sorted(problems.items())} for name, problems in sorted(table.items())}


def _rate(samples: Mapping[int, bool]) -> float:
    return sum(samples.values()) / len(samples)


def _solved(outcomes: Outcomes) -> float:
    """Problems solved: the sum over problems of each one's fraction of passing samples."""
    return math.fsum(_rate(s) for s in outcomes.values())


def pass_at_1(records: Iterable[Record]) -> dict[str, float]:
    """benchmark -> pass@1: problems solved / problems, the mean over problems of each one's
    fraction of passing samples (the unbiased pass@1 with any number of samples; equal to
    passed / items when every problem has the same number)."""
    return {name: _solved(outcomes) / len(outcomes) for name, outcomes in outcomes_by_benchmark(records).items()}


def _complete_samples(outcomes: Outcomes) -> list[int]:
    """Sample indices every problem has: an interrupted run's partial sample is left out of SDs."""
    common = set.intersection(*(set(s) for s in outcomes.values())) if outcomes else set()
    return sorted(common)


# ----------------------------------------------------------------------------- pass@k


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one problem with `c` of `n` samples correct (Chen et al. 2021).

    1 - C(n-c, k) / C(n, k), computed as 1 - prod_{i=n-c+1}^{n} (1 - k/i): no huge binomials
    and no cancellation between two tiny ratios.
    """
    if not 0 <= c <= n:
        raise ValueError(f"need 0 <= c <= n, got n={n}, c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"need 1 <= k <= n, got n={n}, k={k}")
    if n - c < k:  # every k-subset holds a correct sample
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def pass_at_k_table(records: Iterable[Record]) -> dict[str, dict[int, float]]:
    """benchmark -> {k: pass@k averaged over problems} for every k up to the fewest samples."""
    table = {}
    for name, outcomes in outcomes_by_benchmark(records).items():
        k_max = min(len(s) for s in outcomes.values())
        table[name] = {
            k: statistics.fmean(pass_at_k(len(s), sum(s.values()), k) for s in outcomes.values())
            for k in range(1, k_max + 1)
        }
    return table


# ----------------------------------------------------------------------------- pass@1


def bootstrap_interval(
    values: Sequence[float],
    *,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
    confidence: float = CONFIDENCE,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `values`, resampled with replacement.

    Callers pass one value per problem (its pass rate, or the paired difference of two rates),
    so resampling keeps each problem's samples together: they are not independent.
    """
    if not values:
        raise StatsError("bootstrap of no values")
    rng = random.Random(seed)
    n = len(values)
    means = sorted(math.fsum(rng.choices(values, k=n)) / n for _ in range(resamples))
    tail = (1 - confidence) / 2
    return _quantile(means, tail), _quantile(means, 1 - tail)


def _quantile(ordered: Sequence[float], q: float) -> float:
    """Linear interpolation between order statistics (numpy's default)."""
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _sd(values: Sequence[float]) -> float | None:
    """Sample SD, or None: with one value it is undefined, not zero."""
    return statistics.stdev(values) if len(values) >= 2 else None


@dataclass(frozen=True)
class Pass1:
    """pass@1 of one benchmark of a run, over sample indices and with a bootstrap interval."""

    benchmark: str
    problems: int
    samples: int  # sample indices every problem has; the SD is over these
    per_sample: tuple[int, ...]  # problems solved by each of those sample indices
    solved: float  # problems solved, mean over samples (sum of per-problem pass rates)
    solved_sd: float | None  # SD of problems solved over sample indices; None below 2 samples
    ci: tuple[float, float]  # bootstrap interval of pass@1, resampling problems

    @property
    def mean(self) -> float:
        """pass@1."""
        return self.solved / self.problems

    @property
    def sd(self) -> float | None:
        """SD of pass@1 over sample indices."""
        return None if self.solved_sd is None else self.solved_sd / self.problems


def _pass1(benchmark: str, outcomes: Outcomes, *, resamples: int, seed: int) -> Pass1:
    complete = _complete_samples(outcomes)
    per_sample = tuple(sum(s[i] for s in outcomes.values()) for i in complete)
    rates = [_rate(s) for s in outcomes.values()]
    return Pass1(
        benchmark=benchmark,
        problems=len(outcomes),
        samples=len(complete),
        per_sample=per_sample,
        solved=_solved(outcomes),
        solved_sd=_sd(per_sample),
        ci=bootstrap_interval(rates, resamples=resamples, seed=seed),
    )


def pass1_summary(
    records: Iterable[Record], *, resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED
) -> dict[str, Pass1]:
    """benchmark -> pass@1 mean ± SD over sample indices, solved counts and bootstrap interval."""
    return {
        name: _pass1(name, outcomes, resamples=resamples, seed=seed)
        for name, outcomes in outcomes_by_benchmark(records).items()
    }


# ----------------------------------------------------------------------------- comparison


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts `b` and `c`.

    Under H0 each discordant pair falls either way with probability 1/2, so this is the exact
    binomial test of b against Binomial(b + c, 1/2): twice the smaller tail, capped at 1.
    Integer arithmetic until one correctly rounded division.
    """
    if b < 0 or c < 0:
        raise ValueError(f"discordant counts must be non-negative, got b={b}, c={c}")
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1))
    return min(1.0, 2 * tail / (1 << n))  # 1 << n == 2**n, typed int


@dataclass(frozen=True)
class BenchmarkComparison:
    """Run B against run A on one benchmark, over the same problems."""

    benchmark: str
    run_a: Pass1
    run_b: Pass1
    pairing: str  # SAMPLE_PAIRING or PROBLEM_PAIRING (see `compare`)
    pairs: int
    b: int  # discordant pairs where A passed and B failed
    c: int  # discordant pairs where A failed and B passed
    p_value: float  # exact McNemar
    delta_ci: tuple[float, float]  # paired bootstrap interval of Δpass@1, resampling problems
    effect_sigma: float | None
    effect_note: str  # how σ was computed, or why there is none

    @property
    def problems(self) -> int:
        return self.run_a.problems

    @property
    def delta(self) -> float:
        """Δ problems solved (mean over samples), B − A."""
        return self.run_b.solved - self.run_a.solved

    @property
    def delta_pass1(self) -> float:
        return self.delta / self.problems


@dataclass(frozen=True)
class Comparison:
    benchmarks: tuple[BenchmarkComparison, ...]
    dropped_a: int = 0  # (benchmark, problem)s only in A, left out by restrict_to_common
    dropped_b: int = 0
    notes: tuple[str, ...] = ()


def compare(
    a_records: Iterable[Record],
    b_records: Iterable[Record],
    *,
    restrict_to_common: bool = False,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
) -> Comparison:
    """Pair run B with run A problem by problem, per benchmark.

    Refuses (ComparisonError) runs with different feedback policies, and runs over different
    (benchmark, problem) sets unless `restrict_to_common`, which keeps only the shared ones and
    reports how many were dropped. Records without a `feedback` field come from pipelines that
    show the model no test results, so they are comparable with either policy.

    McNemar pairing: when every problem has the same sample indices in both runs, each
    (problem, sample) of A is paired with the same (problem, sample) of B. Seeds derive from
    (problem, sample, round, role) and not from the pipeline, so the two items of a pair share
    their first-attempt seed: a genuine pairing, using every item. Otherwise (different N, or an
    interrupted run) each problem is one pair, "solved" when its pass rate is at least 0.5.
    Pairs of one problem's samples are not independent, so with N > 1 the sample-wise p-value
    is optimistic; the paired bootstrap interval resamples whole problems and is not.
    """
    a_records, b_records = list(a_records), list(b_records)
    notes = list(_check_feedback(a_records, b_records))
    runs = outcomes_by_benchmark(a_records), outcomes_by_benchmark(b_records)
    for label, run in zip("AB", runs):
        if not run:
            raise ComparisonError(f"run {label} has no records")
    keys_a, keys_b = (_problem_keys(run) for run in runs)
    dropped_a, dropped_b = len(keys_a - keys_b), len(keys_b - keys_a)
    if dropped_a or dropped_b:
        if not restrict_to_common:
            raise ComparisonError(_mismatch(*runs), restrictable=bool(keys_a & keys_b))
        common = keys_a & keys_b
        if not common:
            raise ComparisonError(f"the runs share no problem: {_mismatch(*runs)}")
        runs = _restrict(runs[0], common), _restrict(runs[1], common)
        notes.append(
            f"restricted to the {len(common)} problems both runs have: "
            f"dropped {dropped_a} only in A and {dropped_b} only in B"
        )
    results = tuple(
        _compare_benchmark(name, runs[0][name], runs[1][name], resamples=resamples, seed=seed)
        for name in runs[0]
    )
    return Comparison(results, dropped_a, dropped_b, tuple(notes))


def _check_feedback(a_records: list[Record], b_records: list[Record]) -> list[str]:
    policies = []
    for label, records in zip("AB", (a_records, b_records)):
        found = sorted({r.feedback for r in records if r.feedback is not None})
        if len(found) > 1:
            raise ComparisonError(f"run {label} mixes feedback policies: {', '.join(found)}")
        policies.append(found[0] if found else None)
    a, b = policies
    if a and b and a != b:
        raise ComparisonError(
            f"the runs used different feedback policies (A: {a}, B: {b}); with 'hidden' the "
            "model saw the scoring tests, so their pass rates are not comparable"
        )
    if (a is None) != (b is None):
        label, policy = ("A", a) if a else ("B", b)
        return [f"only run {label} records a feedback policy ({policy}); the other shows the model no test results"]
    return []


def _problem_keys(run: dict[str, Outcomes]) -> set[tuple[str, str]]:
    return {(name, problem) for name, outcomes in run.items() for problem in outcomes}


def _restrict(run: dict[str, Outcomes], keep: set[tuple[str, str]]) -> dict[str, Outcomes]:
    kept = {name: {p: s for p, s in outcomes.items() if (name, p) in keep} for name, outcomes in run.items()}
    return {name: outcomes for name, outcomes in kept.items() if outcomes}


def _mismatch(a: dict[str, Outcomes], b: dict[str, Outcomes]) -> str:
    if set(a) != set(b):
        return f"the runs cover different benchmarks (A: {', '.join(a)}; B: {', '.join(b)})"
    parts = []
    for name in a:
        only_a, only_b = sorted(set(a[name]) - set(b[name])), sorted(set(b[name]) - set(a[name]))
        if only_a or only_b:
            parts.append(f"{name}: {_some(only_a)} only in A, {_some(only_b)} only in B")
    return "the runs cover different problems (" + "; ".join(parts) + ")"


def _some(problems: list[str]) -> str:
    if not problems:
        return "0"
    shown = ", ".join(problems[:3]) + (", ..." if len(problems) > 3 else "")
    return f"{len(problems)} ({shown})"


def _compare_benchmark(name: str, a: Outcomes, b: Outcomes, *, resamples: int, seed: int) -> BenchmarkComparison:
    run_a = _pass1(name, a, resamples=resamples, seed=seed)
    run_b = _pass1(name, b, resamples=resamples, seed=seed)
    if all(set(a[p]) == set(b[p]) for p in a):
        pairing = SAMPLE_PAIRING
        pairs = [(a[p][s], b[p][s]) for p in a for s in sorted(a[p])]
    else:
        pairing = PROBLEM_PAIRING
        pairs = [(_rate(a[p]) >= 0.5, _rate(b[p]) >= 0.5) for p in a]
    n_b = sum(x and not y for x, y in pairs)
    n_c = sum(y and not x for x, y in pairs)
    deltas = [_rate(b[p]) - _rate(a[p]) for p in a]
    sigma, note = _effect(run_b.solved - run_a.solved, run_a, run_b)
    return BenchmarkComparison(
        benchmark=name,
        run_a=run_a,
        run_b=run_b,
        pairing=pairing,
        pairs=len(pairs),
        b=n_b,
        c=n_c,
        p_value=mcnemar_exact(n_b, n_c),
        delta_ci=bootstrap_interval(deltas, resamples=resamples, seed=seed),
        effect_sigma=sigma,
        effect_note=note,
    )


def _effect(delta: float, run_a: Pass1, run_b: Pass1) -> tuple[float | None, str]:
    """The study's effect size Δ / √(SD_A² + SD_B²); None, with the reason, when undefined."""
    for label, run in (("A", run_a), ("B", run_b)):
        if run.solved_sd is None:
            return None, (
                f"σ undefined: run {label} has {run.samples} complete sample(s); "
                "an SD over samples needs at least 2"
            )
    assert run_a.solved_sd is not None and run_b.solved_sd is not None
    spread = math.hypot(run_a.solved_sd, run_b.solved_sd)
    if spread == 0:
        return None, "σ undefined: problems solved did not vary over samples in either run (both SDs are 0)"
    return delta / spread, (
        f"σ = Δ / √(SD_A² + SD_B²), SD_A = {run_a.solved_sd:.2f}, SD_B = {run_b.solved_sd:.2f} "
        "problems over sample indices"
    )


# ----------------------------------------------------------------------------- text


def _signed(value: float, digits: int) -> str:
    return f"{value:+.{digits}f}"


def _sd_text(sd: float | None, digits: int) -> str:
    return f"{sd:.{digits}f}" if sd is not None else "n/a"


def render_pass_stats(
    records: Iterable[Record], *, resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED
) -> str:
    """The pass@k table and pass@1 mean ± SD over samples with its bootstrap interval."""
    records = list(records)
    pass_k = pass_at_k_table(records)
    summary = pass1_summary(records, resamples=resamples, seed=seed)
    k_max = max(len(ks) for ks in pass_k.values())
    rows = [
        [name, summary[name].problems, len(ks)] + [f"{ks[k]:.3f}" if k in ks else "" for k in range(1, k_max + 1)]
        for name, ks in pass_k.items()
    ]
    heads = ["benchmark", "problems", "samples", *(f"pass@{k}" for k in range(1, k_max + 1))]
    parts = ["pass@k (unbiased estimator, Chen et al. 2021; k up to the fewest samples of a problem)",
             tabulate(rows, headers=heads, disable_numparse=True)]
    rows = []
    for s in summary.values():
        rows.append([
            s.benchmark, s.problems, s.samples,
            f"{s.mean:.3f} ± {_sd_text(s.sd, 3)}",
            f"{s.solved:.2f} ± {_sd_text(s.solved_sd, 2)}",
            f"[{s.ci[0]:.3f}, {s.ci[1]:.3f}]",
        ])
    heads = ["benchmark", "problems", "samples", "pass@1 mean ± SD", "solved mean ± SD",
             f"{CONFIDENCE:.0%} bootstrap CI"]
    parts += ["", f"pass@1 over sample indices (SD over samples; n/a below 2 samples; bootstrap: "
              f"{resamples} resamples of problems, seed {seed})", tabulate(rows, headers=heads, disable_numparse=True)]
    return "\n".join(parts)


def render_comparison(comparison: Comparison) -> str:
    """One row per benchmark, then how McNemar paired and how σ was computed (or why not)."""
    rows, notes = [], list(comparison.notes)
    for r in comparison.benchmarks:
        rows.append([
            r.benchmark, r.problems, f"{r.run_a.samples}/{r.run_b.samples}",
            f"{r.run_a.solved:.2f}", f"{r.run_b.solved:.2f}", _signed(r.delta, 2), _signed(r.delta_pass1, 3),
            f"[{_signed(r.delta_ci[0], 3)}, {_signed(r.delta_ci[1], 3)}]",
            r.b, r.c, f"{r.p_value:.4g}",
            f"{r.effect_sigma:+.2f}" if r.effect_sigma is not None else "n/a",
        ])
        if r.pairing == SAMPLE_PAIRING:
            how = f"{r.pairs} (problem, sample) pairs"
            if r.pairs > r.problems:
                how += "; one problem's samples are not independent, so p is optimistic"
        else:
            how = f"{r.pairs} problems, solved when pass rate >= 0.5 (the runs' samples differ)"
        notes.append(f"[{r.benchmark}] McNemar {r.pairing}: {how}")
        notes.append(f"[{r.benchmark}] {r.effect_note}")
    heads = ["benchmark", "problems", "samples A/B", "solved A", "solved B", "Δ solved", "Δ pass@1",
             f"{CONFIDENCE:.0%} CI Δ pass@1", "b", "c", "McNemar p", "σ effect"]
    legend = ("Δ = B − A; solved = problems solved, mean over samples; b: A passed, B failed; "
              "c: A failed, B passed; CI: paired bootstrap over problems")
    return "\n".join([tabulate(rows, headers=heads, disable_numparse=True), "", legend, *notes])
