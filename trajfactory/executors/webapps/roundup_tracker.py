"""Roundup (PyPI `roundup`) as a site: a real, self-hosted issue tracker written by others (python.org ran its bug
tracker on it for years), with its web UI for filing issues, changing status and priority, assigning, adding messages.

The adapter installs Roundup's own `classic` tracker template with the SQLite backend (`roundup-admin install`),
configures it for loopback demo use and seeds users, keywords, issues and messages through Roundup's own API into a
template tracker home per seed. Each episode copies that home and serves it with `roundup-server` in its own process
on a free loopback port at `/tracker/`, so episodes never share state; `reset()` copies the template's database
back (SQLite's backup API, safe while it is served: the server forks per request) and its message files.

One change to the shipped template: its sidebar login box has two inputs with no label at all (no `<label>`, no
placeholder), so no accessible name says which is the username; the adapter gives them the placeholders Roundup's own
`responsive` template uses (`Username`, `Password`). Mail goes to a file in the tracker home (`mail.debug`).

State for checks comes from declared queries over the tracker's own database (`STATE_QUERIES`, names rather than ids
where rows point at users, statuses, priorities) plus the message texts from its file store. Volatile fields:
`activity` and `creation` (and a message's `date`) are ignored; the salted `password` is normalized to `seeded`,
`set` or `unusable`.
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

TRACKER = "tracker"
"""The tracker's name in its URL: episodes serve it at `http://host:port/tracker/`."""
WEB_PLACEHOLDER = "http://127.0.0.1:9/tracker/"
"""The `[tracker] web` URL a template carries; an episode writes its own (Roundup checks it against requests)."""
SETUP = '''import json, os, sys
from roundup import instance, password
from roundup.configuration import CoreConfig
home, plan = sys.argv[1], json.loads(sys.argv[2])
config = CoreConfig(home)
for key, value in plan["config"].items():
    config[key] = value
config.save()
page = os.path.join(home, "html", "page.html")
text = open(page).read()
for name, label in (("__login_name", "Username"), ("__login_password", "Password")):
    text = text.replace('name="%s"' % name, 'name="%s" placeholder="%s"' % (name, label), 1)
open(page, "w").write(text)
tracker = instance.open(home)
os.makedirs(os.path.join(home, "db"), exist_ok=True)
tracker.nuke()
tracker.init(password.Password(plan["admin_password"], config=tracker.config))
db = tracker.open("admin")
users = {"admin": "1"}
for u in plan["users"]:
    users[u["username"]] = db.user.create(username=u["username"], realname=u["realname"], address=u["address"],
                                          password=password.Password(u["password"], config=tracker.config), roles="User")
for k in plan["keywords"]:
    db.keyword.create(name=k)
db.commit()
for i in plan["issues"]:
    db.close()
    db = tracker.open(i["creator"])  # each issue is filed and first commented on by its own author
    issue = db.issue.create(title=i["title"], priority=db.priority.lookup(i["priority"]),
                            keyword=[db.keyword.lookup(k) for k in i["keywords"]],
                            messages=[db.msg.create(content=i["message"], author=users[i["creator"]])])
    db.commit()
    db.close()
    db = tracker.open("admin")
    changes = {"status": db.status.lookup(i["status"])}
    if i["assignedto"]:
        changes["assignedto"] = users[i["assignedto"]]
    db.issue.set(issue, **changes)
    db.commit()
db.close()
'''
FIRST = ["amira", "boris", "carla", "dmitri", "elif", "femi", "greta", "hugo", "ines", "jasper"]
LAST = ["Alvarez", "Becker", "Costa", "Dahl", "Evans", "Fontaine", "Gupta", "Horvat"]
ISSUES = [("CSV export drops the last row", "Exporting 10 rows gives a file with 9."),
          ("Login page forgets the language choice", "After signing in the page is English again."),
          ("Search ignores words with accents", "Searching for 'café' finds nothing."),
          ("Dark theme for the issue list", "The white list is hard on the eyes at night."),
          ("Attachment upload fails above 5 MB", "A 6 MB log file gives a server error."),
          ("Typo on the registration page", "It says 'adress' instead of 'address'."),
          ("Weekly summary email arrives twice", "Every Monday the same summary comes two times."),
          ("Keyboard shortcut to submit a message", "Ctrl+Enter should submit the change note.")]
KEYWORDS = ["ui", "export", "search", "email", "performance", "docs"]
STATUSES = ["unread", "chatting", "need-eg", "in-progress", "testing"]
PRIORITIES = ["critical", "urgent", "bug", "feature", "wish"]
STATE_QUERIES = {
    "issue": ("SELECT i.id, i._title AS title, s._name AS status, p._name AS priority, a._username AS assignedto, "
              "c._username AS creator, "
              "(SELECT group_concat(u._username, ',') FROM (SELECT u._username FROM issue_nosy n JOIN _user u "
              " ON u.id=n.linkid WHERE n.nodeid=i.id ORDER BY u._username) u) AS nosy, "
              "(SELECT group_concat(k._name, ',') FROM (SELECT k._name FROM issue_keyword ik JOIN _keyword k "
              " ON k.id=ik.linkid WHERE ik.nodeid=i.id ORDER BY k._name) k) AS keywords, "
              "i._activity AS activity, i._creation AS creation "
              "FROM _issue i LEFT JOIN _status s ON s.id=i._status LEFT JOIN _priority p ON p.id=i._priority "
              "LEFT JOIN _user a ON a.id=i._assignedto LEFT JOIN _user c ON c.id=i._creator "
              "WHERE i.__retired__=0 ORDER BY i.id"),
    "msg": ("SELECT m.id, im.nodeid AS issue, u._username AS author, m._date AS date, m._creation AS creation "
            "FROM _msg m LEFT JOIN _user u ON u.id=m._author LEFT JOIN issue_messages im ON im.linkid=m.id "
            "WHERE m.__retired__=0 ORDER BY m.id"),
    "user": ("SELECT id, _username AS username, _realname AS realname, _address AS address, _roles AS roles, "
             "_organisation AS organisation, _phone AS phone, _password AS password, _activity AS activity, "
             "_creation AS creation FROM _user WHERE __retired__=0 ORDER BY id"),
    "keyword": "SELECT id, _name AS name FROM _keyword WHERE __retired__=0 ORDER BY id",
}
"""State table (Roundup's own class names) -> SQL over the tracker's database; `msg` rows get their text (`content`)
from the tracker's file store."""
LABELS = {"create_issue": "Create New", "submit_changes": "Submit Changes", "log_in": "Login", "log_out": "Logout",
          "search": "Search", "show_all": "Show All", "show_unassigned": "Show Unassigned", "your_issues": "Your Issues",
          "your_details": "Your Details", "user_list": "User List", "add_user": "Add User", "make_copy": "Make a copy"}
"""The classic template's own button and link texts (the same for every seed)."""

FACTS = SiteFacts(
    name="roundup",
    # "issue", "status" and "tracker" are the bundled tracker's words too: Roundup's own name has to outweigh them
    keywords={"roundup": 10, "nosy": 4, "chatting": 3, "designator": 3},
    sources=["https://roundup-tracker.org/", "https://www.roundup-tracker.org/"],
    outcome_tables={"msg": ["message", "change note", "note"], "issue": ["issue", "ticket", "bug report"],
                    "keyword": ["keyword"], "user": ["user", "account"]},
    volatile={"*": ["activity", "creation"], "msg": ["date"]},
    missing_features=["Vote on the issue", "Set a due date", "Link a pull request", "Export the issue as PDF"])


def _plan(seed: int) -> dict[str, Any]:
    """The seeded tracker of `seed`: users, keywords, issues (each with its first message), the admin password."""
    rng = random.Random(f"roundup:{seed}")
    users = [{"username": first, "realname": f"{first.title()} {rng.choice(LAST)}", "address": f"{first}@example.org",
              "password": f"{rng.choice(['oak', 'elm', 'fir'])}-{rng.randrange(1000, 9999)}"}
             for first in rng.sample(FIRST, 4)]
    names = [u["username"] for u in users]
    issues = [{"title": title, "message": message, "creator": rng.choice(names), "status": rng.choice(STATUSES),
               "priority": rng.choice(PRIORITIES), "keywords": sorted(rng.sample(KEYWORDS, rng.randrange(0, 3))),
               "assignedto": rng.choice([None, *names])}
              for title, message in rng.sample(ISSUES, 6)]
    return {"admin_password": f"admin-{rng.randrange(1000, 9999)}", "users": users, "keywords": KEYWORDS,
            "issues": issues}


def message_file(home: Path, msg_id: int) -> Path:
    """Where Roundup's file store keeps the text of message `msg_id` (1000 files a folder)."""
    return home / "db" / "files" / "msg" / str(msg_id // 1000) / f"msg{msg_id}"


class RoundupInstance(ServedEpisode):
    """One episode: its own tracker home (database, message files, config) and `roundup-server` process."""

    LABELS = LABELS

    def __init__(self, adapter: "RoundupAdapter", seed: int, template: Path):
        super().__init__(adapter, seed, template)
        self.home = self.dir / TRACKER
        shutil.copytree(template, self.home)
        self._seeded = {r[0]: r[1] for r in read_db(template / "db" / "db", "SELECT _username, _password FROM _user")}
        host = adapter.host
        self.url = f"http://{host}:{self.port}/{TRACKER}"
        config = self.home / "config.ini"
        config.write_text(config.read_text().replace(WEB_PLACEHOLDER, f"{self.url}/"))
        cmd = [sys.executable, "-m", "roundup.scripts.roundup_server", "-n", host, "-p", str(self.port)]
        if hasattr(os, "getuid") and os.getuid() == 0:  # roundup-server refuses root unless told which user to be
            cmd += ["-u", "0"]
        self.serve([*cmd, f"{TRACKER}={self.home}"])

    def state(self) -> dict[str, Any]:
        db = self.home / "db" / "db"
        tables = {t: read_db(db, sql, dict_rows=True) for t, sql in STATE_QUERIES.items()}
        for row in tables["msg"]:
            path = message_file(self.home, int(row["id"]))
            row["content"] = path.read_text(errors="replace") if path.exists() else None
        for row in tables["user"]:  # a salted hash differs on every set: only whether it changed matters
            pw = row["password"] or ""
            row["password"] = ("unusable" if not pw else
                               "seeded" if self._seeded.get(row["username"]) == pw else "set")
        return {"app": self.adapter.name, "seed": self.seed, **tables}

    def reset(self) -> None:
        copy_db(self.template / "db" / "db", self.home / "db" / "db")
        files = self.home / "db" / "files"
        shutil.rmtree(files, ignore_errors=True)
        shutil.copytree(self.template / "db" / "files", files)


class RoundupAdapter(ServedAdapter):
    """Roundup's classic tracker. Recipe form: `{name: roundup, kind: roundup, options: {start_timeout: 30}}`."""

    kind = "roundup"

    FACTS = FACTS
    episode = RoundupInstance

    def template(self, seed: int) -> Path:
        """The installed, configured, seeded tracker home of `seed` (built once, then copied by every episode)."""
        try:
            import roundup
        except ImportError as exc:
            raise RuntimeError("the roundup site needs PyPI roundup (declared in pyproject.toml; "
                               "`pip install roundup`)") from exc
        key = content_hash(roundup.__version__, SETUP, json.dumps(_plan(seed), sort_keys=True))[:16]
        path = self._cache / f"roundup-{seed}-{key}"
        if (path / "db" / "db").exists():
            return path
        self._cache.mkdir(parents=True, exist_ok=True)
        tmp = self._cache / f".roundup-{seed}-{key}.{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        plan = {**_plan(seed), "config": {
            "TRACKER_WEB": WEB_PLACEHOLDER, "MAIL_DOMAIN": "example.org", "MAIL_DEBUG": "mail.log",
            # demo accounts only: few (still salted) PBKDF2 rounds keep each sign-in of an episode quick
            "PASSWORD_PBKDF2_DEFAULT_ROUNDS": "1000", "WEB_MIGRATE_PASSWORDS": "no"}}
        for cmd in ([sys.executable, "-m", "roundup.scripts.roundup_admin", "-i", str(tmp), "install", "classic",
                     "sqlite"], [sys.executable, "-c", SETUP, str(tmp), json.dumps(plan)]):
            done = subprocess.run(cmd, cwd=self._cache, capture_output=True, text=True, timeout=300,
                                  stdin=subprocess.DEVNULL)
            if done.returncode != 0:
                raise RuntimeError(f"roundup: building the template tracker of seed {seed} failed at "
                                   f"{cmd[2]!r}: {(done.stderr or done.stdout)[-2000:]}")
        try:
            tmp.replace(path)
        except OSError:  # another process built it first
            shutil.rmtree(tmp, ignore_errors=True)
        return path

    def accounts(self, seed: int = 0) -> dict[str, str]:
        """The admin's account (it can edit every issue and user)."""
        return {"admin": _plan(seed)["admin_password"]}
