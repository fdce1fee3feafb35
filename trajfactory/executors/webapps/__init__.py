"""Bundled self-hosted web apps for web tasks: `launch(app, seed)` starts a fresh, seeded instance.

    with launch("shop", seed=3) as site:
        site.url            # http://127.0.0.1:PORT
        site.accounts       # {"alice": "cedar-1234", ...}
        site.state()        # {"app": "shop", "seed": 3, "products": [...], "cart": [...], "orders": [...]}
"""

from __future__ import annotations

from .base import AppConfig, AppInstance, WebApp, serve
from .forum import ForumApp
from .shop import ShopApp
from .tracker import TrackerApp

APPS: dict[str, type[WebApp]] = {cls.name: cls for cls in (ShopApp, ForumApp, TrackerApp)}


def launch(app: str, seed: int = 0, config: AppConfig | None = None) -> AppInstance:
    """Start `app` on a free loopback port with a fresh database seeded by `seed` (or `config.seed`)."""
    if app not in APPS:
        raise ValueError(f"unknown web app {app!r}; bundled apps are {sorted(APPS)}")
    config = config or AppConfig(seed=seed)
    return serve(APPS[app](config.seed), config)


__all__ = ["APPS", "AppConfig", "AppInstance", "WebApp", "launch"]
