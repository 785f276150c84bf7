"""PNG figures of a run: error taxonomy, problems solved per round, net effect per round.

matplotlib is the optional extra ``plot``. It is imported only when a figure is drawn, and
only through its object-oriented API on an Agg canvas, so drawing never switches the backend
of a pyplot session that happens to import this module. Each benchmark gets its own panel.
The round semantics are report.py's (`_outcome_after`): an item that stopped early keeps its
last program for the later rounds, so the figures agree with the report's tables.
"""

from __future__ import annotations

import textwrap
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .outcome import PASSED
from .report import _TRAILING, _outcome_after, by_benchmark, depth

if TYPE_CHECKING:
    from .record import Record

FIGURES = ("error_taxonomy.png", "early_stopping.png", "net_effect.png")
INSTALL_HINT = "pip install 'pytest-codegen[plot]'"


class PlotUnavailable(RuntimeError):
    """matplotlib is not installed."""


def write_figures(records: Iterable[Record], out_dir: str | Path) -> list[Path]:
    """Write the three figures into `out_dir` (created if needed); their paths, in FIGURES order."""
    grouped = by_benchmark(records)
    if not grouped:
        raise ValueError("no records to plot")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    drawers = (_error_taxonomy, _early_stopping, _net_effect)
    paths = []
    for filename, draw in zip(FIGURES, drawers):
        figure, axes = _figure(len(grouped))
        draw(figure, axes, grouped)
        path = out / filename
        figure.savefig(path, dpi=120)
        paths.append(path)
    return paths


def _figure(panels: int) -> tuple[Any, list[Any]]:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise PlotUnavailable(f"plots need matplotlib: {INSTALL_HINT}") from exc
    figure = Figure(figsize=(6.5 * panels, 4.8), layout="constrained")
    FigureCanvasAgg(figure)
    return figure, list(figure.subplots(1, panels, squeeze=False)[0])


def _suptitle(figure: Any, panels: int, text: str) -> None:
    # Wrapped to the figure's width: a clipped title would hide what the figure shows.
    figure.suptitle(textwrap.fill(text, 62 * panels))


def _integer_counts(ax: Any) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.yaxis.set_major_locator(MaxNLocator(integer=True))


def _samples(records: list[Record]) -> float:
    """Items per problem: counts divided by this are problems solved, mean over samples."""
    return len(records) / len({r.problem_id for r in records})


def _class_order(classes: set[str]) -> list[str]:
    # report.outcome_table's order: exception types, then the non-exception classes, passed last.
    return sorted(classes - {PASSED, *_TRAILING}) + [c for c in (*_TRAILING, PASSED) if c in classes]


def _error_taxonomy(figure: Any, axes: list[Any], grouped: dict[str, list[Record]]) -> None:
    _suptitle(figure, len(axes), "Error taxonomy: items per outcome class, as first attempt and as final outcome")
    for ax, (name, records) in zip(axes, grouped.items()):
        first = Counter(_outcome_after(r, 0) for r in records)
        final = Counter(r.outcome_class for r in records)
        classes = _class_order(set(first) | set(final))
        xs = range(len(classes))
        ax.bar([x - 0.2 for x in xs], [first[c] for c in classes], width=0.4, label="first attempt")
        ax.bar([x + 0.2 for x in xs], [final[c] for c in classes], width=0.4, label="final outcome")
        ax.set_xticks(list(xs), classes, rotation=30, ha="right")
        ax.set_ylabel("items")
        _integer_counts(ax)
        ax.set_title(f"{name}: {len(records)} items")
        ax.legend()


def _early_stopping(figure: Any, axes: list[Any], grouped: dict[str, list[Record]]) -> None:
    _suptitle(figure, len(axes), "Early stopping: problems solved with the program as of each round "
              "(mean over samples; an item that stopped early keeps its last program)")
    for ax, (name, records) in zip(axes, grouped.items()):
        rounds = range(depth(records))
        per_problem = _samples(records)
        solved = [sum(_outcome_after(r, k) == PASSED for r in records) / per_problem for k in rounds]
        ax.plot(list(rounds), solved, marker="o")
        for k, value in zip(rounds, solved):
            ax.annotate(f"{value:.1f}", (k, value), textcoords="offset points", xytext=(0, 6), ha="center")
        problems = len({r.problem_id for r in records})
        ax.set_ylim(0, problems * 1.08)
        ax.set_xlim(-0.5, len(rounds) - 0.5)
        ax.set_xticks(list(rounds), ["first attempt" if k == 0 else f"round {k}" for k in rounds])
        ax.set_ylabel("problems solved")
        ax.set_title(f"{name}: {problems} problems × {per_problem:g} samples")


def _early_stop_state(records: list[Record]) -> str:
    flags = {r.early_stop for r in records}
    if flags == {False}:
        return "no early stopping: every round ran on every item"
    if True in flags:
        return "early stopping ON: passing items stopped, so no regression can show; not a round's effect"
    return "early stopping not recorded"


def _net_effect(figure: Any, axes: list[Any], grouped: dict[str, list[Record]]) -> None:
    states = {_early_stop_state(records) for records in grouped.values()}
    shared = states.pop() if len(states) == 1 else None
    _suptitle(figure, len(axes), "Net effect per refinement round: fixes, regressions and net (items)"
              + (f" — {shared}" if shared else ""))
    for ax, (name, records) in zip(axes, grouped.items()):
        rounds = list(range(1, depth(records)))
        fixes, regressions = [], []
        for k in rounds:
            before = [_outcome_after(r, k - 1) == PASSED for r in records]
            after = [_outcome_after(r, k) == PASSED for r in records]
            fixes.append(sum(a and not b for a, b in zip(after, before)))
            regressions.append(sum(b and not a for a, b in zip(after, before)))
        title = f"{name}: {len(records)} items" if shared else f"{name}: {_early_stop_state(records)}"
        ax.set_title(textwrap.fill(title, 60), fontsize="medium")
        if not rounds:
            ax.text(0.5, 0.5, "no refinement rounds in this run", ha="center", va="center",
                    transform=ax.transAxes)
            ax.set_axis_off()
            continue
        ax.bar([k - 0.2 for k in rounds], fixes, width=0.4, color="tab:green", label="fixes")
        ax.bar([k + 0.2 for k in rounds], [-r for r in regressions], width=0.4, color="tab:red",
               label="regressions (drawn negative)")
        ax.plot(rounds, [f - r for f, r in zip(fixes, regressions)], marker="o", color="black", label="net")
        ax.axhline(0, color="grey", linewidth=0.8)
        # Room on both sides of zero even when a round had no fix or no regression at all.
        top, bottom = max(max(fixes), 1), max(max(regressions), 1)
        pad = 0.1 * (top + bottom)
        ax.set_ylim(-bottom - pad, top + pad)
        ax.set_xticks(rounds, [f"round {k}" for k in rounds])
        ax.set_xlim(0.4, len(rounds) + 0.6)
        ax.set_ylabel("items")
        _integer_counts(ax)
        ax.legend()
