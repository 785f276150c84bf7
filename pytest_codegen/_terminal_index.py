"""pytest's failure summary without its quadratic lookup.

For each failure it prints, `TerminalReporter.summary_failures` looks for the item's teardown
report by scanning every report without a category, which is every passed setup and teardown
of the session (pytest-dev/pytest#13360). A benchmark run fails hundreds of items: 815 failures
among 984 items make 1.6 million comparisons, 0.4-0.9 s after the last item on this project's
2-core machine. `index_teardown_reports` gives one reporter the same lookup through an index,
built once for the reports the summary sees; the output is unchanged.
"""

from __future__ import annotations

import typing


def index_teardown_reports(reporter: typing.Any) -> bool:
    """Replace `reporter._get_teardown_reports` (pytest 8 and 9) by an indexed equivalent;
    False, changing nothing, where the reporter has no such method."""
    if not callable(getattr(reporter, "_get_teardown_reports", None)) or not callable(
            getattr(reporter, "getreports", None)):
        return False
    index: dict[typing.Any, list[typing.Any]] = {}
    indexed_count = -1  # len(stats[""]) when the index was built

    def get_teardown_reports(node_id: typing.Any) -> list[typing.Any]:
        nonlocal index, indexed_count
        count = len(reporter.stats.get("", ()))
        if count != indexed_count:
            index = {}
            for report in reporter.getreports(""):
                if report.when == "teardown":
                    index.setdefault(_node_id(report), []).append(report)
            indexed_count = count
        return list(index.get(node_id, ()))

    reporter._get_teardown_reports = get_teardown_reports
    return True


def _node_id(report: typing.Any) -> typing.Any:
    """What pytest compares the looked-for id with: `report.id` (a NodeId) where reports have
    one (pytest 9.1 on), else `report.nodeid`."""
    return report.id if hasattr(type(report), "id") else report.nodeid
