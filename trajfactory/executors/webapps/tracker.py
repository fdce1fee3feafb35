"""An issue tracker (admin console): login wall, filtered issue table, new-issue dialog, status changes, comments."""

from __future__ import annotations

from trajfactory.settings.sites import SiteFacts

from .base import Request, Response, WebApp, error_summary, normalize_query, esc, field_html, redirect, route, select_html, table_html

COMPONENTS = ["Login page", "Billing export", "Search API", "Settings screen", "Mobile app", "Email digest",
              "CSV import", "Dashboard", "Password reset", "Notifications", "File upload", "Audit log"]
SYMPTOMS = ["returns 500 on empty input", "is slow with large accounts", "shows the wrong timezone",
            "crashes after update", "ignores the language setting", "duplicates entries",
            "times out behind the proxy", "has a broken layout on narrow screens"]
STATUSES = ["open", "in_progress", "resolved", "closed"]
STATUS_TEXT = {"open": ["Open", "To do"], "in_progress": ["In progress", "Doing"],
               "resolved": ["Resolved", "Done"], "closed": ["Closed", "Archived"]}
PRIORITIES = ["low", "medium", "high", "critical"]


class TrackerApp(WebApp):
    name = "tracker"
    FACTS = SiteFacts(
        name="tracker",
        keywords={"issue": 2, "issues": 2, "assignee": 3, "priority": 2, "ticket": 1, "tickets": 1, "tracker": 3,
                  "status": 1, "resolved": 1, "comment": 1, "bug": 1},
        outcome_tables={"issues": ["issue", "ticket", "bug"], "comments": ["comment"]},
        volatile={"*": ["session", "token"]}, log_tables=["activity"],
        missing_features=["Export to CSV", "Link pull request", "Start sprint", "Log time"],
        synonyms=[["Resolved", "Done"], ["Closed", "Archived"], ["Open", "To do"], ["In progress", "Doing"],
                  ["New comment", "Comment box"]])
    SITE_NAMES = ["Helios Tracker", "Bugboard", "Ops Console", "Ticketry", "Lighthouse Issues"]
    LOGIN_REQUIRED = True
    SCHEMA = """
    CREATE TABLE issues (id INTEGER PRIMARY KEY, title TEXT, description TEXT, status TEXT, priority TEXT,
                         assignee_id INTEGER, reporter_id INTEGER);
    CREATE TABLE comments (id INTEGER PRIMARY KEY, issue_id INTEGER, author_id INTEGER, body TEXT);
    CREATE TABLE history (id INTEGER PRIMARY KEY, issue_id INTEGER, user_id INTEGER, field TEXT, old TEXT, new TEXT);
    """
    LABELS = {
        "new_issue": ["New issue", "Create issue", "Report a bug"],
        "create": ["Create", "Submit issue", "Save issue"],
        "cancel": ["Cancel", "Discard"],
        "filter": ["Filter", "Apply filters", "Apply"],
        "update_status": ["Update status", "Save status", "Apply change"],
        "comment": ["Comment", "Add comment", "Post comment"],
        "issues": ["Issues", "All issues", "Tickets"],
        "mine": ["Assigned to me", "My issues"],
    }
    NAV = [("issues", "/issues"), ("mine", "/issues?assignee=me")]
    STATE_QUERIES = {
        "issues": ("SELECT i.id, i.title, i.status, i.priority, a.username AS assignee, r.username AS reporter "
                   "FROM issues i LEFT JOIN users a ON a.id=i.assignee_id JOIN users r ON r.id=i.reporter_id ORDER BY i.id"),
        "comments": ("SELECT c.id, c.issue_id, u.username AS author, c.body FROM comments c "
                     "JOIN users u ON u.id=c.author_id ORDER BY c.id"),
        "history": ("SELECT h.issue_id, u.username AS user, h.field, h.old, h.new FROM history h "
                    "JOIN users u ON u.id=h.user_id ORDER BY h.id"),
    }

    def seed_content(self) -> None:
        self.status_text = {s: self.rng.choice(STATUS_TEXT[s]) for s in STATUSES}
        users = [r[0] for r in self.q("SELECT id FROM users")]
        pairs = [(c, s) for c in COMPONENTS for s in SYMPTOMS]
        for comp, symptom in self.rng.sample(pairs, self.rng.randint(10, 14)):
            self.db.execute("INSERT INTO issues (title, description, status, priority, assignee_id, reporter_id) "
                            "VALUES (?,?,?,?,?,?)",
                            (f"{comp} {symptom}", f"Steps: open the {comp.lower()} and observe that it {symptom}.",
                             self.rng.choice(STATUSES[:3]), self.rng.choice(PRIORITIES),
                             self.rng.choice(users + [None]), self.rng.choice(users)))

    def user_options(self, empty: str) -> list[tuple[str, str]]:
        return [("", empty)] + [(r["username"], r["display_name"]) for r in self.q("SELECT * FROM users ORDER BY username")]

    # ---- list + dialog
    @route("GET", r"/")
    def root(self, req: Request) -> Response:
        return redirect("/issues")

    @route("GET", r"/issues")
    def issues(self, req: Request, errors: dict | None = None) -> Response:
        status, prio, who, q = req.query.get("status", ""), req.query.get("priority", ""), req.query.get("assignee", ""), req.query.get("q", "")
        sql, args = ("SELECT i.*, a.display_name AS assignee FROM issues i LEFT JOIN users a ON a.id=i.assignee_id "
                     "WHERE 1=1"), []
        if status:
            sql, args = sql + " AND i.status=?", args + [status]
        if prio:
            sql, args = sql + " AND i.priority=?", args + [prio]
        if who:
            sql, args = sql + " AND a.username=?", args + [req.user["username"] if who == "me" else who]
        if q:
            sql, args = sql + " AND i.title LIKE ?", args + [f"%{q}%"]
        rows = self.q(sql + " ORDER BY i.id DESC", *args)
        if req.method == "GET" and (status or prio or who or q):  # "me" is logged as the user it stands for
            applied = {"status": status, "priority": prio, "q": normalize_query(q),
                       "assignee": req.user["username"] if who == "me" and req.user else who}
            self.log(req, "filter", "issue", ";".join(f"{k}={v}" for k, v in sorted(applied.items()) if v),
                     f"results={len(rows)}")
            if q:
                self.log(req, "search", "issue", normalize_query(q), f"results={len(rows)}")
        filters = ('<form method="get" action="/issues" aria-label="Filters">'
                   + select_html("Status", "status", [("", "Any status")] + list(self.status_text.items()), status)
                   + select_html("Priority", "priority", [("", "Any priority")] + [(p, p.title()) for p in PRIORITIES], prio)
                   + select_html("Assignee", "assignee", [("", "Anyone"), ("me", "Me")] + self.user_options("")[1:], who)
                   + field_html("Title contains", "q", q, kind="search")
                   + f'<button type="submit">{esc(self.labels["filter"])}</button></form>')
        table = [[f"#{r['id']}", f'<a href="/issue/{r["id"]}">{esc(r["title"])}</a>', esc(self.status_text[r["status"]]),
                  esc(r["priority"].title()), esc(r["assignee"] or "Unassigned")] for r in rows]
        listing = (f'<p role="status">{len(rows)} issue{"s" if len(rows) != 1 else ""}</p>'
                   + (table_html("Issues", ["ID", "Title", "Status", "Priority", "Assignee"], table) if rows else ""))
        body = (f'<h1>{esc(self.labels["issues"])}</h1><button type="button" id="open-new" '
                f'onclick="document.getElementById(\'new-issue\').showModal()">{esc(self.labels["new_issue"])}</button>'
                + "".join(self.arrange("issues", [filters, listing])) + self.new_issue_dialog(req, errors or {}))
        return self.page(req, self.labels["issues"], body, 400 if errors else 200)

    def new_issue_dialog(self, req: Request, errors: dict) -> str:
        f = req.form
        form = (f'<form method="post" action="/issues/new" novalidate>{error_summary(errors)}'
                + field_html("Title", "title", f.get("title", ""), errors.get("title", ""), required=True)
                + field_html("Description", "description", f.get("description", ""), errors.get("description", ""), textarea=True)
                + select_html("Priority", "priority", [(p, p.title()) for p in PRIORITIES], f.get("priority", "medium"),
                              errors.get("priority", ""), fid="new-priority")
                + select_html("Assignee", "assignee", self.user_options("Unassigned"), f.get("assignee", ""), fid="new-assignee")
                + f'<button type="submit">{esc(self.labels["create"])}</button> '
                f'<button type="submit" formmethod="dialog" formnovalidate>{esc(self.labels["cancel"])}</button></form>')
        reopen = "<script>document.getElementById('new-issue').showModal()</script>" if errors else ""
        return f'<dialog id="new-issue" aria-labelledby="h-new"><h2 id="h-new">{esc(self.labels["new_issue"])}</h2>{form}</dialog>{reopen}'

    @route("POST", r"/issues/new")
    def create(self, req: Request) -> Response:
        title, prio, who = req.arg("title"), req.arg("priority"), req.arg("assignee")
        errors = {}
        if len(title) < 5:
            errors["title"] = "Title must be at least 5 characters."
        if prio not in PRIORITIES:
            errors["priority"] = "Choose a priority."
        assignee = self.q1("SELECT id FROM users WHERE username=?", who) if who else None
        if who and assignee is None:
            errors["assignee"] = "Unknown assignee."
        if errors:
            return self.issues(Request("GET", "/issues", {}, req.form, req.session, req.user), errors)
        cur = self.db.execute("INSERT INTO issues (title, description, status, priority, assignee_id, reporter_id) "
                              "VALUES (?,?,'open',?,?,?)", (title, req.arg("description"), prio,
                                                            assignee[0] if assignee else None, req.user["id"]))
        self.flash(req, f"Issue #{cur.lastrowid} created.")
        return redirect(f"/issue/{cur.lastrowid}")

    # ---- detail
    @route("GET", r"/issue/(\d+)")
    def issue(self, req: Request, iid: str, errors: dict | None = None, comment: str = "") -> Response:
        i = self.q1("SELECT i.*, a.display_name AS assignee, r.display_name AS reporter FROM issues i LEFT JOIN users a "
                    "ON a.id=i.assignee_id JOIN users r ON r.id=i.reporter_id WHERE i.id=?", int(iid))
        if i is None:
            return self.not_found(req, "Issue")
        if req.method == "GET":
            self.log(req, "view", "issue", i["title"])
        errors = errors or {}
        facts = "".join(f"<dt>{k}</dt><dd>{esc(v)}</dd>" for k, v in [
            ("Status", self.status_text[i["status"]]), ("Priority", i["priority"].title()),
            ("Assignee", i["assignee"] or "Unassigned"), ("Reporter", i["reporter"])])
        status_form = (f'<form method="post" action="/issue/{i["id"]}/status">'
                       + select_html("Status", "status", list(self.status_text.items()), i["status"], errors.get("status", ""))
                       + f'<button type="submit">{esc(self.labels["update_status"])}</button></form>')
        comments = "".join(f'<li><article><h3>{esc(c["author"])}</h3><p>{esc(c["body"])}</p></article></li>' for c in self.q(
            "SELECT c.*, u.display_name AS author FROM comments c JOIN users u ON u.id=c.author_id WHERE issue_id=? ORDER BY c.id", i["id"]))
        comment_form = (f'<form method="post" action="/issue/{i["id"]}/comment">'
                        + field_html("New comment", "body", comment, errors.get("body", ""), textarea=True, required=True)
                        + f'<button type="submit">{esc(self.labels["comment"])}</button></form>')
        sections = self.arrange("issue", [
            f'<section aria-labelledby="h-det"><h2 id="h-det">Details</h2><dl>{facts}</dl>{status_form}</section>',
            f'<section aria-labelledby="h-desc"><h2 id="h-desc">Description</h2><p>{esc(i["description"] or "No description.")}</p></section>',
        ])
        body = (f'<nav aria-label="Breadcrumb"><a href="/issues">{esc(self.labels["issues"])}</a> › #{i["id"]}</nav>'
                f'<h1>#{i["id"]} {esc(i["title"])}</h1>{error_summary(errors)}' + "".join(sections)
                + f'<section aria-labelledby="h-com"><h2 id="h-com">Comments</h2><ul>{comments}</ul>{comment_form}</section>')
        return self.page(req, f"#{i['id']} {i['title']}", body, 400 if errors else 200)

    @route("POST", r"/issue/(\d+)/status")
    def set_status(self, req: Request, iid: str) -> Response:
        i = self.q1("SELECT * FROM issues WHERE id=?", int(iid))
        if i is None:
            return self.not_found(req, "Issue")
        new = req.arg("status")
        if new not in STATUSES:
            return self.issue(req, iid, {"status": f"Unknown status {new!r}."})
        if new != i["status"]:
            self.db.execute("UPDATE issues SET status=? WHERE id=?", (new, i["id"]))
            self.db.execute("INSERT INTO history (issue_id, user_id, field, old, new) VALUES (?,?,?,?,?)",
                            (i["id"], req.user["id"], "status", i["status"], new))
        self.flash(req, f"Status set to {self.status_text[new]}.")
        return redirect(f"/issue/{i['id']}")

    @route("POST", r"/issue/(\d+)/comment")
    def comment(self, req: Request, iid: str) -> Response:
        if self.q1("SELECT 1 FROM issues WHERE id=?", int(iid)) is None:
            return self.not_found(req, "Issue")
        body = req.arg("body")
        if not body:
            return self.issue(req, iid, {"body": "Comment cannot be empty."})
        self.db.execute("INSERT INTO comments (issue_id, author_id, body) VALUES (?,?,?)", (int(iid), req.user["id"], body))
        self.flash(req, "Comment added.")
        return redirect(f"/issue/{iid}")
