"""The site adapter interface: how the web half starts, resets and reads any web app, bundled or real.

    adapter = get_adapter("shop")            # built-in, entry point (group `trajfactory.sites`) or recipe `web.sites:`
    with adapter.start(seed=3) as site:      # a fresh, isolated episode of the app
        site.url, site.accounts              # base URL, test accounts (username -> password)
        site.state()                         # {"app": ..., "seed": ..., table: [rows], ...} from declared queries
        site.reset()                         # back to the seeded state (same URL, same accounts)

An adapter holds `SiteFacts` (settings/sites.py): the tutorial sources and keywords of the site, the tables an
outcome names, volatile columns, log tables, allowed hosts, and missing features for infeasible twins. A plugin
subclasses `SiteAdapter`, takes its recipe options as keyword arguments (`name` among them) and implements
`start`; `accounts` and `labels` default to starting an episode and reading them.
"""

from __future__ import annotations

from typing import Any, ClassVar, Protocol, runtime_checkable

from trajfactory.settings.sites import SiteFacts

from .base import AppConfig, AppInstance, WebApp, serve

__all__ = ["BundledAdapter", "SiteAdapter", "SiteHandle"]


@runtime_checkable
class SiteHandle(Protocol):
    """One running episode of a site: what the browser, the replay and the verifiers use."""

    url: str

    @property
    def accounts(self) -> dict[str, str]: ...

    @property
    def labels(self) -> dict[str, str]: ...

    def state(self) -> dict[str, Any]: ...

    def reset(self) -> None: ...

    def close(self) -> None: ...

    def __enter__(self) -> "SiteHandle": ...

    def __exit__(self, *exc: Any) -> None: ...


class SiteAdapter:
    """Base of every site adapter: `facts` plus `start(seed)`; one adapter serves many episodes at once."""

    kind: ClassVar[str] = ""
    """The name a recipe's `web.sites: [{kind: ...}]` uses for this adapter class."""

    def __init__(self, facts: SiteFacts):
        self.facts = facts

    @property
    def name(self) -> str:
        return self.facts.name

    def start(self, seed: int = 0) -> SiteHandle:
        """A fresh, isolated episode of the app seeded by `seed`."""
        raise NotImplementedError(f"site adapter {type(self).__name__} ({self.name!r}) must implement start(seed)")

    def accounts(self, seed: int = 0) -> dict[str, str]:
        """The test accounts of an episode seeded by `seed` (username -> password)."""
        with self.start(seed) as site:
            return dict(site.accounts)

    def labels(self, seed: int = 0) -> dict[str, str]:
        """Label key -> the button or link text the seeded site shows (infeasible twins avoid these)."""
        with self.start(seed) as site:
            return dict(site.labels)

    def with_facts(self, **overrides: Any) -> "SiteAdapter":
        """This adapter under other facts (a recipe entry's name, sources, keywords ...); `synonyms` add to the
        kind's own wordings instead of replacing them."""
        if "synonyms" in overrides:
            overrides["synonyms"] = [*self.facts.synonyms, *overrides["synonyms"]]
        if overrides:
            self.facts = self.facts.model_copy(update=overrides)
        return self


class BundledAdapter(SiteAdapter):
    """One of the bundled apps (`shop`, `forum`, `tracker`): in-memory sqlite, served in a thread; the facts are
    the app class's `FACTS`. Recipe form: `{name: myshop, kind: bundled, options: {app: shop}}`."""

    kind = "bundled"

    def __init__(self, app: type[WebApp] | str, name: str | None = None):
        if isinstance(app, str):
            bundled = {cls.name: cls for cls in WebApp.__subclasses__()}
            if app not in bundled:
                raise ValueError(f"bundled site adapter: unknown app {app!r}; options.app must be one of {sorted(bundled)}")
            app = bundled[app]
        self.app_class = app
        # the texts the seed picks among for one control are wordings of it, as a tutorial may use any of them
        labels = [list(texts) for texts in [*app.COMMON_LABELS.values(), *app.LABELS.values()] if len(texts) > 1]
        facts = app.FACTS.model_copy(update={"name": name or app.FACTS.name, "synonyms": [*labels, *app.FACTS.synonyms]})
        super().__init__(facts)

    def start(self, seed: int = 0, config: AppConfig | None = None) -> AppInstance:
        config = config or AppConfig(seed=seed)
        return serve(self.app_class(config.seed, site=self.name), config)

    def accounts(self, seed: int = 0) -> dict[str, str]:
        app = self.app_class(seed)  # seeding is all it takes: no server
        try:
            return dict(app.accounts)
        finally:
            app.db.close()

    def labels(self, seed: int = 0) -> dict[str, str]:
        app = self.app_class(seed)
        try:
            return dict(app.labels)
        finally:
            app.db.close()
