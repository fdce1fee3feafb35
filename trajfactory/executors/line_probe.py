"""trajfactory's line probes: run INSIDE a sandbox, loaded with `-p trajfactory_probe` in the reference run.

Which test executed which line, for only the lines validation reads, at about the cost of a plain run. Coverage
(`--cov-context=test`) answers the same question for every line of the measured files, but on Python < 3.12 its
tracer is called for every function call of the whole suite, and the run costs about 2.2x a plain one (networkx).
Here the statements that hold the wanted lines get a probe instead, compiled into the module as it is imported:

    __trajfactory_hit__(7)        # inserted before the statement; `7` names (file, lines)

`__trajfactory_hit__` is a builtin rebound at every context switch to the `add` of that context's set of probe
ids, so a probe costs a global lookup and a C call, and code without probes costs nothing. Through environment
variables:

- `TRAJFACTORY_PROBE`: a JSON file `{"pkg/mod.py": [12, 40, ...], ...}` of the wanted lines (paths relative to
  the working directory, the checkout);
- `TRAJFACTORY_PROBE_OUT`: where the map goes when pytest ends, in `coverage_map.py`'s format plus the wanted
  lines of the files the probes know about: instrumented, or never imported (no line of theirs ran). A file some
  code ran without probes (imported before this plugin, or by a loader it cannot instrument) is left out. A
  wanted line without code has no probe: no code there can run.

    {"contexts": ["", "tests/t.py::test_x|run", ...], "files": {"pkg/mod.py": {"12": [0, 1]}},
     "probed": {"pkg/mod.py": [12, 40]}}

Contexts are named as pytest-cov names them: `""` outside any test (import, collection), `<node id>|setup`,
`|run` and `|teardown`; the harness (`pytest_harness.py`) switches to its fixture-scope contexts through
`RECORDER.switch_context`, as it does with coverage. One more than coverage: `<test file>|import`, a line that a test
module's own module-level code ran while pytest imported it (its constants, class bodies, parametrize lists), found
by the innermost module-level frame on the stack. Its state lives in that module, so it reaches that module's tests,
where code a library module ran at its import (state every test may read) stays `""`. A test module whose name
another file of the checkout mentions (a module that imports it sees what its import built) keeps `""`.

A wanted line is recorded when the statement holding it starts (a compound statement: its header, decorators
included; an `except` or `case` line: the whole `try` or `match`, since its expression runs whenever an exception
or subject reaches it). A docstring line is recorded when the body it documents starts. Code that runs later than
its statement gets probes of its own: a lambda's body, a generator expression's elements, conditions and inner
loops. That is never less than coverage records, only sometimes more (a branch of a multi-line expression that did
not run), which widens a selection and never narrows it. Source files are left alone and no bytecode is written:
line numbers, tracebacks, `inspect.getsource` and doctests see the original file. Subprocesses and forked children
are not probed (nor are they measured by pytest-cov's contexts).
"""

import ast
import builtins
import importlib.abc
import importlib.machinery
import json
import os
import re
import sys

import pytest

HIT = "__trajfactory_hit__"
ROOT = os.path.realpath(os.getcwd())
IMPORTED = "|import"
"""Suffix of a test module's context while pytest imports it: `tests/test_x.py|import`."""


class Recorder(object):
    """The probe ids hit under each context, and the lines each probe id stands for."""

    def __init__(self, wanted):
        self.wanted = wanted  # relative path -> set of lines
        self.probes = []  # probe id -> (relative path, lines)
        self.probed = set()  # relative paths instrumented (every wanted line of theirs that holds code has a probe)
        self.unprobed = set()  # relative paths imported by a loader the probes cannot instrument
        self.hits = {}  # context -> set of probe ids
        self.importing = None  # (real path, relative path) of the test module pytest is importing
        self._real = {}  # a code object's file name -> its real path
        self.switch_context("")

    def _hits(self, name):
        hits = self.hits.get(name)
        if hits is None:
            hits = self.hits[name] = set()
        return hits

    def switch_context(self, name):
        self.context = name
        setattr(builtins, HIT, self._hits(name).add if self.importing is None else self._import_hit)

    def start_module(self, path):
        """pytest is about to import (collect) this test module: a hit is attributed by the frame that made it."""
        real = os.path.realpath(path)
        self.importing = (real, os.path.relpath(real, ROOT))
        self.switch_context(self.context)

    def end_module(self):
        self.importing = None
        self.switch_context(self.context)

    def _import_hit(self, probe):
        """A hit while a test module is imported: the module's own context when its module-level code (a class body
        or a call in it included) made it, `""` when another module's did (a library module imported meanwhile)."""
        frame = sys._getframe(1)
        while frame is not None and frame.f_code.co_name != "<module>":
            frame = frame.f_back
        name = self.context
        if frame is not None and not self.context:
            filename = frame.f_code.co_filename
            real = self._real.get(filename)
            if real is None:
                real = self._real[filename] = os.path.realpath(filename)
            if real == self.importing[0]:
                name = self.importing[1] + IMPORTED
        self._hits(name).add(probe)

    def add_probe(self, rel, lines):
        self.probes.append((rel, tuple(sorted(lines))))
        return len(self.probes) - 1

    def _unprobed(self):
        """The wanted files some code of this process ran without probes: imported before the probes were in place,
        or by a loader they cannot instrument. A wanted file never imported ran no line here."""
        unprobed = set(self.unprobed)
        for module in list(sys.modules.values()):
            path = getattr(module, "__file__", None)
            if isinstance(path, str) and not isinstance(getattr(module, "__loader__", None), (_Loader, _Rewritten)):
                rel = os.path.relpath(os.path.realpath(path), ROOT)
                if rel in self.wanted:
                    unprobed.add(rel)
        return unprobed

    def write(self, path):
        imported = [name for name in self.hits if name.endswith(IMPORTED)]
        named = _mentioned([name[:-len(IMPORTED)] for name in imported])
        for name in imported:
            if name[:-len(IMPORTED)] in named:  # what its import built reaches further: any test's, as before
                self._hits("").update(self.hits.pop(name))
        contexts = sorted(name for name, ids in self.hits.items() if ids)
        index = dict((name, i) for i, name in enumerate(contexts))
        files = {}
        for name in contexts:
            for probe in self.hits[name]:
                rel, lines = self.probes[probe]
                for line in lines:
                    files.setdefault(rel, {}).setdefault(str(line), set()).add(index[name])
        files = dict((rel, dict((line, sorted(ids)) for line, ids in by_line.items()))
                     for rel, by_line in files.items())
        probed = dict((rel, sorted(self.wanted[rel])) for rel in sorted(set(self.wanted) - self._unprobed()))
        with open(path, "w") as f:
            json.dump({"contexts": contexts, "files": files, "probed": probed}, f, separators=(",", ":"))


def _mentioned(modules):
    """The test modules (relative paths) whose name, as a word, another file of the checkout mentions: a module
    that imports one (`from test_x import CASES`, `pytest_plugins`, a configuration naming it) sees what its import
    built, so what its import ran reaches more than its own tests."""
    stems = {}
    for rel in modules:
        stems.setdefault(os.path.splitext(os.path.basename(rel))[0], set()).add(rel)
    if not stems:
        return set()
    word = re.compile(r"\b(%s)\b" % "|".join(re.escape(s) for s in sorted(stems)))
    found = set()
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in ("__pycache__", "node_modules",
                                                                           "site-packages")]
        for name in files:
            if not name.endswith((".py", ".cfg", ".ini", ".toml", ".txt")):
                continue
            path = os.path.join(folder, name)
            rel = os.path.relpath(path, ROOT)
            try:
                with open(path, encoding="utf-8", errors="replace") as f:
                    text = f.read()
            except OSError:
                continue
            for stem in set(word.findall(text)):
                found |= stems[stem] - {rel}
    return found


def _is_docstring(node):
    return isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)


def _is_future(node):
    return isinstance(node, ast.ImportFrom) and node.module == "__future__"


def _header(node):
    """The lines whose code runs when `node` starts: a simple statement's own lines, a compound statement's
    decorators and header (up to its body), a `try`'s `except` lines and a `match`'s `case` lines."""
    first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
    body = getattr(node, "body", None)
    if getattr(node, "cases", None):  # a `match`: its subject, then its cases
        spans = [(first, node.subject.end_lineno)]
    elif not body or not isinstance(body, list) or not isinstance(body[0], ast.stmt):
        return [(first, node.end_lineno)]
    else:
        spans = [(first, max(node.lineno, body[0].lineno - 1))]
    for part in getattr(node, "handlers", []) + getattr(node, "cases", []):
        start = getattr(part, "lineno", None) or part.pattern.lineno
        spans.append((start, max(start, part.body[0].lineno - 1)))
    return spans


class _Instrument(object):
    """Inserts probes into one module's tree for the wanted lines of its file."""

    def __init__(self, recorder, rel):
        self.recorder, self.rel, self.wanted = recorder, rel, recorder.wanted[rel]

    def body(self, stmts, documented):
        """A new statement list with probes; `documented`: a module, class or function body, whose leading string
        is its docstring (its probe goes after it, with the future imports of a module)."""
        start = 1 if documented and stmts and _is_docstring(stmts[0]) else 0
        while start < len(stmts) and _is_future(stmts[start]):
            start += 1
        out = stmts[:start] + [self.probe(n, self._lines(n, whole=True)) for n in stmts[:start]]
        for node in stmts[start:]:
            out.append(self.probe(node, self._lines(node)))
            self.children(node)
            out.append(node)
        return [node for node in out if node is not None]

    def _lines(self, node, whole=False):
        spans = [(node.lineno, node.end_lineno)] if whole else _header(node)
        return set(n for a, b in spans for n in range(a, b + 1)) & self.wanted

    def probe(self, node, lines):
        """A probe statement for these lines of `node`, placed at its line; None when there are none."""
        if not lines:
            return None
        call = ast.Expr(ast.Call(ast.Name(HIT, ast.Load()), [ast.Constant(self.recorder.add_probe(self.rel, lines))],
                                 []))
        return ast.fix_missing_locations(ast.copy_location(call, node))

    def children(self, node):
        documented = isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
        for field in ("body", "orelse", "finalbody"):
            stmts = getattr(node, field, None)
            if isinstance(stmts, list) and stmts and isinstance(stmts[0], ast.stmt):
                setattr(node, field, self.body(stmts, documented and field == "body"))
        for part in getattr(node, "handlers", []) + getattr(node, "cases", []):
            part.body = self.body(part.body, False)


class _Deferred(ast.NodeTransformer):
    """Probes in the code of an expression that runs later than its statement: a lambda's body, and a generator
    expression's elements, conditions and inner loops (`(probe(k), expression)[1]`)."""

    def __init__(self, instrument):
        self.instrument = instrument

    def _wrap(self, node, outer):
        lines = set(range(outer.lineno, outer.end_lineno + 1)) & self.instrument.wanted
        if not lines:
            return node
        probe = self.instrument.probe(node, lines).value
        pair = ast.Tuple([probe, node], ast.Load())
        return ast.fix_missing_locations(ast.copy_location(ast.Subscript(pair, ast.Constant(1), ast.Load()), node))

    def visit_Lambda(self, node):
        self.generic_visit(node)
        node.body = self._wrap(node.body, node)
        return node

    def visit_GeneratorExp(self, node):
        self.generic_visit(node)
        node.elt = self._wrap(node.elt, node)
        for i, loop in enumerate(node.generators):
            loop.ifs = [self._wrap(cond, node) for cond in loop.ifs]
            if i:
                loop.iter = self._wrap(loop.iter, node)
        return node


def _compile(path, rel, rewrite=None):
    """The module's code with probes (and pytest's assertion rewriting, for a test module or conftest)."""
    with open(path, "rb") as f:
        source = f.read()
    tree = ast.parse(source, path)
    instrument = _Instrument(RECORDER, rel)
    tree.body = instrument.body(tree.body, True)
    tree = _Deferred(instrument).visit(tree)
    if rewrite is not None:  # after the probes: the rewriter's own nodes have no end lines
        rewrite(tree, source)
    code = compile(tree, path, "exec", dont_inherit=True)
    RECORDER.probed.add(rel)
    return code


class _Loader(importlib.machinery.SourceFileLoader):
    """Compiles the module from its source with probes; never reads or writes cached bytecode."""

    def __init__(self, fullname, path, rel):
        importlib.machinery.SourceFileLoader.__init__(self, fullname, path)
        self.rel = rel

    def get_code(self, fullname):
        return _compile(self.path, self.rel)


class _Rewritten(object):
    """A test module or conftest that pytest's assertion rewriter loads: rewritten as pytest rewrites it, then
    probed. Where this pytest's rewriter cannot be called so, it loads the module itself, without probes."""

    def __init__(self, hook, path, rel):
        self.hook, self.path, self.rel = hook, path, rel

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        try:
            from _pytest.assertion.rewrite import rewrite_asserts

            code = _compile(self.path, self.rel, lambda tree, source: rewrite_asserts(
                tree, source, self.path, self.hook.config))
        except Exception:  # noqa: BLE001 - another pytest's internals: its own loader does it, unprobed
            RECORDER.unprobed.add(self.rel)
            return self.hook.exec_module(module)
        names = getattr(self.hook, "_rewritten_names", None)
        if isinstance(names, dict):
            names[module.__name__] = self.path
        exec(code, module.__dict__)

    def __getattr__(self, name):
        return getattr(self.hook, name)


class _Finder(importlib.abc.MetaPathFinder):
    """Asks the finders after it (the path finder, an editable install's finder) and wraps the wanted files."""

    def find_spec(self, fullname, path=None, target=None):
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is None:
                continue
            origin = spec.origin
            if not origin or not origin.endswith(".py"):
                return spec
            rel = os.path.relpath(os.path.realpath(origin), ROOT)
            if rel not in RECORDER.wanted:
                return spec
            if isinstance(spec.loader, importlib.abc.FileLoader):
                spec.loader = _Loader(fullname, origin, rel)
            elif type(spec.loader).__name__ == "AssertionRewritingHook":
                spec.loader = _Rewritten(spec.loader, origin, rel)
            else:
                RECORDER.unprobed.add(rel)
            return spec
        return None


def _load_plan(path):
    with open(path) as f:
        plan = json.load(f)
    return dict((os.path.normpath(rel), set(int(n) for n in lines)) for rel, lines in plan.items())


RECORDER = None
if os.environ.get("TRAJFACTORY_PROBE"):
    RECORDER = Recorder(_load_plan(os.environ["TRAJFACTORY_PROBE"]))
    sys.meta_path.insert(0, _Finder())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    # a test module itself (not a doctest module: a library module's import-time code reaches every test)
    if RECORDER is None or type(collector) is not getattr(pytest, "Module", None) or RECORDER.context:
        yield
        return
    RECORDER.start_module(str(getattr(collector, "path", None) or collector.fspath))
    try:
        yield
    finally:
        RECORDER.end_module()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    if RECORDER is not None:
        RECORDER.switch_context(item.nodeid + "|setup")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_call(item):
    if RECORDER is not None:
        RECORDER.switch_context(item.nodeid + "|run")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_teardown(item):
    if RECORDER is not None:
        RECORDER.switch_context(item.nodeid + "|teardown")


def pytest_unconfigure(config):
    out = os.environ.get("TRAJFACTORY_PROBE_OUT")
    if RECORDER is not None and out and not hasattr(config, "workerinput"):
        RECORDER.write(out)
