"""Turn raw model output into the Python program it contains.

Small local models wrap code in prose and Markdown fences, append usage examples and tests,
get cut off mid-line, or continue a HumanEval stub instead of writing a whole function. The
sandbox needs one program that defines the entry point and does nothing else at import time,
so `extract_code`:

1. finds candidate code: fenced blocks (```` ```python ````, ```` ``` ````, ``~~~``; an
   unterminated last fence counts) or, without fences, runs of lines that parse as Python;
   each candidate is trimmed from the end until it parses (truncated output);
2. picks what to keep: the candidate that defines the entry point (plus definitions it needs
   from other candidates), or every candidate that is not just tests/usage examples; a
   continuation of `prompt` becomes ``prompt + output``;
3. cleans the module: imports, the definitions reachable from the entry point and the module
   constants they use stay verbatim and in order; asserts, prints, ``__main__`` blocks, test
   functions and other top-level calls go.

When nothing parses it returns its best guess at the code, so the sandbox reports the
SyntaxError instead of "no code"; "" means the output holds nothing code-like at all.
"""

from __future__ import annotations

import ast
import re
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace

__all__ = ["extract_code"]

# Chat-template tokens some runners leave in the text; nothing after them is output.
_STOP_TOKENS = ("<|endoftext|>", "<|im_end|>", "<end_of_turn>", "<|eot_id|>", "<|end|>")

_ASSIGN = (
    r"[A-Za-z_][\w.]*(?:\[[^\]\n]*\])?"  # target, maybe subscripted
    r"(?:[ \t]*,[ \t]*[A-Za-z_][\w.]*)*"  # tuple unpacking
    r"[ \t]*(?::[ \t]*[\w.\[\]|]+(?:,[ \t]*[\w.\[\]|]+)*[ \t]*)?"  # annotation
    r"[-+*/%@&|^]?=(?!=)"
)
_START = (
    r"(?:async[ \t]+)?def[ \t]+\w|class[ \t]+\w|import[ \t]+\w"
    r"|from[ \t]+\.*[\w.]*[ \t]+import\b|@[A-Za-z_]|" + _ASSIGN
)
# A line that can begin a run of code.
_START_RE = re.compile(rf"^[ \t]*(?:{_START})")
# A line that shows the output holds code at all (a bare `return` line is a continuation).
_CODE_LIKE_RE = re.compile(rf"^[ \t]*(?:{_START}|return\b)", re.MULTILINE)
_ANY_DEF_RE = re.compile(r"^[ \t]*(?:async[ \t]+)?def[ \t]", re.MULTILINE)

# A line that starts a statement in a function body written at column 0.
_STATEMENT_RE = re.compile(
    r"(?:for|if|while|try|with|return|yield|raise|pass|assert|del|global|nonlocal|match)\b"
)

_FENCE_OPEN_RE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>.*)$")
_FENCE_CLOSE_RE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*$")
# A closing fence glued to the end of a code line, and a doctest-style session.
_GLUED_FENCE_RE = re.compile(r"^([^`\n]*[^`\s])[ \t]*(```+)[ \t]*$", re.MULTILINE)
_REPL_RE = re.compile(r"^>>> ", re.MULTILINE)
_PY_LANGS = frozenset({"", "python", "py", "python3", "py3", "ipython"})

# Source characters the parser may read while searching one output: real outputs use a tiny
# fraction; text built to defeat the search (thousands of unclosed brackets) stops here.
_PARSE_BUDGET = 10_000_000
# Dropping one line at a time after this many unhelpful error positions, cut faster.
_SLOW_STEPS = 8

# Statement kinds, as far as cleaning is concerned.
_IMPORT = "import"
_DEF = "def"  # function or class definition
_TEST_DEF = "test def"  # test_* function, Test* / TestCase class
_ASSIGN_KIND = "assign"  # module-level binding of data
_OTHER = "other"  # compound statement or mutating call: kept if it sets up a needed name
_SETUP = "setup"  # interpreter configuration the program relies on (recursion limit)
_DROP = "drop"  # test or usage code


@dataclass(frozen=True)
class _Stmt:
    """One top-level statement of a candidate, with what cleaning needs to know about it."""

    text: str  # verbatim source
    kind: str
    binds: frozenset[str]  # module-level names it (re)binds
    writes: frozenset[str]  # module-level names it mutates in place (x[i] = .., x.append(..))
    uses: frozenset[str]  # module-level names it reads
    testy: bool  # looks like test/usage code (assert, print, __main__, test_*)
    future: bool  # `from __future__ import ...`: must come first
    # Where it came from, so neighbours keep the blank lines and comments between them.
    origin: int = 0  # id of the piece's source
    index: int = 0  # position in that source's body
    gap: tuple[str, ...] | None = None  # the lines between it and the statement before


@dataclass(frozen=True)
class _Piece:
    """A run of source that parses: a fenced block, or part of one, or of the prose."""

    tree: ast.Module
    stmts: tuple[_Stmt, ...]
    complete: bool  # nothing after it was trimmed to make it parse

    @property
    def binds(self) -> frozenset[str]:
        return frozenset().union(*(s.binds for s in self.stmts))

    def is_test(self, entry_point: str | None) -> bool:
        """Only tests or usage examples: no real definition, and something that runs.

        A `test_*` function that is the entry point (MBPP has some) is a real definition.
        """
        defines = any(
            s.kind == _DEF or (s.kind == _TEST_DEF and entry_point in s.binds) for s in self.stmts
        )
        return not defines and any(s.testy for s in self.stmts)


@dataclass(frozen=True)
class _Block:
    """A fenced block of the output (the last one may have lost its closing fence)."""

    code: str
    lang: str


def extract_code(
    text: str, entry_point: str | None = None, *, prompt: str | None = None
) -> str:
    """The Python program in a model's raw output `text`; "" when it holds no code.

    `entry_point` is the function the tests call: the definition to look for and the root
    of what is kept. `prompt` is a code stub the model was asked to continue (HumanEval);
    output that continues it rather than restating the function is returned appended to it.
    Never raises.
    """
    try:
        return _extract(text, entry_point, prompt)
    except Exception:  # a bug here must not lose a sample; the sandbox will judge the guess
        try:
            return _best_guess(_normalize(text), [], entry_point, None)
        except Exception:
            return ""


def _extract(text: str, entry_point: str | None, prompt: str | None) -> str:
    if not isinstance(text, str):
        return ""
    text = _normalize(text)
    if not _CODE_LIKE_RE.search(text):
        return ""
    if prompt is not None and not isinstance(prompt, str):
        prompt = None
    if prompt is not None:
        prompt = _normalize(prompt)
        entry_point = entry_point or _last_def_name(prompt)

    budget = _Budget(_PARSE_BUDGET)
    blocks = _fenced_blocks(text)
    code_blocks = [b for b in blocks if _is_python_lang(b.lang)] or blocks
    pieces = [p for b in code_blocks for p in _runs(b.code, budget, whole=True)]
    if not _has_definition(pieces, entry_point):
        # No fences, or none holding the code (an output sample, a broken block): look for
        # code in the text itself; fence lines do not parse, so they end runs.
        text_pieces = _runs(text, budget)
        if not pieces or _has_definition(text_pieces, entry_point):
            pieces = text_pieces

    usable = [p for p in pieces if not p.is_test(entry_point)]
    defines_entry = entry_point is not None and any(entry_point in p.binds for p in usable)

    if prompt is not None and entry_point and not defines_entry:
        program = _continue_prompt(prompt, entry_point, text, code_blocks, budget)
        if program:
            return program
    if entry_point and not defines_entry and _def_re(entry_point).search(text):
        # The entry point is written out but broken (truncated inside it): let the sandbox
        # report the SyntaxError rather than run whatever parsed around it.
        return _best_guess(text, code_blocks, entry_point, prompt)

    program = _select(usable, entry_point)
    return program or _best_guess(text, code_blocks, entry_point, prompt)


def _has_definition(pieces: list[_Piece], entry_point: str | None) -> bool:
    """Whether non-test pieces define the entry point (any function or class without one)."""
    usable = [p for p in pieces if not p.is_test(entry_point)]
    if entry_point:
        return any(entry_point in p.binds for p in usable)
    return any(s.kind == _DEF for p in usable for s in p.stmts)


def _normalize(text: str) -> str:
    """Unix newlines (so `ast` line numbers match `split("\\n")`), no NULs or stop tokens."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "")
    for token in _STOP_TOKENS:
        text = text.split(token, 1)[0]
    if "</think>" in text:  # reasoning models: drafts in the thinking are not the answer
        answer = text.rsplit("</think>", 1)[1]
        if _CODE_LIKE_RE.search(answer):
            text = answer
    text = _GLUED_FENCE_RE.sub(r"\1\n\2", text)  # `return x```: the fence on its own line
    return _strip_repl(text)


def _strip_repl(text: str) -> str:
    """The code typed in `>>>` sessions at column 0: prompts removed, printed output blanked."""
    if not _REPL_RE.search(text):
        return text
    lines: list[str] = []
    in_session = False
    for line in text.split("\n"):
        if line.startswith(">>>") or (in_session and line.startswith("...")):
            lines.append(line[4:] if line[3:4] == " " else line[3:])
            in_session = True
        elif in_session and line.strip() and not _FENCE_OPEN_RE.match(line):
            lines.append("")  # what the session printed
        else:
            lines.append(line)
            in_session = False
    return "\n".join(lines)


def _def_re(name: str) -> re.Pattern[str]:
    return re.compile(rf"^[ \t]*(?:async[ \t]+)?def[ \t]+{re.escape(name)}[ \t]*\(", re.M)


def _last_def_name(prompt: str) -> str | None:
    """The function a HumanEval-style stub ends inside: its last top-level def."""
    tree = _parse(prompt)
    if tree is not None:
        functions = (ast.FunctionDef, ast.AsyncFunctionDef)
        names = [n.name for n in tree.body if isinstance(n, functions)]
        if names:
            return names[-1]
    found = re.findall(r"^(?:async[ \t]+)?def[ \t]+(\w+)", prompt, re.M)
    return found[-1] if found else None


# --- Finding code ------------------------------------------------------------------------


class _Budget:
    """What is left of the parse budget of one `extract_code` call."""

    def __init__(self, chars: int) -> None:
        self.chars = chars

    def spend(self, source: str) -> bool:
        """Charge for parsing `source`; False once the budget is gone."""
        self.chars -= len(source) + 1
        return self.chars >= 0


def _parse(source: str) -> ast.Module | None:
    return _try_parse(source)[0]


def _try_parse(source: str) -> tuple[ast.Module | None, int | None]:
    """The module, or None and the line the parser choked on (None when it gave none)."""
    try:
        with warnings.catch_warnings():
            # Invalid escapes etc. warn; under `-W error` that would reject valid code.
            warnings.simplefilter("ignore")
            return ast.parse(source), None
    except SyntaxError as exc:
        return None, exc.lineno
    except (ValueError, RecursionError, MemoryError, OverflowError):
        return None, None


def _fenced_blocks(text: str) -> list[_Block]:
    """Markdown fenced blocks, in order; the last may run to the end (truncated output)."""
    blocks: list[_Block] = []
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        opening = _FENCE_OPEN_RE.match(lines[i])
        if opening is None or (opening["fence"][0] == "`" and "`" in opening["info"]):
            i += 1
            continue
        indent, fence = opening["indent"], opening["fence"]
        lang = _lang(opening["info"])
        body: list[str] = []
        i += 1
        while i < len(lines):
            line = lines[i]
            i += 1
            closing = _FENCE_CLOSE_RE.match(line)
            if (
                closing is not None
                and closing["fence"][0] == fence[0]
                and len(closing["fence"]) >= len(fence)
                # Deeper fences are Markdown inside a docstring, not the end of the block.
                and len(closing["indent"]) <= len(indent) + 3
            ):
                break
            body.append(_strip_indent(line, indent))
        blocks.append(_Block("\n".join(body), lang))
    return blocks


def _lang(info: str) -> str:
    """The language of a fence's info string: ``python title="x"`` and ``solution.py`` -> python."""
    word = info.strip().split(" ", 1)[0].lower() if info.strip() else ""
    if word.endswith(".py"):
        return "python"
    match = re.match(r"[\w+#-]*", word)
    return match.group() if match else word


def _is_python_lang(lang: str) -> bool:
    return lang in _PY_LANGS


def _strip_indent(line: str, indent: str) -> str:
    """`line` without the fence's indentation (a list item's block is indented as a whole)."""
    if line.startswith(indent):
        return line[len(indent) :]
    return line.lstrip(" \t") if not line[: len(indent)].strip() else line


def _runs(source: str, budget: _Budget, *, whole: bool = False) -> list[_Piece]:
    """Maximal runs of `source` that parse, each starting at a line that can begin code.

    With `whole`, the first non-blank line can begin code whatever it looks like (the body
    of a fenced block). A run at an indented start covers the lines indented at least as
    much and is dedented. Each run is the longest prefix that parses, so truncated output
    loses only its broken tail.
    """
    lines = source.split("\n")
    starts = {i for i, line in enumerate(lines) if _START_RE.match(line)}
    if whole:
        first = next((i for i, line in enumerate(lines) if line.strip()), None)
        if first is not None:
            starts.add(first)
    pieces: list[_Piece] = []
    floor = 0
    for start in sorted(starts):
        if start < floor:
            continue  # already inside an earlier run
        indent = _indentation(lines[start])
        span = [lines[start][len(indent) :]]
        for line in lines[start + 1 :]:
            if line.strip() and not line.startswith(indent):
                break  # dedented below the run's start: the run is over
            span.append(line[len(indent) :] if line.strip() else "")
        found = _longest_prefix(span, budget)
        if found is None:
            continue
        tree, prefix, used = found
        complete = not any(line.strip() for line in span[used:])
        pieces.append(_Piece(tree, tuple(_statements(tree, prefix)), complete))
        floor = start + used
    return pieces


def _indentation(line: str) -> str:
    return line[: len(line) - len(line.lstrip(" \t"))]


def _longest_prefix(lines: list[str], budget: _Budget) -> tuple[ast.Module, str, int] | None:
    """The longest prefix of `lines` that parses to at least one statement.

    Instead of dropping one line at a time, jump to just before the line the parser reported:
    no longer prefix can parse, since that line's tokens already failed. Where that does not
    help (the parser names the innermost of many unclosed brackets), the steps grow, so
    pathological text costs a logarithmic number of parses rather than one per line.
    """
    end = len(lines)
    slow_steps = 0
    while end > 0 and budget.spend(source := "\n".join(lines[:end])):
        tree, error_line = _try_parse(source)
        if tree is not None:
            return (tree, source, end) if tree.body else None
        cut = end - 1
        if error_line is not None and 1 <= error_line < end:
            cut = error_line - 1
        else:
            slow_steps += 1
            if slow_steps > _SLOW_STEPS:
                cut = end - 2 ** (slow_steps - _SLOW_STEPS)
        end = cut
    return None


# --- Describing statements ---------------------------------------------------------------


def _statements(tree: ast.Module, source: str) -> Iterator[_Stmt]:
    lines = source.split("\n")
    body = tree.body
    origin = id(tree)
    previous_end = 0
    for index, node in enumerate(body):
        start = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
        end = node.end_lineno or node.lineno
        next_start = body[index + 1].lineno if index + 1 < len(body) else None
        shares_line = start == previous_end or end == next_start
        gap: tuple[str, ...] | None = tuple(lines[previous_end : start - 1])
        if shares_line:  # `import os; print(1)`: cut by column, not by line
            text = ast.get_source_segment(source, node) or ""
            gap = None
        else:
            text = "\n".join(lines[start - 1 : end])
        previous_end = end
        yield replace(_describe(node, text), origin=origin, index=index, gap=gap)


def _describe(node: ast.stmt, text: str) -> _Stmt:
    """Classify a top-level statement and collect the names it binds, mutates and reads."""
    uses = frozenset(_free_names(node))
    future = isinstance(node, ast.ImportFrom) and node.module == "__future__"

    def stmt(
        kind: str, binds: Iterable[str] = (), writes: Iterable[str] = (), testy: bool = False
    ) -> _Stmt:
        return _Stmt(text, kind, frozenset(binds), frozenset(writes), uses, testy, future)

    if isinstance(node, (ast.Import, ast.ImportFrom)):
        return stmt(_IMPORT, _import_names(node))
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        is_test = _is_test_def(node)
        return stmt(_TEST_DEF if is_test else _DEF, {node.name}, testy=is_test)
    if _calls_input(node):  # would block on (or fail reading) stdin when the program loads
        return stmt(_DROP, testy=True)
    if isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        binds, writes = _target_names(targets)
        return stmt(_ASSIGN_KIND, binds, writes)
    if isinstance(node, ast.Expr):
        call = node.value
        if isinstance(call, ast.Call) and _dotted(call.func).endswith("setrecursionlimit"):
            return stmt(_SETUP)
        if isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute):
            base = _base_name(call.func.value)
            if base is not None:  # TABLE.append(..): kept if TABLE is needed data
                return stmt(_OTHER, writes={base}, testy=True)
        return stmt(_DROP, testy=isinstance(call, (ast.Call, ast.Await)))
    if isinstance(node, ast.Assert) or _is_main_guard(node):
        return stmt(_DROP, testy=True)
    if isinstance(node, _COMPOUND) or type(node).__name__ == "TryStar":  # 3.11's try/except*
        binds, writes = _compound_names(node)
        return stmt(_OTHER, binds, writes, testy=_has_print(node))
    return stmt(_DROP)  # pass, return, raise, global, del at module level


_COMPOUND = (ast.If, ast.For, ast.AsyncFor, ast.While, ast.With, ast.AsyncWith, ast.Try, ast.Match)
_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)
_STDIN_READS = ("input", "sys.stdin.readline", "sys.stdin.read")


def _is_test_def(node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) -> bool:
    if isinstance(node, ast.ClassDef):
        bases = [_dotted(b) for b in node.bases]
        return node.name.startswith("Test") or any(b.endswith("TestCase") for b in bases)
    return node.name == "test" or node.name.startswith("test_")


def _is_main_guard(node: ast.stmt) -> bool:
    """`if __name__ == "__main__":`, either way round."""
    if not isinstance(node, ast.If) or not isinstance(node.test, ast.Compare):
        return False
    operands = [node.test.left, *node.test.comparators]
    return any(isinstance(o, ast.Name) and o.id == "__name__" for o in operands) and any(
        isinstance(o, ast.Constant) and o.value == "__main__" for o in operands
    )


def _calls_input(node: ast.AST) -> bool:
    calls = (n for n in _walk_scope(node) if isinstance(n, ast.Call))
    return any(_dotted(call.func) in _STDIN_READS for call in calls)


def _has_print(node: ast.AST) -> bool:
    return any(
        isinstance(n, ast.Assert) or (isinstance(n, ast.Call) and _dotted(n.func) == "print")
        for n in _walk_scope(node)
    )


def _dotted(node: ast.AST) -> str:
    """`a.b.c` for a Name/Attribute chain, "" for anything else."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return ""
    parts.append(node.id)
    return ".".join(reversed(parts))


def _base_name(node: ast.AST) -> str | None:
    """The variable at the bottom of `x`, `x.a`, `x[i]`, `x.a[i].b`."""
    while isinstance(node, (ast.Attribute, ast.Subscript, ast.Starred)):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def _import_names(node: ast.Import | ast.ImportFrom) -> set[str]:
    return {alias.asname or alias.name.split(".")[0] for alias in node.names if alias.name != "*"}


def _target_names(targets: Sequence[ast.expr]) -> tuple[set[str], set[str]]:
    """Names assignment targets bind, and names they mutate (`x[i] = ..`, `x.a = ..`)."""
    binds: set[str] = set()
    writes: set[str] = set()
    stack = list(targets)
    while stack:
        target = stack.pop()
        if isinstance(target, ast.Name):
            binds.add(target.id)
        elif isinstance(target, (ast.Tuple, ast.List)):
            stack.extend(target.elts)
        elif isinstance(target, ast.Starred):
            stack.append(target.value)
        else:
            base = _base_name(target)
            if base is not None:
                writes.add(base)
    return binds, writes


def _compound_names(node: ast.stmt) -> tuple[set[str], set[str]]:
    """What an if/for/try/with at module level binds or mutates in the module namespace."""
    binds: set[str] = set()
    writes: set[str] = set()
    for n in _walk_scope(node):
        if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store):
            binds.add(n.id)
        elif isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            binds.add(n.name)
        elif isinstance(n, (ast.Import, ast.ImportFrom)):
            binds |= _import_names(n)
        elif isinstance(n, ast.ExceptHandler) and n.name:
            binds.add(n.name)
        elif isinstance(n, (ast.Subscript, ast.Attribute)) and isinstance(n.ctx, ast.Store):
            base = _base_name(n)
            if base is not None:
                writes.add(base)
        elif isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute):
            base = _base_name(n.func.value)
            if base is not None:
                writes.add(base)
    return binds, writes


def _walk_scope(node: ast.AST) -> Iterator[ast.AST]:
    """Like `ast.walk`, but does not enter function or class bodies (their own scopes)."""
    stack = [node]
    while stack:
        current = stack.pop()
        yield current
        if current is not node and isinstance(current, _SCOPES):
            continue
        stack.extend(ast.iter_child_nodes(current))


def _free_names(node: ast.stmt) -> set[str]:
    """Names `node` reads that it does not bind itself: module globals (or builtins).

    Approximate on purpose: a name bound anywhere inside (parameter, local, loop variable)
    counts as local everywhere inside, unless declared `global`. That errs towards keeping
    fewer constants only when a nested scope shadows a global another scope reads.
    """
    loads: set[str] = set()
    bound: set[str] = set()
    declared_global: set[str] = set()
    for n in ast.walk(node):
        if isinstance(n, ast.Name):
            (loads if isinstance(n.ctx, ast.Load) else bound).add(n.id)
        elif isinstance(n, ast.arg):
            bound.add(n.arg)
        elif isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and n is not node:
            bound.add(n.name)
        elif isinstance(n, (ast.Import, ast.ImportFrom)) and n is not node:
            bound |= _import_names(n)
        elif isinstance(n, (ast.ExceptHandler, ast.MatchAs, ast.MatchStar)) and n.name:
            bound.add(n.name)
        elif isinstance(n, ast.MatchMapping) and n.rest:
            bound.add(n.rest)
        elif isinstance(n, ast.Global):
            declared_global.update(n.names)
    if isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
        # `X = X + 1` or `X += 1` reads the earlier X: keep that binding too.
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        own = _target_names(targets)[0]
        if isinstance(node, ast.AugAssign):
            loads |= own
        bound -= own & loads
    return (loads - bound) | declared_global


# --- Choosing and cleaning ----------------------------------------------------------------


def _select(usable: list[_Piece], entry_point: str | None) -> str:
    """The cleaned program from the pieces that are not just tests or usage examples."""
    if entry_point:
        defining = [p for p in usable if entry_point in p.binds]
        if defining:
            # A complete piece beats one trimmed to parse; otherwise the first answer wins.
            primary = next((p for p in defining if p.complete), defining[0])
            bound = primary.binds
            # Other pieces may hold the helpers or imports it uses (one block per function);
            # never what the primary defines itself, so its own version wins.
            extras = [
                s
                for p in usable
                if p is not primary
                for s in p.stmts
                if s.binds and not s.binds & bound
            ]
            return _clean(extras, list(primary.stmts), entry_point)
    return _clean([], [s for p in usable for s in p.stmts], None)


def _clean(extras: list[_Stmt], primary: list[_Stmt], entry_point: str | None) -> str:
    """Keep what the entry point needs (every definition when there is none), in order.

    Imports of the primary code are always kept (cheap, and a model's `import math` is
    meant); an extra statement is kept only if something kept needs what it binds.
    """
    items = [(s, False) for s in extras] + [(s, True) for s in primary]
    has_root = entry_point is not None and any(entry_point in s.binds for s, _ in items)
    needed: set[str] = {entry_point} if has_root and entry_point else set()
    data = {name for s, _ in items if s.kind == _ASSIGN_KIND for name in s.binds}
    kept = [False] * len(items)
    changed = True
    while changed:  # a fixed point: each kept statement may make more names needed
        changed = False
        for i, (s, is_primary) in enumerate(items):
            if kept[i] or s.kind == _DROP:
                continue
            if (
                (s.kind == _IMPORT and is_primary)
                or s.kind == _SETUP
                or (s.kind == _DEF and not has_root)
                or s.binds & needed
                or (s.kind in (_ASSIGN_KIND, _OTHER) and s.writes & needed & data)
            ):
                kept[i] = True
                needed |= s.uses | s.binds
                changed = True
    chosen = [s for (s, _), keep in zip(items, kept) if keep]
    if not chosen:
        return ""
    program = _join([s for s in chosen if s.future] + [s for s in chosen if not s.future])
    return program if _parse(program) is not None else "\n".join(s.text for s in chosen) + "\n"


def _join(stmts: list[_Stmt]) -> str:
    """The statements' text; neighbours in the source keep what was between them."""
    parts: list[str] = []
    seen_futures: set[str] = set()
    previous: _Stmt | None = None
    for s in stmts:
        if s.future:
            if s.text in seen_futures:
                continue  # the same `from __future__` line from two blocks
            seen_futures.add(s.text)
        if previous is not None:
            if s.gap is not None and (s.origin, s.index) == (previous.origin, previous.index + 1):
                parts.extend(s.gap)
            elif s.kind in (_DEF, _TEST_DEF) or previous.kind in (_DEF, _TEST_DEF):
                parts.extend(("", ""))  # PEP 8 spacing where something was dropped between
        parts.append(s.text)
        previous = s
    return "\n".join(parts).strip("\n") + "\n"


# --- Continuations and fallbacks -----------------------------------------------------------


def _continuation_text(text: str, blocks: list[_Block]) -> str:
    """The part of the output that would continue the prompt's function body."""
    lines = text.split("\n")
    fence = next((i for i, line in enumerate(lines) if _FENCE_OPEN_RE.match(line)), len(lines))
    head = [line for line in lines[:fence] if line.strip()]
    if blocks and head and (head[0][0] in " \t" or _STATEMENT_RE.match(head[0])):
        # Code, then a fence that closes a block the prompt opened: the code is the answer.
        return "\n".join(lines[:fence])
    if blocks:
        return blocks[0].code
    for i, line in enumerate(lines):
        if line.strip():
            if line[0] in " \t" or _CODE_LIKE_RE.match(line) or _STATEMENT_RE.match(line):
                return "\n".join(lines[i:])
            break
    # Prose first: the body starts at the first indented line.
    for i, line in enumerate(lines):
        if line.strip() and line[0] in " \t":
            return "\n".join(lines[i:])
    return text


def _continue_prompt(
    prompt: str, entry_point: str, text: str, blocks: list[_Block], budget: _Budget
) -> str:
    """`prompt + output` when the output continues the stub's body; "" when it does not."""
    tree = _parse(prompt)
    before = _body_size(tree, entry_point) if tree is not None else 0
    continuation = _continuation_text(text, blocks)
    if not continuation.strip():
        return ""
    # HumanEval appends the completion as is; a stub without its final newline, or a body
    # written at column 0, needs help.
    stub = prompt if prompt.endswith("\n") else prompt.rstrip(" \t") + "\n"
    candidates = [prompt + continuation, stub + continuation]
    lines = continuation.split("\n")
    first = next((line for line in lines if line.strip()), "")
    if first[:1] not in (" ", "\t"):
        indent = _body_indent(prompt)
        indented = (indent + line if line.strip() else line for line in lines)
        candidates.append(stub + "\n".join(indented))
    for program in candidates:
        pieces = _runs(program, budget, whole=True)
        if not pieces or entry_point not in pieces[0].binds:
            continue
        if _body_size(pieces[0].tree, entry_point) <= before:
            continue  # nothing of the output survived: not a continuation (or all broken)
        usable = [pieces[0]] + [p for p in pieces[1:] if not p.is_test(entry_point)]
        return _select(usable, entry_point)
    return ""


def _body_size(tree: ast.Module, name: str) -> int:
    """Statements in the body of top-level function `name`, its docstring not counted."""
    for node in reversed(tree.body):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == name:
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                body = body[1:]
            return len(body)
    return 0


def _body_indent(prompt: str) -> str:
    """The indentation of the stub's last line (its docstring): the body's indentation."""
    last = next((line for line in reversed(prompt.split("\n")) if line.strip()), "")
    return _indentation(last) or "    "


def _best_guess(
    text: str, blocks: list[_Block], entry_point: str | None, prompt: str | None
) -> str:
    """Raw code to hand the sandbox when nothing clean came out, so it reports why.

    In order: the block defining the entry point (any function without one), the prompt
    continued, any block with code, the text from the entry point's or any def onwards,
    the text from its first code-like line.
    """
    if not _CODE_LIKE_RE.search(text):
        return ""
    defines = _def_re(entry_point) if entry_point else _ANY_DEF_RE
    candidates = [b.code for b in blocks if defines.search(b.code)]
    if prompt is not None and entry_point and not defines.search(text):
        continuation = _continuation_text(text, blocks)
        if continuation.strip():
            candidates.append(prompt + continuation)
    candidates += [b.code for b in blocks if _CODE_LIKE_RE.search(b.code)]
    for pattern in (defines, _ANY_DEF_RE, _CODE_LIKE_RE):
        match = pattern.search(text)
        if match:
            candidates.append(text[match.start() :])
    for candidate in candidates:
        if candidate.strip():
            return candidate.strip("\n").rstrip() + "\n"
    return ""
