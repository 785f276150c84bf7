"""`pytest-codegen routes`: where the sandbox runs each benchmark's scoring tests."""

from __future__ import annotations

from pytest_codegen import cli


def test_every_humaneval_test_is_checked_by_the_server(capsys):
    assert cli.main(["routes"]) == cli.EXIT_OK
    out = capsys.readouterr().out
    assert "humaneval: 1133 scoring tests of 164 problems" in out
    assert "in the candidate's process       0 tests" in out and "in process:" not in out


def test_every_mbpp_test_is_checked_by_the_server(capsys, mbpp_path):
    """Mbpp/596's tests read `sys`; the setup imports it (see datasets.mbpp), so they too are
    checked by the server (the reasons a test runs in process: tests/test_sandbox_routes.py)."""
    assert cli.main(["routes", "--benchmark", "mbpp", "--mbpp-data", str(mbpp_path)]) == cli.EXIT_OK
    out = capsys.readouterr().out
    assert "checked by the server         1324 tests" in out
    assert "in the candidate's process       0 tests" in out and "in process:" not in out


def test_a_missing_mbpp_file_is_a_usage_error(capsys, tmp_path):
    assert cli.main(["routes", "--benchmark", "mbpp", "--mbpp-data", str(tmp_path / "none.json")]) == cli.EXIT_USAGE
    assert "not a file" in capsys.readouterr().err
