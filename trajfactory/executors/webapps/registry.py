"""The registry of site adapters: built-in ones, entry-point plugins and the recipe's `web.sites:` entries.

    register_sites(recipe.web.sites)         # recipe entries: a built-in kind or `module:Class`, with options
    with launch("django_admin", seed=0) as site: ...

Plugins declare an entry point in group `trajfactory.sites` whose object is a `SiteAdapter` subclass (called with
no arguments) or instance. Registering an adapter registers its facts (settings/sites.py) for the layers below.
"""

from __future__ import annotations

import importlib
import threading
from importlib.metadata import entry_points
from typing import Iterable

from trajfactory.settings.sites import SiteEntry, register_facts, unregister_facts

from .adapter import BundledAdapter, SiteAdapter, SiteHandle
from .base import AppConfig
from .django_admin import DjangoAdminAdapter
from .forum import ForumApp
from .roundup_tracker import RoundupAdapter
from .shop import ShopApp
from .tracker import TrackerApp

ENTRY_POINT_GROUP = "trajfactory.sites"
KINDS: dict[str, type[SiteAdapter]] = {cls.kind: cls for cls in (BundledAdapter, DjangoAdminAdapter,
                                                                   RoundupAdapter)}
"""Adapter kinds a recipe entry names without a module path."""

_ADAPTERS: dict[str, SiteAdapter] = {}
_LOCK = threading.RLock()


def register(adapter: SiteAdapter) -> SiteAdapter:
    """Make `adapter` the one of its site name (a later registration of the same name replaces it)."""
    if not isinstance(adapter, SiteAdapter):
        raise TypeError(f"site adapter {adapter!r} is a {type(adapter).__name__}; expected a SiteAdapter subclass instance")
    with _LOCK:
        _ADAPTERS[adapter.name] = adapter
        register_facts(adapter.facts)
    return adapter


def unregister(name: str) -> None:
    """Forget site `name` (a recipe's sites when its run ends, a test's plugins)."""
    with _LOCK:
        _ADAPTERS.pop(name, None)
        unregister_facts(name)


def _load_class(path: str, what: str) -> type[SiteAdapter]:
    module, _, attr = path.partition(":")
    if not module or not attr:
        raise ValueError(f"{what}: kind {path!r} is neither a built-in kind {sorted(KINDS)} nor 'module:Class'")
    try:
        obj = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"{what}: cannot load {path!r}: {exc}") from exc
    if not (isinstance(obj, type) and issubclass(obj, SiteAdapter)):
        raise ValueError(f"{what}: {path!r} is not a SiteAdapter subclass")
    return obj


def adapter_from_entry(entry: SiteEntry) -> SiteAdapter:
    """The adapter a recipe entry declares: its kind built with its options, under its name and fact overrides."""
    what = f"web.sites entry {entry.name!r}"
    cls = KINDS.get(entry.kind) or _load_class(entry.kind, what)
    try:
        adapter = cls(name=entry.name, **entry.options)
    except TypeError as exc:
        raise ValueError(f"{what}: options {sorted(entry.options)} do not fit {cls.__name__}: {exc}") from exc
    return adapter.with_facts(**entry.fact_overrides())


def register_sites(entries: Iterable[SiteEntry | dict]) -> list[SiteAdapter]:
    """Register every recipe `web.sites:` entry; returns the adapters."""
    return [register(adapter_from_entry(e if isinstance(e, SiteEntry) else SiteEntry.model_validate(e)))
            for e in entries]


def load_entry_points() -> list[SiteAdapter]:
    """Register the adapters installed packages declare in entry-point group `trajfactory.sites`."""
    out = []
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        obj = ep.load()
        out.append(register(obj() if isinstance(obj, type) else obj))
    return out


def adapters() -> dict[str, SiteAdapter]:
    with _LOCK:
        return dict(_ADAPTERS)


def get_adapter(name: str) -> SiteAdapter:
    with _LOCK:
        if name not in _ADAPTERS:
            raise ValueError(f"unknown web site {name!r}; registered sites are {sorted(_ADAPTERS)} (declare others "
                             f"in the recipe's web.sites: or as a '{ENTRY_POINT_GROUP}' entry point)")
        return _ADAPTERS[name]


def launch(app: str, seed: int = 0, config: AppConfig | None = None) -> SiteHandle:
    """A fresh, seeded episode of site `app` through its adapter (`config`: host/port of a bundled app)."""
    adapter = get_adapter(app)
    if config is None:
        return adapter.start(seed)
    if not isinstance(adapter, BundledAdapter):
        raise ValueError(f"launch({app!r}, config=...): only bundled apps take an AppConfig; pass seed= instead")
    return adapter.start(config.seed, config)


for _app in (ShopApp, ForumApp, TrackerApp):
    register(BundledAdapter(_app))
register(DjangoAdminAdapter())
register(RoundupAdapter())
load_entry_points()
