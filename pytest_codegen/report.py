"""Tables computed from result records; the terminal reporter and the CLI both print these."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

from tabulate import tabulate

from .outcome import CRASHED, ERROR, MEMORY, NO_CODE, PASSED, TIMEOUT, printable_name

# Non-exception classes are listed after the exception types, in this order.
_TRAILING = (TIMEOUT, MEMORY, CRASHED, NO_CODE, ERROR)


def by_benchmark(records: Iterable[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    grouped: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for record in records:
        grouped[record["benchmark"]].append(record)
    return dict(sorted(grouped.items()))


def outcome_table(records: Iterable[Mapping[str, Any]]) -> str:
    """Per benchmark: items, passed, pass@1 and how many items fell in each outcome class."""
    grouped = by_benchmark(records)
    # Passes counted from the `passed` flag only; the other items by their class (one that
    # claims "passed" without the flag is a failure of unknown class).
    counts = {
        name: Counter(_failure_class(r) for r in rows if not _passed(r)) for name, rows in grouped.items()
    }
    classes = sorted({c for counter in counts.values() for c in counter} - {*_TRAILING})
    classes += [c for c in _TRAILING if any(c in counter for counter in counts.values())]
    rows = []
    for name, rows_of_benchmark in grouped.items():
        counter = counts[name]
        passed = sum(_passed(r) for r in rows_of_benchmark)
        rows.append(
            [name, len(rows_of_benchmark), passed, f"{_pass_at_1(rows_of_benchmark):.3f}"]
            + [counter[c] for c in classes]
        )
    return tabulate(rows, headers=["benchmark", "items", "passed", "pass@1", *classes], disable_numparse=True)


def _passed(record: Mapping[str, Any]) -> bool:
    return record.get("passed") is True


def _failure_class(record: Mapping[str, Any]) -> str:
    name = printable_name(record.get("outcome_class"))
    return "unknown" if name == PASSED else name


def _pass_at_1(records: list[Mapping[str, Any]]) -> float:
    """The mean over problems of each problem's fraction of passing samples (the unbiased
    pass@1); equal to passed / items when every problem has the same number of samples."""
    per_problem: dict[str, list[bool]] = defaultdict(list)
    for record in records:
        per_problem[record["problem_id"]].append(_passed(record))
    return sum(sum(v) / len(v) for v in per_problem.values()) / len(per_problem)


def pass_at_1(records: Iterable[Mapping[str, Any]]) -> dict[str, float]:
    return {name: _pass_at_1(rows) for name, rows in by_benchmark(records).items()}


def round_chain(record: Mapping[str, Any]) -> str:
    """`NameError → AssertionError → passed`: the scoring outcome of each program round."""
    return " → ".join(record.get("round_outcomes") or [record["outcome_class"]])


def _refined(records: list[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return [r for r in records if len(r.get("round_outcomes") or ()) > 1 or r.get("genome", {}).get("stages")]


def transition_table(records: Iterable[Mapping[str, Any]]) -> str:
    """First attempt's outcome class against the final one, and the fix rate per class."""
    rows = []
    first_classes: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for record in records:
        first_classes[(record.get("round_outcomes") or [record["outcome_class"]])[0]].append(record)
    for first, group in sorted(first_classes.items(), key=lambda kv: (kv[0] == PASSED, kv[0])):
        finals = Counter(PASSED if _passed(r) else _failure_class(r) for r in group)
        fixed = finals[PASSED] if first != PASSED else 0
        rate = f"{fixed / len(group):.2f}" if first != PASSED else "-"
        spread = ", ".join(f"{name}: {n}" for name, n in sorted(finals.items()))
        rows.append([first, len(group), fixed, rate, spread])
    headers = ["first attempt", "items", "fixed", "fix rate", "final outcomes"]
    return tabulate(rows, headers=headers, disable_numparse=True)


def _outcome_after(record: Mapping[str, Any], round_index: int) -> str:
    """A pipeline that stopped early keeps its last program for the later rounds."""
    outcomes = record.get("round_outcomes") or [record["outcome_class"]]
    return outcomes[min(round_index, len(outcomes) - 1)]


def solved_after_round_table(records: list[Mapping[str, Any]]) -> str:
    """Problems solved with the program as of each round: the study's early-stopping table."""
    depth = max(len(r.get("round_outcomes") or [1]) for r in records)
    rows = []
    for k in range(depth):
        solved = sum(_outcome_after(r, k) == PASSED for r in records)
        rows.append([k, solved, f"{solved / len(records):.3f}"])
    return tabulate(rows, headers=["after round", "solved", "pass@1"], disable_numparse=True)


def net_effect_table(records: list[Mapping[str, Any]]) -> str:
    """Fixes minus regressions per round: only meaningful when every round ran."""
    depth = max(len(r.get("round_outcomes") or [1]) for r in records)
    rows = []
    for k in range(1, depth):
        before = [_outcome_after(r, k - 1) == PASSED for r in records]
        after = [_outcome_after(r, k) == PASSED for r in records]
        fixes = sum(a and not b for a, b in zip(after, before))
        regressions = sum(b and not a for a, b in zip(after, before))
        rows.append([k, fixes, regressions, fixes - regressions])
    return tabulate(rows, headers=["round", "fixes", "regressions", "net"], disable_numparse=True)


def render_tables(records: Iterable[Mapping[str, Any]]) -> str:
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
        if any(r.get("early_stop") is False for r in refined):
            broken = sum(
                (r.get("round_outcomes") or ["?"])[0] == PASSED and r["outcome_class"] != PASSED
                for r in refined
            )
            parts.append(f"\n[{name}] net effect per round (no early stopping)\n"
                         + net_effect_table(refined)
                         + f"\nfirst-round passes broken by a later round: {broken}")
    return "\n".join(parts)
