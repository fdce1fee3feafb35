"""What the batch worker keeps warm for its children, and what a child reports back to fill it.

Part of the warm test worker (`batch_worker.py`): `batchrun.py` copies it into the sandbox as
`trajfactory_batch_worker_warm.py` beside the worker, which imports it by that name. Standard library only (pytest
is imported lazily, the sandbox's own).

- `preload`: third-party modules (never the checkout's, never one pytest rewrites) imported once in the worker: only
  those a child held when its collection finished, which the maintainers' run holds before its first test too;
- `COMPILED` / `REWRITTEN`: the checkout's files compiled, and the files pytest rewrites (test modules, conftests,
  pytest plugins) rewritten, once from the clean checkout, taken by a child's import only where its source is
  byte-identical (`install_code_caches`);
- `warm_regexes`: the regular expressions children compiled, compiled once in the worker;
- `Probe`, `imported` and `compiled_regexes`: what a child reports (its phases' CPU, what it imported and compiled
  beyond what its worker held at the fork).
"""

from __future__ import annotations

import importlib
import os
import sys
import time

COMPILED: dict[str, tuple[bytes, object]] = {}
"""Checkout file -> (its clean source, the code object `compile` makes of it): what an import of an unchanged file
in a child would compile, compiled once here. A child uses it only for byte-identical source (a patched file misses)."""
REWRITTEN: dict[str, tuple[bytes, tuple]] = {}
"""Test module, conftest or pytest plugin -> (its clean source, what pytest's `_rewrite_test` returns for it), the same
way."""
_state: dict = {"rewrite_test": None}
"""pytest's own `_rewrite_test`, once wrapped."""
PARENT: dict = {"modules": {}, "regexes": set()}
"""The worker's modules and compiled regular expressions at the last fork (`snapshot`)."""


def rewrite_cache() -> bool:
    return _state["rewrite_test"] is not None


class Probe:
    """Observes the child's pytest session (never changes it): CPU at each phase, the tests' own durations."""

    def __init__(self):
        self.marks: dict[str, float] = {}
        self.durations = 0.0
        self.tests = 0
        self.collected_modules: set[str] = set()
        """The modules held when collection finished: what a test imports in its body is not among them."""
        self.marked: set[str] = set()
        """The names pytest marked for assertion rewriting (`AssertionRewritingHook.mark_rewrite`): the modules of
        its plugins' distributions, and those the plugins name."""

    def pytest_configure(self, config):
        self.marks["configured"] = time.process_time()

    def pytest_collection_finish(self, session):
        self.marks["collected"] = time.process_time()
        self.collected_modules = set(sys.modules)
        hook = getattr(session.config.pluginmanager, "rewrite_hook", None)
        self.marked = {name for name in getattr(hook, "_must_rewrite", ()) if isinstance(name, str)}

    def pytest_runtest_logreport(self, report):
        self.durations += getattr(report, "duration", 0.0) or 0.0
        if report.when == "call":
            self.tests += 1

    def pytest_sessionfinish(self, session):
        self.marks["finished"] = time.process_time()


def _rewritten(module) -> bool:
    loader = getattr(module, "__loader__", None)
    return type(loader).__name__ == "AssertionRewritingHook"


def warm_lookups(workdir: str) -> None:
    """List the directories a child's pytest searches for installed distributions (its plugins' entry points):
    importlib.metadata caches each listing under the directory's mtime, so a changed directory is listed again."""
    try:
        import importlib.metadata as metadata

        for _ in metadata.distributions(path=[workdir, *sys.path]):
            pass
    except Exception:  # noqa: BLE001 - nothing warmed: the child lists them itself
        pass


def snapshot() -> None:
    """Remember what this process holds before it forks: a child reports only what it added (`imported`)."""
    PARENT["modules"] = dict(sys.modules)
    PARENT["regexes"] = set(_regex_keys())


def imported(workdir: str, scratch: tuple[str, ...], collected: set[str] | frozenset[str] = frozenset(),
             marked: set[str] | frozenset[str] = frozenset()) -> tuple[list[str], list[str], list[str]]:
    """What this child imported beyond its worker's modules: (the third-party modules, that is outside the checkout
    and the scratch dirs and not rewritten by pytest, of those it held when its collection finished (`collected`);
    the checkout's files imported plainly; the files pytest's assertion rewriting imported, wherever they live: test
    modules, conftests, pytest plugins).

    A module a test imports in its body is never preloaded: a test may check that it is not imported yet (wrapt
    2.5.2's `test_import_deadlock_3` asserts `wsgiref` is not in `sys.modules` before a post-import hook imports it;
    preloaded after the first batch, it failed every gold proof that ran it). The code caches take every file: a
    cached code object changes nothing a test can see.

    Nor is a module pytest marked for rewriting (`marked`: the modules of its plugins' distributions), though the
    child held it plainly: preloaded, pytest warns at its start that it cannot rewrite it, and a project that turns
    warnings into errors stops there. A child whose tests import hypothesis held hypothesis's `_hypothesis_globals`
    plainly; preloaded, it stopped every run of yarl 1.25.1 (`filterwarnings = error`) after a warm worker's first
    batch, and failed all six of its gold proofs."""
    third, plain, rewritten, own = set(), set(), set(), set()
    parent = PARENT["modules"]
    for name, module in list(sys.modules.items()):
        if parent.get(name) is module:
            continue
        file = getattr(module, "__file__", None)
        spec = getattr(module, "__spec__", None)
        origin = getattr(spec, "origin", None) or file
        if _rewritten(module):
            if origin and origin.endswith(".py"):
                rewritten.add(origin)
            continue
        if not file or name in ("__main__", "__mp_main__"):
            continue
        path = os.path.realpath(file)
        if path.startswith(workdir + os.sep):
            own.add(name)
            if origin and origin.endswith(".py"):
                plain.add(origin)
        elif not path.startswith(scratch) and name in collected:
            third.add(name)
    # a compiled module of the project's own package (wrapt's `_wrappers`, built with the image and loaded from beside
    # the environment) is no third-party module: importing it imports its package from the checkout
    third = {name for name in third if not any(name.startswith(package + ".") for package in own)
             and not any(name == mark or name.startswith(mark + ".") for mark in marked)}
    return sorted(third), sorted(plain), sorted(rewritten)


def _regex_keys() -> list:
    """The keys of `re`'s cache of compiled patterns ((type, pattern, flags) on every CPython since 3.7)."""
    import re

    keys = []
    for cache in (getattr(re, "_cache", None), getattr(re, "_cache2", None)):
        if isinstance(cache, dict):
            keys += [k for k in cache if isinstance(k, tuple) and len(k) == 3]
    return keys


def compiled_regexes() -> list[tuple[str, int]]:
    """The str patterns (with their flags) this child compiled through `re` that its worker had not."""
    seen = PARENT["regexes"]
    return sorted({(k[1], int(k[2])) for k in _regex_keys() if k not in seen and k[0] is str and isinstance(k[1], str)
                   and isinstance(k[2], int)})


def warm_regexes(patterns: list) -> None:
    """Compile the patterns children compiled, so a child's `re.compile` of one is a cache hit. A pattern whose
    compilation warns is left out (a child must see that warning), and so is one that does not compile."""
    import re
    import warnings

    for pattern, flags in patterns:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                re.compile(pattern, flags)
            except Exception:  # noqa: BLE001 - the child raises it again, uncached
                continue
        if caught:
            for cache in (getattr(re, "_cache", None), getattr(re, "_cache2", None)):
                if isinstance(cache, dict):
                    cache.pop((str, pattern, flags), None)


def install_code_caches() -> None:
    """Make this process's imports take code objects from COMPILED / REWRITTEN where the source is byte-identical.

    The source loader's `source_to_code` and pytest's `_rewrite_test` are wrapped, nothing else: a miss (a patched
    file, another pytest, a project that turns on `enable_assertion_pass_hook`) compiles as before."""
    import importlib._bootstrap_external as external

    source_to_code = external.SourceLoader.source_to_code

    def cached_source_to_code(self, data, path, *, _optimize=-1):
        hit = COMPILED.get(path)
        if hit is not None and _optimize == -1 and hit[0] == data:
            return hit[1]
        return source_to_code(self, data, path, _optimize=_optimize)

    external.SourceLoader.source_to_code = cached_source_to_code
    try:
        import inspect

        from _pytest.assertion import rewrite
    except ImportError:
        return
    original = getattr(rewrite, "_rewrite_test", None)
    if original is None or list(inspect.signature(original).parameters)[:2] != ["fn", "config"]:
        return

    def cached_rewrite_test(fn, config, *rest, **kw):
        hit = REWRITTEN.get(str(fn))
        if hit is not None and not rest and not kw and sys.dont_write_bytecode:
            try:
                plain = config is None or not config.getini("enable_assertion_pass_hook")
                if plain and fn.read_bytes() == hit[0]:
                    return hit[1]
            except Exception:  # noqa: BLE001 - anything odd: rewrite as pytest would
                pass
        return original(fn, config, *rest, **kw)

    _state["rewrite_test"] = original
    rewrite._rewrite_test = cached_rewrite_test


def precompile(plain: list[str], rewritten: list[str]) -> None:
    """Fill COMPILED / REWRITTEN from the clean checkout (the caller restored it) for the files not there yet."""
    for path in plain:
        if path in COMPILED:
            continue
        try:
            with open(path, "rb") as fh:
                data = fh.read()
            COMPILED[path] = (data, compile(data, path, "exec", dont_inherit=True))
        except (OSError, SyntaxError, ValueError):
            continue
    rewrite_test = _state["rewrite_test"]
    if rewrite_test is None:
        return
    from pathlib import Path

    for path in rewritten:
        if path in REWRITTEN:
            continue
        try:
            with open(path, "rb") as fh:
                data = fh.read()
            REWRITTEN[path] = (data, rewrite_test(Path(path), None))
        except Exception:  # noqa: BLE001 - a file pytest cannot rewrite here is rewritten by the child, as ever
            continue


def preload_order(names: list[str]) -> list[str]:
    """`names` in an order a program's own imports would take: a private top-level module (`_asyncio`, `_elementtree`,
    a C accelerator) after the public ones, which import it themselves. Imported first, `_asyncio` pulls in
    `asyncio.tasks` before it is itself registered, so `asyncio.tasks` falls back to its pure-Python task registry
    while tasks register in the C one: `asyncio.current_task()` is then None inside `asyncio.run` (tenacity 9.2.1's
    async tests failed in every preloaded worker, through sniffio)."""
    return sorted(names, key=lambda name: (name.startswith("_"), name))


def preload(names: list[str], workdir: str) -> list[str]:
    """Import `names` here (failures ignored), in `preload_order`; the names that loaded code of the checkout, which
    forbid preloading."""
    for name in preload_order(names):
        try:
            importlib.import_module(name)
        except BaseException:  # noqa: BLE001 - a module that does not import here is simply not preloaded
            pass
    return checkout_modules(workdir)


def checkout_modules(workdir: str) -> list[str]:
    """The modules this process holds whose code is the checkout's."""
    held = []
    for name, module in list(sys.modules.items()):
        file = getattr(module, "__file__", None)
        if file and os.path.realpath(file).startswith(workdir + os.sep):
            held.append(name)
    return sorted(held)
