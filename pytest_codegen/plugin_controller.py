"""The controller's side of a run (the only process without xdist): it aggregates the records
that item reports carry, writes the results file, applies the pass@1 gate, adds JUnit suite
properties and prints the outcome tables. With xdist it also hands every worker, a replacement
for a crashed one too, the resume decisions made once at the start."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from .plugin_state import CodegenState
    from .record import Record


class CodegenController:
    """Registered on the controller only (or the single process without xdist): aggregates the
    records that reports carry, writes the results file, the tables and JUnit suite properties."""

    def __init__(self, state: CodegenState) -> None:
        self.state = state
        self.gate: dict[str, tuple[float, bool]] = {}
        self.other_failures = 0  # failed tests that are not benchmark items
        self.crashed: set[str] = set()  # items rescheduled after their worker died

    @pytest.hookimpl(optionalhook=True)
    def pytest_configure_node(self, node) -> None:
        """xdist: every worker, a replacement for a crashed one too, is handed the items
        resumed from the results file as decided once, here, at the start."""
        node.workerinput["codegen_done"] = sorted(self.state.done)
        if self.state.service is not None:  # the model server's URL (started now, once)
            self.state.service.hand_to_worker(node.workerinput)

    @pytest.hookimpl(optionalhook=True)
    def pytest_handlecrashitem(self, crashitem: str, report, sched) -> None:
        """xdist: the item a worker died running runs again, once, on another worker, so
        the tables and the results file still count it."""
        if crashitem in self.crashed:
            return
        try:
            sched.mark_test_pending(crashitem)
        except (NotImplementedError, AttributeError, ValueError):
            return
        self.crashed.add(crashitem)
        report.outcome = "rerun"

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node, error) -> None:
        """xdist: the resumed items a worker's collection selected."""
        self.state.resumed.update(getattr(node, "workeroutput", {}).get("codegen_resumed", ()))

    def all_records(self) -> list[Record]:
        """This session's records (an item run again counts once, as it ended) and the resumed
        ones it selected: what the tables count."""
        resumed = [r for n in sorted(self.state.resumed) if (r := self.state.done.get(n)) is not None]
        return resumed + list({r.nodeid: r for r in self.state.records}.values())

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        from .record import Record

        line = getattr(report, "codegen", None)
        if line is not None and report.when == "call":
            self.state.records.append(Record.from_dict(json.loads(line)))
            if self.state.writer is not None:
                self.state.writer.write(line)
            return
        error = getattr(report, "codegen_error", None)
        if error is not None:
            # Counted in the tables and the gate, but not written: a resumed run retries it.
            self.state.records.append(Record.from_dict(error))
        elif report.failed:
            self.other_failures += 1

    @pytest.hookimpl(tryfirst=True)  # before junitxml writes its file
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        self._apply_gate(session)
        self._junit_suite_properties(session)
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None and self.all_records():  # a benchmark run: many failures to print next
            from ._terminal_index import index_teardown_reports

            index_teardown_reports(reporter)

    def _apply_gate(self, session: pytest.Session) -> None:
        bar = session.config.getoption("codegen_min_pass")
        if bar is None or session.exitstatus not in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED):
            return
        from .stats import pass_at_1

        scores = pass_at_1(self.all_records())
        self.gate = {name: (value, value >= bar) for name, value in scores.items()}
        held = bool(scores) and all(ok for _, ok in self.gate.values())
        if self.other_failures:
            held = False  # the gate speaks for benchmark items only
        session.exitstatus = pytest.ExitCode.OK if held else pytest.ExitCode.TESTS_FAILED

    def _junit_suite_properties(self, session: pytest.Session) -> None:
        from _pytest.junitxml import xml_key

        xml = session.config.stash.get(xml_key, None)
        records = self.all_records()
        if xml is None or not records:
            return
        from .stats import pass_at_1

        s = self.state.settings
        xml.add_global_property("pipeline", s.pipeline)
        if any(r.feedback is not None for r in records):  # pipelines that show tests
            xml.add_global_property("feedback", s.feedback)
        for benchmark, value in pass_at_1(records).items():
            xml.add_global_property(f"pass@1[{benchmark}]", f"{value:.4f}")

    def pytest_terminal_summary(self, terminalreporter) -> None:
        records = self.all_records()
        if not records:
            return
        from .report import render_tables

        terminalreporter.write_sep("=", "codegen outcomes")
        terminalreporter.write_line(render_tables(records))
        if self.state.resumed:
            terminalreporter.write_line(f"({len(self.state.resumed)} items resumed from the results file)")
        for line in isolation_lines(r.sandbox["isolation"] for r in self.state.records if r.sandbox):
            terminalreporter.write_line(f"sandbox isolation: {line}")
        if self.state.writer is not None:
            terminalreporter.write_line(f"results: {os.fspath(self.state.writer.path)}")
        bar = terminalreporter.config.getoption("codegen_min_pass")
        for name, (value, ok) in self.gate.items():
            verdict = "holds" if ok else "FAILS"
            terminalreporter.write_line(
                f"gate: {name} pass@1 {value:.3f} {'>=' if ok else '<'} {bar:g}: {verdict}",
                green=ok, red=not ok,
            )


def isolation_lines(lines: Iterable[str]) -> list[str]:
    """The sandboxes' isolation lines, once each: lines that differ only in the uid each
    worker's sandbox runs as are one line naming every uid."""
    uids: dict[tuple[str, str], set[int]] = {}
    for line in lines:
        found = _UID.search(line)
        if found is None:
            uids.setdefault((line, ""), set())
        else:
            uids.setdefault((line[:found.start(1)], line[found.end(1):]), set()).add(int(found.group(1)))
    return sorted(head + "/".join(map(str, sorted(numbers))) + tail for (head, tail), numbers in uids.items())


_UID = re.compile(r"\buid (\d+)")
