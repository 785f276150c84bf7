"""HumanEval and MBPP become Problems with per-test granularity and the right visible tests."""

import hashlib
import json

import pytest

from pytest_codegen.datasets import humaneval, mbpp
from pytest_codegen.problems import Problem, TestCase, prompt_preamble


def test_humaneval_has_164_problems_with_split_checks():
    problems = humaneval.load_problems()
    assert len(problems) == 164
    first = problems[0]
    assert first.id == "HumanEval/0" and first.entry_point == "has_close_elements"
    assert [t.name for t in first.scoring_tests] == [f"check[{i}]" for i in range(7)]
    assert first.scoring_tests[0].source.startswith("assert candidate([1.0, 2.0, 3.9")
    # docstring examples are visible, not scored (HumanEval does not score them)
    assert [t.source for t in first.visible_tests] == [
        "assert has_close_elements([1.0, 2.0, 3.0], 0.5) == False",
        "assert has_close_elements([1.0, 2.8, 3.0, 4.0, 5.0, 2.0], 0.3) == True",
    ]
    assert not any(t.scoring for t in first.visible_tests)


def test_computing_check_is_kept_as_one_test_with_its_imports():
    problem = humaneval.load_problems()[32]
    (test,) = problem.scoring_tests
    assert test.source.startswith("import math\nimport random\nrng = random.Random(42)")
    assert "assert math.fabs(poly(coeffs, solution)) < 1e-4" in test.source


def test_asserts_before_a_loop_are_split_and_the_loop_is_one_test():
    problem = humaneval.load_problems()[44]
    sources = [t.source for t in problem.scoring_tests]
    assert len(sources) == 7
    assert sources[-1].startswith("for x in range(2, 8):")


def test_noise_statements_are_dropped():
    # HumanEval/129's check starts with a bare `print`; /151 has `assert True, "..."` lines.
    assert len(humaneval.load_problems()[129].scoring_tests) == 11
    assert not any(t.source.startswith("assert True") for t in humaneval.load_problems()[151].tests)


def test_preamble_keeps_imports_and_helpers_but_not_the_entry_point():
    problem = humaneval.load_problems()[32]
    preamble = prompt_preamble(problem.prompt, problem.entry_point)
    assert preamble.startswith("import math")
    assert "def poly(" in preamble and "def find_zero" not in preamble
    assembled = problem.assemble("def find_zero(xs):\n    return 0.0\n")
    assert assembled.index("import math") < assembled.index("def poly(") < assembled.index("def find_zero")


def test_assemble_adds_missing_typing_import():
    problem = humaneval.load_problems()[0]
    program = problem.assemble("def has_close_elements(numbers: List[float], t: float) -> bool:\n    return False\n")
    assert program.startswith("from typing import List")


def test_mbpp_loads_427_problems_from_the_shared_copy(mbpp_path):
    problems = mbpp.load_problems(mbpp_path)
    assert len(problems) == 427
    first = problems[0]
    assert first.id == "Mbpp/2" and first.entry_point == "similar_elements"
    assert [t.visible for t in first.tests] == [True, False, False]
    assert all(t.scoring for t in first.tests)
    assert all(p.entry_point for p in problems)


def test_mbpp_test_imports_become_setup(mbpp_path):
    problems = {p.id: p for p in mbpp.load_problems(mbpp_path)}
    with_imports = [p for p in problems.values() if p.test_setup]
    assert len(with_imports) == 14
    assert all("import" in p.test_setup for p in with_imports)
    # Mbpp/596's tests read `sys`, which only the solution imports: the setup imports it, so a
    # candidate's own `sys` cannot answer for the test
    assert problems["Mbpp/596"].test_setup == "import sys"


def test_mbpp_setup_imports_the_modules_only_the_program_imported():
    record = {"task_id": 1, "prompt": "p", "code": "import math\ndef f(x): return x",
              "test_imports": ["import re"],
              "test_list": ["assert f(math.pi) == math.pi and re.match('a', 'a') and helper(1)"]}
    assert mbpp.to_problem(record).test_setup == "import re\nimport math"


def test_mbpp_env_var_is_used(monkeypatch, mbpp_path):
    monkeypatch.setenv(mbpp.ENV_VAR, str(mbpp_path))
    assert mbpp.data_path() == mbpp_path


def test_mbpp_missing_file_names_the_option(tmp_path):
    with pytest.raises(mbpp.MBPPDataError, match="--mbpp-data points to"):
        mbpp.data_path(tmp_path / "nope.json")


def test_mbpp_wrong_checksum_is_refused(tmp_path, mbpp_path):
    records = json.loads(mbpp_path.read_text())
    tampered = tmp_path / "tampered.json"
    tampered.write_text(json.dumps(records[:-1]))
    with pytest.raises(mbpp.MBPPDataError, match="not the official sanitized MBPP"):
        mbpp.load_problems(tampered)


def test_mbpp_download_failure_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.delenv(mbpp.ENV_VAR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(mbpp, "URL", "http://127.0.0.1:9/sanitized-mbpp.json")  # nothing listens
    with pytest.raises(mbpp.MBPPDataError, match="--mbpp-data PATH or set CODEGEN_MBPP_DATA"):
        mbpp.data_path()


def test_mbpp_download_is_verified_and_saved(tmp_path, monkeypatch, mbpp_path):
    """The real download path, served from a local HTTP server with the official bytes."""
    import http.server
    import threading

    payload = mbpp_path.read_bytes()

    class Handler(http.server.BaseHTTPRequestHandler):
        body = payload

        def do_GET(self):
            self.send_response(200)
            self.end_headers()
            self.wfile.write(self.body)

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.delenv(mbpp.ENV_VAR, raising=False)
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
        monkeypatch.setattr(mbpp, "URL", f"http://127.0.0.1:{server.server_port}/x.json")
        Handler.body = payload[:-10]
        with pytest.raises(mbpp.MBPPDataError, match="it was not saved"):
            mbpp.data_path()
        assert not (tmp_path / "pytest-codegen" / "sanitized-mbpp.json").exists()
        Handler.body = payload
        path = mbpp.data_path()
        assert hashlib.sha256(path.read_bytes()).hexdigest() == mbpp.SHA256
    finally:
        server.shutdown()


def test_problem_id_is_the_pytest_id():
    problem = Problem("toy/1", "toy", "p", "f", (TestCase("t", "assert f()"),), "def f(): return 1")
    assert str(problem) == "toy/1"
