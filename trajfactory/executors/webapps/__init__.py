"""Web sites for web tasks, each behind a site adapter: `launch(app, seed)` starts a fresh, seeded episode.

    with launch("shop", seed=3) as site:
        site.url            # http://127.0.0.1:PORT
        site.accounts       # {"alice": "cedar-1234", ...}
        site.state()        # {"app": "shop", "seed": 3, "products": [...], "cart": [...], "orders": [...]}
        site.reset()        # back to the seeded state

The bundled apps (shop, forum, tracker) and the real ones (`django_admin`, `roundup`) are adapters on the same interface
(`adapter.py`); `registry.py` adds entry-point plugins and the recipe's `web.sites:` entries.
"""

from __future__ import annotations

from .adapter import BundledAdapter, SiteAdapter, SiteHandle
from .base import AppConfig, AppInstance, WebApp
from .forum import ForumApp
from .registry import adapters, get_adapter, launch, register, register_sites, unregister
from .shop import ShopApp
from .tracker import TrackerApp

APPS: dict[str, type[WebApp]] = {cls.name: cls for cls in (ShopApp, ForumApp, TrackerApp)}
"""The bundled app classes by name (each is registered as a `BundledAdapter`)."""

__all__ = ["APPS", "AppConfig", "AppInstance", "BundledAdapter", "SiteAdapter", "SiteHandle", "WebApp", "adapters",
           "get_adapter", "launch", "register", "register_sites", "unregister"]
