"""Which tests a removed base class reaches: those that ran a line naming the class, a subclass of it, or one of
their methods.

Removing a base changes what the class is (`raise X()` fails once `X` is no longer an exception, `isinstance(obj,
Base)` turns false, an inherited method is gone), but only where the class is used, and a use names it: a `raise`,
an `except`, an `isinstance` check, a call that makes an instance (whose inherited behaviour is then used by the same
test), an attribute of the class. Every test that can notice the change ran such a line in the reference run, or
one of the class's own methods (a `super()` call that now finds nothing). So the tests to run are the ones whose
coverage contexts include those lines, found by reading every Python file of the repository, tests included. A
subclass (`class Sub(X)` at import time) changes with it: its name and methods are followed the same way.

The whole suite still runs where that reading cannot see every use:

- the class has a decorator or class keywords (a metaclass), or the removed base is not a builtin type or a plain
  class of the project: a metaclass, `__init_subclass__`, a decorator or a base from outside the project may act
  when a class is created (registries, ABCs, enums, dataclasses), before any test runs;
- a name is used at import or collection time other than as a subclass's base (`alias = X`, a decorator or default
  value naming it, a registry built at import, `parametrize([X, ...])`) in a file the reference run executed (the
  lines are kept as `import_time` and looked up in its coverage: an example script no test imports does not count),
  or appears as a string literal (`getattr`, `type(e).__name__ == "X"`); a function's annotations count only when
  a decorator may read them (`singledispatch`'s `register` does; `property`, `classmethod`, `overload` and
  `abstractmethod` do not).
"""

from __future__ import annotations

import ast
import builtins

from trajfactory.synthesizers.swe.ast_edits import _DEFS
from trajfactory.synthesizers.swe.attribution import OPAQUE_METHODS, References
from trajfactory.synthesizers.swe.name_uses import _Found, _named, _scan, _spans

BUILTIN_TYPES = frozenset(n for n in dir(builtins) if isinstance(getattr(builtins, n), type))
STDLIB_BASES = frozenset({
    "ABC", "Enum", "IntEnum", "Flag", "IntFlag", "StrEnum", "NamedTuple", "Protocol",
    "Hashable", "Awaitable", "Coroutine", "AsyncIterable", "AsyncIterator", "AsyncGenerator", "Iterable", "Iterator",
    "Generator", "Reversible", "Sized", "Container", "Callable", "Collection", "Set", "MutableSet", "Mapping",
    "MutableMapping", "MappingView", "KeysView", "ItemsView", "ValuesView", "Sequence", "MutableSequence",
    "ByteString", "Buffer", "tzinfo", "date", "datetime", "time", "timedelta", "Thread", "JSONEncoder",
    "JSONDecoder", "HTMLParser",
})
"""Standard-library bases whose class creation keeps to the class itself (the abstract base classes of `abc` and
`collections.abc`, enums, named tuples, protocols, `datetime`'s types, threads, JSON coders, the HTML parser): what
they change shows only where the class is used by name."""


def _opaque_base(base: str, refs: References, seen: frozenset[str] = frozenset()) -> str | None:
    """Why creating a class with or without `base` may do more than set its bases; None when it may not."""
    try:
        node = ast.parse(base, mode="eval").body
    except SyntaxError:
        return f"the base `{base}` could not be read"
    name = _named(node)
    if name is None:
        return f"the base `{base}` is an expression (a generic, a call): what it does at class creation is not known"
    if name in seen:  # already being checked (a class of the same name as its base, from another module)
        return None
    defs = refs.classes.get(name)
    if not defs:
        if name in BUILTIN_TYPES or name in STDLIB_BASES:
            return None
        return f"the base `{base}` comes from outside the project: what it does at class creation is not known"
    for cls in defs:
        if cls.decorator_list or cls.keywords:
            return f"the base `{name}` has a class decorator or metaclass"
        if any(isinstance(s, _DEFS) and s.name in OPAQUE_METHODS for s in cls.body):
            return f"the base `{name}` defines a hook Python runs at class creation or comparison"
        for b in cls.bases:
            if (why := _opaque_base(ast.unparse(b), refs, seen | {name})) is not None:
                return why
    return None


def _method_ranges(cls: ast.ClassDef) -> set[tuple[int, int]]:
    return {(s.body[0].lineno, s.end_lineno or s.body[0].lineno) for s in cls.body if isinstance(s, _DEFS)}


def removed_base(cls: ast.ClassDef, base: str, file: str, refs: References | None) -> dict:
    """The attribution of removing `base` from `cls` (defined in `file`): {"refs": {file: [[first, last], ...]}}, the
    lines whose tests can notice it, or {"full": reason}."""
    if refs is None:
        return {"full": "the repository's references were not read"}
    if cls.decorator_list or cls.keywords:
        return {"full": f"class `{cls.name}` has a class decorator or class keywords that see its bases"}
    if (why := _opaque_base(base, refs)) is not None:
        return {"full": why}
    names = {cls.name}
    ranges: dict[str, set[tuple[int, int]]] = {file: _method_ranges(cls)}
    while True:
        found = _Found()
        for rel, tree in refs.trees.items():
            try:
                _scan(tree, names, False, tree, rel, found)
            except RecursionError:
                return {"full": f"{rel} is nested too deeply to read"}
        for rel, sub in found.subclasses:
            if sub.decorator_list or sub.keywords:
                return {"full": f"the subclass `{sub.name}` has a class decorator or class keywords"}
            ranges.setdefault(rel, set()).update(_method_ranges(sub))
        new = ({sub.name for _, sub in found.subclasses} | found.aliases) - names
        if not new:
            break
        names |= new
    if (named := sorted(names & refs.strings)):
        return {"full": f"the string {named[0]!r} appears in the repository (getattr, a name compared as text)"}
    for rel, spans in found.ranges.items():
        ranges.setdefault(rel, set()).update(spans)
    return {"refs": _spans(ranges), "import_time": _spans(found.import_time), "names": sorted(names)}
