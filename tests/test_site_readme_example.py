"""The README's worked example of plugging in your own app runs as written: its adapter module (written to a
package here, with a small stand-in for the user's server) loads from the README's recipe snippet, starts isolated
episodes of the app, reads its state, and resets it; the section's other recipe snippet loads too."""

from __future__ import annotations

import re
import sqlite3
import sys
import urllib.request
from pathlib import Path

import yaml

from trajfactory.agents.replay import match_score
from trajfactory.executors.webapps import adapters, launch, register_sites, unregister
from trajfactory.settings import WebConfig
from trajfactory.settings.sites import declared_site, site_facts

README = Path(__file__).resolve().parent.parent / "README.md"

# the user's own app, as the example starts it: `--port P --db FILE`, pages listing the notes of its database
NOTES_SERVER = '''import argparse, html, sqlite3
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ap = argparse.ArgumentParser()
ap.add_argument("--port", type=int)
ap.add_argument("--db")
args = ap.parse_args()


class Notes(BaseHTTPRequestHandler):
    def do_GET(self):
        db = sqlite3.connect(args.db)
        titles = [t for t, in db.execute("SELECT title FROM notes ORDER BY title")]
        db.close()
        body = ("<h1>Notes</h1><ul>" + "".join(f"<li>{html.escape(t)}</li>" for t in titles) + "</ul>").encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass


ThreadingHTTPServer(("127.0.0.1", args.port), Notes).serve_forever()
'''


def _blocks(lang: str) -> list[str]:
    section = README.read_text().split("### Sites: plug in your own app", 1)[1].split("\n## ", 1)[0]
    return re.findall(rf"```{lang}\n(.*?)```", section, re.S)


def test_the_readme_worked_example_plugs_in_an_app(tmp_path, monkeypatch):
    [code] = [b for b in _blocks("python") if b.startswith("# mynotes/trajfactory_site.py")]
    package = tmp_path / "mynotes"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "trajfactory_site.py").write_text(code)
    (package / "server.py").write_text(NOTES_SERVER)
    monkeypatch.syspath_prepend(str(tmp_path))
    snippets = [yaml.safe_load(b)["web"] for b in _blocks("yaml")]
    before = set(adapters())
    try:
        [notes] = [WebConfig.model_validate(w) for w in snippets if "NotesAdapter" in str(w)]  # valid as written
        entry = notes.sites[0].model_dump(exclude_none=True)
        entry["options"] = {"command": [sys.executable, str(package / "server.py")]}  # this interpreter, not `python`
        [adapter] = register_sites([entry])
        assert adapter.name == "notes" and declared_site("https://notes.example.org/howto/x.html") == "notes"
        with launch("notes", seed=1) as one, launch("notes", seed=1) as two:  # two episodes at once
            assert one.url != two.url
            with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(one.url + "/") as resp:
                assert "Note 1-0" in resp.read().decode()
            seeded = one.state()
            assert seeded["app"] == "notes" and [r["title"] for r in seeded["notes"]] == ["Note 1-0", "Note 1-1", "Note 1-2"]
            db = sqlite3.connect(one.db)  # what the app does when a user adds a note
            db.execute("INSERT INTO notes VALUES ('Groceries', 'milk', datetime('now'))")
            db.commit()
            db.close()
            assert len(one.state()["notes"]) == 4 and two.state() == seeded  # isolated
            one.reset()
            assert one.state() == seeded and one.accounts == {"alice": "alice-pw"}
        facts = site_facts("notes")
        assert facts.volatile_columns("notes") == {"updated_at"} and facts.missing_features == ["Share note by email"]
        assert match_score("Add note", "New note", facts.synonyms) > 0.9
        [other] = [WebConfig.model_validate(w) for w in snippets if "NotesAdapter" not in str(w)]
        [staff] = register_sites(other.sites)  # the built-in kind's snippet loads too (nothing is started)
        assert staff.name == "staff_admin" and site_facts("staff_admin").missing_features[0] == "Impersonate user"
    finally:
        for name in set(adapters()) - before:
            unregister(name)
