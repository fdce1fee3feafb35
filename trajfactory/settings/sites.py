"""What the web half knows about a site, as data: `SiteFacts`, and the recipe's `web.sites:` entries.

A site adapter (`executors/webapps/adapter.py`) starts, resets and reads an app; its `SiteFacts` tell the
layers below the executors what they need without starting anything: the words that tie a tutorial to the
site, the tutorial sources declared for it, the state tables an outcome sentence can name, the volatile
columns that checks ignore, the log tables, the hosts the browser may reach, the features the site
does not have (for infeasible twins), and the site's own wordings of its controls (grounding synonyms).

The facts registry lives here, at the bottom, so sources and verifiers can read it. The adapters register
their facts when the adapter registry loads; a lookup made before that loads it first (`PROVIDER`), the way
entry-point plugins are loaded, so no layer below the executors imports them.

    web:
      sites:
        - name: wiki                       # the name tasks and tutorials use
          kind: mypkg.sites:WikiAdapter    # a built-in kind (bundled, django_admin, roundup) or module:Class
          options: {workers: 2}            # passed to the adapter
          sources: [https://docs.example.org/wiki/]   # tutorials from here are about this site
          keywords: {wiki: 3, page: 1}
          synonyms: [[Edit source, Edit this page]]   # wordings of one control a tutorial may use
"""

from __future__ import annotations

import importlib
import threading
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

PROVIDER = "trajfactory.executors.webapps.registry"
"""The module whose import registers the built-in and entry-point adapters' facts."""
ANY_TABLE = "*"


class SiteFacts(BaseModel):
    """Site-specific facts the synthesizers, sources and verifiers need (no running app)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, pattern=r"^[a-z][a-z0-9_-]*$")
    """The site's name in tasks (`WebEnvironment.app`) and tutorials (`Tutorial.site`)."""
    keywords: dict[str, float] = Field(default_factory=dict)
    """Words that tie a page to this site, with how specific each is (used only when no source declares the site)."""
    sources: list[str] = Field(default_factory=list)
    """Tutorial URI prefixes whose pages are about this site: declared, not guessed."""
    outcome_tables: dict[str, list[str]] = Field(default_factory=dict)
    """State table -> words that name it in an expected-outcome sentence ("user", "group" ...)."""
    volatile: dict[str, list[str]] = Field(default_factory=dict)
    """State table (or `*` for every table) -> columns left out of diffs and checks (sessions, times, hashes)."""
    log_tables: list[str] = Field(default_factory=list)
    """State tables that log reading (audit, analytics), not application data."""
    hosts: list[str] = Field(default_factory=lambda: ["127.0.0.1", "localhost"])
    """Hosts the browser may reach during an episode."""
    missing_features: list[str] = Field(default_factory=list)
    """Plausible features the site does not have: the step an infeasible twin asks for."""
    synonyms: list[list[str]] = Field(default_factory=list)
    """Groups of wordings of one control or value of this site ("Add to cart", "Add to basket"): its texts across
    versions and skins, which a tutorial may use for the one on the page. Generic UI wordings ("Log in" / "Sign
    in") are known for every site (agents/grounding.py)."""

    def volatile_columns(self, table: str) -> set[str]:
        return set(self.volatile.get(ANY_TABLE, [])) | set(self.volatile.get(table, []))


class SiteEntry(BaseModel):
    """One `web.sites:` entry of the recipe: an adapter kind with its options, plus facts that override the kind's."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, pattern=r"^[a-z][a-z0-9_-]*$")
    kind: str = Field(min_length=1)
    """A built-in adapter kind (`bundled`, `django_admin`, `roundup`) or a plugin class as `module:Class`."""
    options: dict[str, Any] = Field(default_factory=dict)
    """Keyword arguments of the adapter's constructor."""
    keywords: dict[str, float] | None = None
    sources: list[str] | None = None
    outcome_tables: dict[str, list[str]] | None = None
    volatile: dict[str, list[str]] | None = None
    log_tables: list[str] | None = None
    hosts: list[str] | None = None
    missing_features: list[str] | None = None
    synonyms: list[list[str]] | None = None
    """Added to the kind's own wordings (every other fact given here replaces the kind's)."""

    def fact_overrides(self) -> dict[str, Any]:
        return {k: v for k, v in self.model_dump(exclude={"kind", "options"}).items() if v is not None}


_FACTS: dict[str, SiteFacts] = {}
_LOCK = threading.RLock()
_loaded = False


def register_facts(facts: SiteFacts) -> None:
    with _LOCK:
        _FACTS[facts.name] = facts


def unregister_facts(name: str) -> None:
    with _LOCK:
        _FACTS.pop(name, None)


def _ensure_loaded() -> None:
    global _loaded
    with _LOCK:
        if not _loaded:
            _loaded = True
            importlib.import_module(PROVIDER)


def site_facts(name: str | None) -> SiteFacts | None:
    """The facts of site `name`, None for an unknown site."""
    _ensure_loaded()
    return _FACTS.get(name or "")


def known_sites() -> list[str]:
    _ensure_loaded()
    return sorted(_FACTS)


def all_site_facts() -> list[SiteFacts]:
    _ensure_loaded()
    return [_FACTS[n] for n in sorted(_FACTS)]


def declared_site(uri: str) -> str | None:
    """The site a tutorial source is declared for (the longest matching prefix), None when none is."""
    hits = [(len(p), f.name) for f in all_site_facts() for p in f.sources if p and uri.startswith(p)]
    return max(hits)[1] if hits else None
