"""Django's admin (PyPI `django`) as a site: a real, widely used, self-hosted web app written by others.

The adapter writes a minimal Django project (settings in code, SQLite, `django.contrib.admin` + `auth`), migrates
it once per seed into a template database and seeds users and groups there. Each episode copies the template and
serves it with `manage.py runserver --noreload` in its own process on a free loopback port, so episodes never share
state; `reset()` copies the template back over the live database (SQLite's backup API, safe while it is served).

State for checks comes from declared queries over the app's own database (`STATE_QUERIES`). Volatile fields:
`last_login` and `date_joined` are ignored; the salted `password` hash is normalized to `seeded` (as in the
template), `set` (changed or new) or `unusable`, since only whether it was set matters.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from trajfactory.schema import content_hash
from trajfactory.settings.sites import SiteFacts

from .served import ServedAdapter, ServedEpisode, copy_db, read_db

SETTINGS = '''import os
SECRET_KEY = "trajfactory-demo-site-not-a-secret"
DEBUG = True
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
INSTALLED_APPS = ["django.contrib.admin", "django.contrib.auth", "django.contrib.contenttypes",
                  "django.contrib.sessions", "django.contrib.messages", "django.contrib.staticfiles"]
MIDDLEWARE = ["django.contrib.sessions.middleware.SessionMiddleware", "django.middleware.common.CommonMiddleware",
              "django.middleware.csrf.CsrfViewMiddleware", "django.contrib.auth.middleware.AuthenticationMiddleware",
              "django.contrib.messages.middleware.MessageMiddleware",
              "django.middleware.clickjacking.XFrameOptionsMiddleware"]
ROOT_URLCONF = "tf_site_urls"
TEMPLATES = [{"BACKEND": "django.template.backends.django.DjangoTemplates", "APP_DIRS": True, "OPTIONS": {
    "context_processors": ["django.template.context_processors.request", "django.contrib.auth.context_processors.auth",
                           "django.contrib.messages.context_processors.messages"]}}]
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": os.environ["TF_SITE_DB"]}}
STATIC_URL = "static/"
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
# demo accounts only: a fast (still salted) hasher keeps each sign-in of an episode quick
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
'''
URLS = '''from django.contrib import admin
from django.urls import path
from django.views.generic import RedirectView
urlpatterns = [path("admin/", admin.site.urls), path("", RedirectView.as_view(url="/admin/"))]
'''
SEED = '''import json, sys
import django
django.setup()
from django.core.management import call_command
from django.contrib.auth.models import Group, Permission, User
call_command("migrate", verbosity=0, interactive=False)
plan = json.loads(sys.argv[1])
for g in plan["groups"]:
    group = Group.objects.create(name=g["name"])
    group.permissions.set(Permission.objects.filter(codename__in=g["perms"]))
for u in plan["users"]:
    user = User.objects.create_user(u["username"], u["email"], u["password"], first_name=u["first"],
                                    last_name=u["last"], is_staff=u["staff"], is_superuser=u["superuser"])
    user.groups.set(Group.objects.filter(name__in=u["groups"]))
'''
FIRST = ["amira", "boris", "carla", "dmitri", "elif", "femi", "greta", "hugo", "ines", "jasper", "keiko", "luca"]
LAST = ["Alvarez", "Becker", "Costa", "Dahl", "Evans", "Fontaine", "Gupta", "Horvat", "Ivanova", "Jung"]
GROUPS = {"Editors": ["add_group", "change_group"], "Support": ["view_user", "change_user"],
          "Auditors": ["view_user", "view_group", "view_logentry"], "Moderators": ["change_user", "view_user"]}
STATE_QUERIES = {
    "auth_user": ("SELECT id, username, first_name, last_name, email, is_staff, is_active, is_superuser, password, "
                  "last_login, date_joined FROM auth_user ORDER BY id"),
    "auth_group": "SELECT id, name FROM auth_group ORDER BY id",
    "auth_user_groups": ("SELECT ug.id, u.username, g.name AS group_name FROM auth_user_groups ug "
                         "JOIN auth_user u ON u.id=ug.user_id JOIN auth_group g ON g.id=ug.group_id ORDER BY ug.id"),
    "auth_user_user_permissions": ("SELECT up.id, u.username, p.codename, p.name AS permission FROM auth_user_user_permissions up "
                                   "JOIN auth_user u ON u.id=up.user_id JOIN auth_permission p ON p.id=up.permission_id "
                                   "ORDER BY up.id"),
    "auth_group_permissions": ("SELECT gp.id, g.name AS group_name, p.codename, p.name AS permission FROM auth_group_permissions gp "
                               "JOIN auth_group g ON g.id=gp.group_id JOIN auth_permission p ON p.id=gp.permission_id "
                               "ORDER BY gp.id"),
}
"""State table -> SQL over the app's own database (names, not ids, where rows point at users, groups, permissions)."""
LABELS = {"add_user": "Add user", "add_group": "Add group", "save": "Save", "log_in": "Log in", "log_out": "Log out",
          "delete": "Delete", "change_password": "Change password", "history": "History", "view_site": "View site"}
"""The admin's own button and link texts (the same for every seed)."""

FACTS = SiteFacts(
    name="django_admin",
    keywords={"django": 4, "superuser": 2, "permission": 2, "permissions": 2, "staff": 1, "groups": 1,
              "admin": 1, "administration": 1},
    outcome_tables={"auth_user_user_permissions": ["permission"], "auth_user_groups": ["member"],
                    "auth_group": ["group"], "auth_user": ["user", "account"]},
    volatile={"auth_user": ["last_login", "date_joined"]},
    missing_features=["Export users to CSV", "Send invitation email", "Impersonate user", "Two-factor setup"])


def _plan(seed: int) -> dict[str, Any]:
    rng = random.Random(f"django_admin:{seed}")
    names = rng.sample(FIRST, 5)
    groups = sorted(rng.sample(sorted(GROUPS), 3))
    users = []
    for i, first in enumerate(names):
        users.append({"username": "admin" if i == 0 else first, "first": first.title(), "last": rng.choice(LAST),
                      "email": f"{first}@example.org", "password": f"{rng.choice(['oak', 'elm', 'fir'])}-{rng.randrange(1000, 9999)}",
                      "staff": i < 3, "superuser": i == 0, "groups": [] if i == 0 else rng.sample(groups, 1)})
    return {"groups": [{"name": g, "perms": GROUPS[g]} for g in groups], "users": users}


class DjangoAdminInstance(ServedEpisode):
    """One episode: its own database file and `runserver` process."""

    ready_path = "/admin/login/"
    LABELS = LABELS

    def __init__(self, adapter: "DjangoAdminAdapter", seed: int, template: Path):
        super().__init__(adapter, seed, template)
        self.db = self.dir / "db.sqlite3"
        shutil.copyfile(template, self.db)
        self._seeded = {r[0]: r[1] for r in read_db(template, "SELECT username, password FROM auth_user")}
        host = adapter.host
        self.url = f"http://{host}:{self.port}"
        env = {**os.environ, "TF_SITE_DB": str(self.db), "DJANGO_SETTINGS_MODULE": "tf_site_settings",
               "PYTHONPATH": str(adapter.project_dir())}
        self.serve([sys.executable, "-m", "django", "runserver", "--noreload", "--skip-checks", f"{host}:{self.port}"],
                   env, stdout_to_log=False)

    def state(self) -> dict[str, Any]:
        tables = {t: read_db(self.db, sql, dict_rows=True) for t, sql in STATE_QUERIES.items()}
        for row in tables["auth_user"]:  # a salted hash differs on every set: only whether it changed matters
            pw = row["password"] or ""
            row["password"] = ("unusable" if not pw or pw.startswith("!") else
                               "seeded" if self._seeded.get(row["username"]) == pw else "set")
        return {"app": self.adapter.name, "seed": self.seed, **tables}

    def reset(self) -> None:
        copy_db(self.template, self.db)


class DjangoAdminAdapter(ServedAdapter):
    """Django's admin site. Recipe form: `{name: django_admin, kind: django_admin, options: {start_timeout: 30}}`."""

    kind = "django_admin"

    FACTS = FACTS
    episode = DjangoAdminInstance

    def project_dir(self) -> Path:
        """The generated project (settings, urls), one per Django version and project code."""
        import django

        key = content_hash(django.get_version(), SETTINGS, URLS, SEED)[:16]
        folder = self._cache / f"django_admin-{key}"
        if not (folder / "tf_site_urls.py").exists():
            folder.mkdir(parents=True, exist_ok=True)
            for name, text in (("tf_site_settings.py", SETTINGS), ("tf_seed.py", SEED), ("tf_site_urls.py", URLS)):
                tmp = folder / f".{name}.{os.getpid()}"
                tmp.write_text(text)
                tmp.replace(folder / name)
        return folder

    def template(self, seed: int) -> Path:
        """The migrated, seeded database of `seed` (built once, then reused by every episode)."""
        project = self.project_dir()
        path = project / f"template-{seed}.sqlite3"
        if path.exists():
            return path
        tmp = project / f".template-{seed}.{os.getpid()}.sqlite3"
        tmp.unlink(missing_ok=True)
        env = {**os.environ, "TF_SITE_DB": str(tmp), "DJANGO_SETTINGS_MODULE": "tf_site_settings",
               "PYTHONPATH": str(project)}
        done = subprocess.run([sys.executable, str(project / "tf_seed.py"), json.dumps(_plan(seed))], env=env,
                              cwd=project, capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            raise RuntimeError(f"django_admin: migrating and seeding the template of seed {seed} failed: "
                               f"{done.stderr[-2000:]}")
        tmp.replace(path)
        return path

    def accounts(self, seed: int = 0) -> dict[str, str]:
        """The superuser's account (other seeded users cannot manage users)."""
        return {u["username"]: u["password"] for u in _plan(seed)["users"] if u["superuser"]}
