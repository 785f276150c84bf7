"""The search subset and the held-out subset of a benchmark's problems (disjoint).

Without difficulty information both are a seeded random sample. With an earlier results file
(`--difficulty-from`), each subset is stratified by the per-problem pass rate in that file:
the candidates are shuffled (so ties fall randomly), stably sorted by pass rate, cut into as
many contiguous strata of near-equal size as problems are wanted, and one problem is drawn at
random from each stratum. The search subset is drawn first, then the held-out subset the same
way from what is left, so both span the same difficulties. Problems the file does not rate are
used only when the rated ones run out (drawn at random, after the rated ones).
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from ..problems import Problem
from .errors import EvolveError


class SubsetError(EvolveError):
    """Not enough problems, or an unusable difficulty file."""


def load_benchmark(name: str, mbpp_data: str | None = None) -> tuple[Problem, ...]:
    if name == "humaneval":
        from ..datasets.humaneval import load_problems

        return load_problems()
    if name == "mbpp":
        from ..datasets.mbpp import load_problems

        return load_problems(mbpp_data)
    raise SubsetError(f"unknown benchmark {name!r}: choose humaneval or mbpp")


def difficulty_rates(path: str | Path, benchmark: str | None = None) -> dict[str, float]:
    """problem id -> pass rate over that file's records (of `benchmark`, when given)."""
    from ..results import ResultsFileError, read_run

    if not Path(path).is_file():
        raise SubsetError(f"{path}: no such results file")
    try:
        records = read_run([path])
    except ResultsFileError as error:
        raise SubsetError(f"{path}: {error}") from None
    tally: dict[str, list[bool]] = defaultdict(list)
    for record in records:
        if benchmark is None or record.benchmark == benchmark:
            tally[record.problem_id].append(record.passed)
    if not tally:
        raise SubsetError(f"{path}: no records of {benchmark or 'any benchmark'} with a verdict")
    return {pid: sum(passed) / len(passed) for pid, passed in tally.items()}


def stratified_sample(
    candidates: Sequence[Problem], rates: dict[str, float], n: int, rng: random.Random
) -> list[Problem]:
    """n problems, one per difficulty stratum (see the module docstring)."""
    pool = list(candidates)
    rng.shuffle(pool)
    pool.sort(key=lambda p: rates[p.id])
    chosen = []
    for k in range(n):
        stratum = pool[k * len(pool) // n:(k + 1) * len(pool) // n]
        chosen.append(rng.choice(stratum))
    return chosen


def select_subsets(
    problems: Sequence[Problem],
    n_search: int,
    n_holdout: int,
    rng: random.Random,
    rates: dict[str, float] | None = None,
) -> tuple[list[Problem], list[Problem]]:
    """(search subset, held-out subset), disjoint, each in the benchmark's order."""
    if n_search < 1 or n_holdout < 1:
        raise SubsetError("the search and held-out subsets need at least one problem each")
    if n_search + n_holdout > len(problems):
        raise SubsetError(
            f"{n_search} search + {n_holdout} held-out problems: the benchmark has only {len(problems)}"
        )
    order = {p.id: i for i, p in enumerate(problems)}
    if rates is None:
        drawn = rng.sample(list(problems), n_search + n_holdout)
        search, holdout = drawn[:n_search], drawn[n_search:]
    else:
        rated = [p for p in problems if p.id in rates]
        unrated = [p for p in problems if p.id not in rates]
        rng.shuffle(unrated)

        def take(n: int) -> list[Problem]:
            from_rated = min(n, len(rated))
            chosen = stratified_sample(rated, rates, from_rated, rng) if from_rated else []
            for problem in chosen:
                rated.remove(problem)
            chosen += [unrated.pop() for _ in range(n - from_rated)]
            return chosen

        search = take(n_search)
        holdout = take(n_holdout)
    return sorted(search, key=lambda p: order[p.id]), sorted(holdout, key=lambda p: order[p.id])
