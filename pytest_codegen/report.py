"""Tables computed from result records; the terminal reporter and the CLI both print these."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from typing import TYPE_CHECKING

from tabulate import tabulate

from .outcome import CRASHED, ERROR, MEMORY, NO_CODE, PASSED, TIMEOUT, printable_name
from .stats import pass_at_1

if TYPE_CHECKING:
    from .record import Record

# Non-exception classes are listed after the exception types, in this order.
_TRAILING = (TIMEOUT, MEMORY, CRASHED, NO_CODE, ERROR)


def by_benchmark(records: Iterable[Record]) -> dict[str, list[Record]]:
    grouped: dict[str, list[Record]] = defaultdict(list)
    for record in records:
        grouped[record.benchmark].append(record)
    return dict(sorted(grouped.items()))


def outcome_table(records: Iterable[Record]) -> str:
    """Per benchmark: items, passed, pass@1 and how many items fell in each outcome class."""
    grouped = by_benchmark(records)
    scores = pass_at_1(r for rows in grouped.values() for r in rows)
    # Passes counted from the `passed` flag only; the other items by their class (one that
    # claims "passed" without the flag is a failure of unknown class).
    counts = {
        name: Counter(_failure_class(r) for r in rows if not r.passed) for name, rows in grouped.items()
    }
    classes = sorted({c for counter in counts.values() for c in counter} - {*_TRAILING})
    classes += [c for c in _TRAILING if any(c in counter for counter in counts.values())]
    rows = []
    for name, rows_of_benchmark in grouped.items():
        counter = counts[name]
        passed = sum(r.passed for r in rows_of_benchmark)
        rows.append(
            [name, len(rows_of_benchmark), passed, f"{scores[name]:.3f}"]
            + [counter[c] for c in classes]
        )
    return tabulate(rows, headers=["benchmark", "items", "passed", "pass@1", *classes], disable_numparse=True)


def _failure_class(record: Record) -> str:
    name = printable_name(record.outcome_class)
    return "unknown" if name == PASSED else name


def _refined(records: list[Record]) -> list[Record]:
    return [r for r in records if len(r.round_outcomes) > 1 or r.genome.get("stages")]


def transition_table(records: Iterable[Record]) -> str:
    """First attempt's outcome class against the final one, and the fix rate per class."""
    rows = []
    first_classes: dict[str, list[Record]] = defaultdict(list)
    for record in records:
        first_classes[record.verdicts[0]].append(record)
    for first, group in sorted(first_classes.items(), key=lambda kv: (kv[0] == PASSED, kv[0])):
        finals = Counter(PASSED if r.passed else _failure_class(r) for r in group)
        fixed = finals[PASSED] if first != PASSED else 0
        rate = f"{fixed / len(group):.2f}" if first != PASSED else "-"
        spread = ", ".join(f"{name}: {n}" for name, n in sorted(finals.items()))
        rows.append([first, len(group), fixed, rate, spread])
    headers = ["first attempt", "items", "fixed", "fix rate", "final outcomes"]
    return tabulate(rows, headers=headers, disable_numparse=True)


def _outcome_after(record: Record, round_index: int) -> str:
    """A pipeline that stopped early keeps its last program for the later rounds."""
    outcomes = record.verdicts
    return outcomes[min(round_index, len(outcomes) - 1)]


def depth(records: Iterable[Record]) -> int:
    """Program rounds of the longest item (the first attempt included)."""
    return max(len(r.verdicts) for r in records)


def solved_after_round_table(records: list[Record]) -> str:
    """Problems solved with the program as of each round: the study's early-stopping table."""
    rounds = depth(records)
    rows = []
    for k in range(rounds):
        solved = sum(_outcome_after(r, k) == PASSED for r in records)
        rows.append([k, solved, f"{solved / len(records):.3f}"])
    return tabulate(rows, headers=["after round", "solved", "pass@1"], disable_numparse=True)


def net_effect_table(records: list[Record]) -> str:
    """Fixes minus regressions per round: only meaningful when every round ran."""
    rows = []
    for k in range(1, depth(records)):
        before = [_outcome_after(r, k - 1) == PASSED for r in records]
        after = [_outcome_after(r, k) == PASSED for r in records]
        fixes = sum(a and not b for a, b in zip(after, before))
        regressions = sum(b and not a for a, b in zip(after, before))
        rows.append([k, fixes, regressions, fixes - regressions])
    return tabulate(rows, headers=["round", "fixes", "regressions", "net"], disable_numparse=True)


def render_tables(records: Iterable[Record]) -> str:
    records = list(records)
    parts = [outcome_table(records)]
    for name, group in by_benchmark(records).items():
        refined = _refined(group)
        if not refined:
            continue
        parts.append(f"\n[{name}] error-type transitions (first attempt → final)\n"
                     + transition_table(refined))
        parts.append(f"\n[{name}] problems solved after each round\n"
                     + solved_after_round_table(refined))
        if any(r.early_stop is False for r in refined):
            broken = sum(r.verdicts[0] == PASSED and r.outcome_class != PASSED for r in refined)
            parts.append(f"\n[{name}] net effect per round (no early stopping)\n"
                         + net_effect_table(refined)
                         + f"\nfirst-round passes broken by a later round: {broken}")
    return "\n".join(parts)
