"""Where each test of a run is checked: in the checking process, or in the candidate's.

A sandbox run has two processes: the candidate's, which defines the program and runs nothing
trusted, and the checking process, which never runs candidate code. A *checked* test runs in
the checking process with `candidate` (and the entry point's name) bound to a stub that sends
the arguments to the candidate's process and gets back the result as plain data
(`_sandbox_codec`): the candidate can return a wrong value or raise, but cannot reach the test,
its asserts or the verdict. That takes a test that needs nothing else of the program: every
name it reads is its own, the setup's (which includes the prompt's helpers, see
`datasets.humaneval`), a builtin, or a name an earlier checked test bound.

Every other test runs *in process*, as a flat `exec` would run it, in the candidate's process
(where a candidate that walks frames or finds the harness's objects could forge its result):
tests that read another name of the program, call the candidate only for its side effects,
pass it a function (which cannot cross), use it other than by calling it (`candidate.attr`)
or read names dynamically (`eval`, `globals()`). This module decides that from the sources
alone, before anything runs; `routes` gives each test's route and, for the in-process ones,
why. Imported by name by the sandbox server (see `_sandbox_bootstrap`) and by the package.
"""

from __future__ import annotations

import ast
import builtins
import collections
import functools
import typing
from collections.abc import Iterable, Sequence

CHECKED = "checked"
IN_PROCESS = "in-process"

_BUILTINS = frozenset(dir(builtins))
_DYNAMIC = frozenset({"eval", "exec", "globals", "locals", "vars", "__import__", "compile"})


class Route(typing.NamedTuple):
    path: str  # CHECKED or IN_PROCESS
    reason: str = ""  # why a test runs in process


def routes(tests: Sequence[str], setup: str, entry_point: str | None) -> list[Route]:
    """The route of each test source, in order (tests share one namespace, so a test may use
    what an earlier one bound: in the checking process, if that one was checked)."""
    if not entry_point:
        return [Route(IN_PROCESS, "no entry point to call")] * len(tests)
    stubs = {"candidate", entry_point}
    setup_tree = _parse(setup)
    known = set(_BUILTINS | stubs | _bound(setup_tree))
    setup_functions = _functions(setup_tree)
    out = []
    for source in tests:
        tree = _parse(source)
        if tree is None:  # reported as the test's error wherever it runs
            out.append(Route(CHECKED))
            continue
        reason = _in_process_reason(tree, stubs, known, setup_functions)
        out.append(Route(IN_PROCESS, reason) if reason else Route(CHECKED))
        if not reason:
            known |= _bound(tree)
    return out


class Tally(typing.NamedTuple):
    """Where a benchmark's scoring tests run: tests and problems per route, and why each
    in-process test is one (problem id, test name, reason)."""

    tests: collections.Counter[str]
    problems: collections.Counter[str]  # "every test checked", "some in process", "every test in process"
    in_process: list[tuple[str, str, str]]


def tally(problems: Iterable[typing.Any]) -> Tally:
    """The routes of every scoring test of `problems` (`pytest_codegen.Problem`s)."""
    tests: collections.Counter[str] = collections.Counter()
    kinds: collections.Counter[str] = collections.Counter()
    in_process = []
    for problem in problems:
        scoring = problem.scoring_tests
        found = routes([t.source for t in scoring], problem.test_setup, problem.entry_point)
        tests.update(route.path for route in found)
        checked = sum(route.path == CHECKED for route in found)
        kinds["every test checked" if checked == len(found) else
              "every test in process" if checked == 0 else "some in process"] += 1
        in_process += [(problem.id, t.name, r.reason) for t, r in zip(scoring, found) if r.path != CHECKED]
    return Tally(tests, kinds, in_process)


# A server sees each test's source again for every sample, and analyses it three ways (its
# route, its literal calls, whether those are all its calls): each source is parsed, and its
# nodes listed, once (about 1.1 ms of the 1.7 ms a HumanEval check took on first sight). The
# trees are only read. Few are kept: the server caches each analysis's result by source,
# and a tree is tens of times its source (a test with a 20,000-number literal: about 9 MB).
_TREES_KEPT = 16


@functools.lru_cache(maxsize=_TREES_KEPT)
def _parse(source: str) -> ast.Module | None:
    try:
        return ast.parse(source)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None


class _Index(typing.NamedTuple):
    nodes: tuple[ast.AST, ...]  # in ast.walk's order (contexts left out)
    parents: dict[ast.AST, ast.AST]
    by_type: dict[type, list[ast.AST]]  # each in walk order: an analysis reads only its kinds


# The fields of each node type that may hold nodes: all but `ctx` (Load, Store and Del are
# shared singletons, which no analysis reads: about a third of a test's nodes).
_CHILD_FIELDS: dict[type, tuple[str, ...]] = {}


@functools.lru_cache(maxsize=_TREES_KEPT)
def _index(tree: ast.Module) -> _Index:
    """Every node of `tree` but the contexts, each one's parent, the nodes of each type: one
    traversal (`ast.iter_child_nodes` inlined: twice as fast)."""
    nodes: list[ast.AST] = [tree]
    parents: dict[ast.AST, ast.AST] = {}
    by_type: dict[type, list[ast.AST]] = collections.defaultdict(list)
    for node in nodes:  # the list grows as it goes: breadth first, as ast.walk
        kind = type(node)
        by_type[kind].append(node)
        fields = _CHILD_FIELDS.get(kind)
        if fields is None:
            fields = _CHILD_FIELDS[kind] = tuple(name for name in kind._fields if name != "ctx")
        for name in fields:
            value = getattr(node, name, None)
            if isinstance(value, ast.AST):
                parents[value] = node
                nodes.append(value)
            elif type(value) is list:
                for item in value:
                    if isinstance(item, ast.AST):
                        parents[item] = node
                        nodes.append(item)
    return _Index(tuple(nodes), parents, dict(by_type))


def _of(tree: ast.Module, *types: type) -> list[typing.Any]:
    """The nodes of `tree` of these exact types (each type's in walk order, one after another)."""
    by_type = _index(tree).by_type
    return [node for kind in types for node in by_type.get(kind, ())]


def _in_process_reason(tree: ast.Module, stubs: set[str], known: set[str],
                       setup_functions: frozenset[str]) -> str:
    loaded = {n.id for n in _of(tree, ast.Name) if isinstance(n.ctx, ast.Load)}
    dynamic = sorted(loaded & _DYNAMIC)
    if dynamic:
        return f"reads names dynamically ({', '.join(dynamic)})"
    foreign = sorted(loaded - known - _bound(tree))
    if foreign:
        return f"uses {', '.join(foreign)} from the program"
    functions = stubs | _functions(tree) | setup_functions
    nodes, parents, _ = _index(tree)
    reasons: dict[int, str] = {}  # node id -> why that node needs the test in process
    for node in _of(tree, ast.Lambda, ast.Name):
        parent = parents.get(node)
        if isinstance(node, ast.Lambda) or (
            node.id in functions
            and not (isinstance(parent, ast.Call) and parent.func is node)  # called, not passed
        ):
            reasons.update(dict.fromkeys(map(id, _stub_calls_around(node, parents, stubs)),
                                         "passes the candidate a function"))
    for node in _of(tree, ast.Expr):
        if _calls_stub(node.value, stubs):
            reasons[id(node)] = "calls the candidate only for its side effects"
    for node in _of(tree, ast.Attribute):
        if isinstance(node.value, ast.Name) and node.value.id in stubs:
            reasons[id(node)] = f"reads {node.value.id}.{node.attr}"
    if not reasons:  # (most tests: no walk for the first reason)
        return ""
    return next(reasons[id(node)] for node in nodes if id(node) in reasons)  # the first in walk order


def _stub_calls_around(node: ast.AST, parents: dict[ast.AST, ast.AST], stubs: set[str]) -> list[ast.AST]:
    """The calls of the candidate that `node` is part of an argument of."""
    calls = []
    child, parent = node, parents.get(node)
    while parent is not None:
        if _calls_stub(parent, stubs) and child is not parent.func:  # type: ignore[attr-defined]
            calls.append(parent)
        child, parent = parent, parents.get(parent)
    return calls


def literal_calls(source: str, entry_point: str) -> list[tuple[tuple, dict]]:
    """The arguments of the test's calls of the candidate whose arguments are all literals
    (`candidate([1, 2], 0.5)`), in the order they appear: what the server can ask for before
    the test runs (see `_sandbox_checking`), since they cannot depend on anything."""
    tree = _parse(source)
    if tree is None:
        return []
    return [(args, kwargs) for _, args, kwargs in _literal_calls(tree, frozenset({"candidate", entry_point}))]


_REPEATING = (ast.For, ast.AsyncFor, ast.While, ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp, ast.Lambda,
              ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)


def only_literal_calls(source: str, entry_point: str) -> bool:
    """Whether every call of the candidate the test can make is among its `literal_calls`,
    each made at most once: none in a loop, comprehension, lambda or function, but a function
    the test defines and calls once at its top level (HumanEval's `check(candidate)`), and the
    candidate passed nowhere else. Then the server knows every request the test will need
    before it runs, and tells the candidate's process up front that nothing more will come."""
    tree = _parse(source)
    if tree is None:
        return False
    stubs = {"candidate", entry_point}
    parents = _index(tree).parents
    once = _called_once(tree)
    literal = {id(call) for call, _, _ in _literal_calls(tree, frozenset(stubs))}
    for node in _of(tree, ast.Name):
        if not (node.id in stubs and isinstance(node.ctx, ast.Load)):
            continue
        parent = parents.get(node)
        if isinstance(parent, ast.Call) and parent.func is node:
            if id(parent) not in literal or _repeats(parent, parents, once):
                return False
        elif not (isinstance(parent, ast.Call) and isinstance(parent.func, ast.Name) and parent.func.id in once
                  and node in parent.args):
            return False  # the candidate itself handed on: its calls cannot be seen
    return True


def _called_once(tree: ast.Module) -> set[str]:
    """The functions defined at the module's top level whose only use is one call, itself a
    statement at the top level."""
    defined = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    uses = collections.Counter(n.id for n in _of(tree, ast.Name) if n.id in defined)
    return {
        n.value.func.id for n in tree.body
        if isinstance(n, ast.Expr) and isinstance(n.value, ast.Call) and isinstance(n.value.func, ast.Name)
        and uses[n.value.func.id] == 1
    }


def _repeats(node: ast.AST, parents: dict, once: set[str]) -> bool:
    """Whether `node` may run more than once: inside a loop, a comprehension, a lambda or a
    function other than one called once."""
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.FunctionDef) and node.name in once and parents.get(node) is not None \
                and isinstance(parents[node], ast.Module):
            continue
        if isinstance(node, _REPEATING):
            return True
    return False


@functools.lru_cache(maxsize=_TREES_KEPT)
def _literal_calls(tree: ast.Module, stubs: frozenset[str]) -> tuple[tuple[ast.Call, tuple, dict], ...]:
    """Each call of the candidate whose arguments are all literals, with their values (each
    argument evaluated once: both `literal_calls` and `only_literal_calls` read these; the
    values are only read)."""
    calls = [n for n in _of(tree, ast.Call) if _calls_stub(n, stubs)]
    found = []
    for call in sorted(calls, key=lambda n: (n.lineno, n.col_offset)):
        if any(isinstance(a, ast.Starred) for a in call.args) or any(k.arg is None for k in call.keywords):
            continue
        try:
            args = tuple(ast.literal_eval(a) for a in call.args)
            kwargs = {k.arg: ast.literal_eval(k.value) for k in call.keywords}
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            continue
        found.append((call, args, kwargs))
    return tuple(found)


def _calls_stub(node: ast.AST, stubs: typing.AbstractSet[str]) -> bool:
    return isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in stubs


@functools.lru_cache(maxsize=_TREES_KEPT)
def _bound(tree: ast.Module | None) -> frozenset[str]:
    """Every name a module binds anywhere (scopes are not told apart: a name bound in a nested
    function counts too, which only ever makes a test look more self-contained than it is in
    a way that fails loudly, with a NameError)."""
    if tree is None:
        return frozenset()
    names: set[str] = set()
    for node in _of(tree, ast.Name, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Import, ast.ImportFrom,
                    ast.arg, ast.ExceptHandler, ast.MatchAs, ast.MatchStar, ast.MatchMapping):
        if isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load):
            names.add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
        elif isinstance(node, (ast.ExceptHandler, ast.MatchAs, ast.MatchStar)) and node.name:
            names.add(node.name)
        elif isinstance(node, ast.MatchMapping) and node.rest:
            names.add(node.rest)
    return frozenset(names)


@functools.lru_cache(maxsize=_TREES_KEPT)
def _functions(tree: ast.Module | None) -> frozenset[str]:
    """The functions and classes a module defines (which cannot cross to the candidate)."""
    if tree is None:
        return frozenset()
    return frozenset(n.name for n in _of(tree, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
