"""A discussion forum: thread list by category, search, thread pages with replies, new/edit post forms."""

from __future__ import annotations

from trajfactory.settings.sites import SiteFacts

from .base import Request, Response, WebApp, error_summary, normalize_query, esc, field_html, redirect, route, select_html, table_html

CATEGORIES = ["General", "Help", "Showcase", "Announcements", "Hardware", "Off-topic"]
TOPICS = ["sourdough starter", "mechanical keyboards", "home networking", "balcony gardening", "film cameras",
          "trail running", "bread machines", "solar panels", "e-readers", "chess openings", "bike commuting",
          "houseplants", "retro consoles", "watercolor paper"]
TITLES = ["How do I get started with {t}?", "Best budget option for {t}", "My {t} setup, finally done",
          "Is {t} worth it in 2024?", "Troubleshooting {t}: need advice", "Weekly {t} thread",
          "Beginner mistakes with {t}", "Share your {t} tips"]
BODIES = ["I have been looking into {t} for a while and would love some pointers from people here.",
          "After a few months with {t} I wrote up what worked for me. Happy to answer questions.",
          "Something odd keeps happening with my {t}. Has anyone seen this before?",
          "Here is a summary of the resources on {t} that helped me the most."]
REPLIES = ["Thanks, this is really helpful!", "I had the same problem; updating fixed it for me.",
           "Have you checked the FAQ pinned at the top?", "Great write-up. Bookmarked.",
           "I would start small and build from there.", "Following — interested in the answer too."]


class ForumApp(WebApp):
    name = "forum"
    FACTS = SiteFacts(
        name="forum",
        keywords={"thread": 2, "threads": 2, "reply": 2, "replies": 1, "post": 1, "posts": 1, "forum": 3,
                  "topic": 1, "discussion": 1, "moderator": 1, "moderators": 1, "board": 1, "pinned": 1},
        outcome_tables={"threads": ["thread", "topic", "discussion"], "posts": ["reply", "post", "message"]},
        volatile={"*": ["session", "token"]}, log_tables=["activity"],
        missing_features=["Upvote", "Send private message", "Award badge", "Schedule post"],
        synonyms=[["New thread", "New discussion"], ["New comment", "Comment box"], ["Search the forum", "Search box"]])
    SITE_NAMES = ["Tinkerers' Commons", "The Back Porch", "Night Owls Forum", "Open Bench", "Quarry Hall"]
    SCHEMA = """
    CREATE TABLE threads (id INTEGER PRIMARY KEY, title TEXT, category TEXT, author_id INTEGER, pinned INTEGER DEFAULT 0);
    CREATE TABLE posts (id INTEGER PRIMARY KEY, thread_id INTEGER, author_id INTEGER, body TEXT, edited INTEGER DEFAULT 0);
    """
    LABELS = {
        "new_thread": ["New thread", "Start a discussion", "New topic"],
        "create": ["Post thread", "Publish", "Create thread"],
        "reply": ["Reply", "Post reply", "Send reply"],
        "edit": ["Edit", "Edit post"],
        "save": ["Save changes", "Update post"],
        "threads": ["All threads", "Latest topics", "Discussions"],
        "categories": ["Categories", "Boards"],
    }
    NAV = [("threads", "/"), ("new_thread", "/new"), ("search", "/search")]
    STATE_QUERIES = {
        "threads": ("SELECT t.id, t.title, t.category, u.username AS author, t.pinned, "
                    "(SELECT COUNT(*) FROM posts p WHERE p.thread_id=t.id) AS posts FROM threads t "
                    "JOIN users u ON u.id=t.author_id ORDER BY t.id"),
        "posts": ("SELECT p.id, p.thread_id, u.username AS author, p.body, p.edited FROM posts p "
                  "JOIN users u ON u.id=p.author_id ORDER BY p.id"),
    }

    def seed_content(self) -> None:
        self.categories = sorted(self.rng.sample(CATEGORIES, 4))
        users = [r[0] for r in self.q("SELECT id FROM users")]
        for t in self.rng.sample(TOPICS, self.rng.randint(7, 10)):
            title = self.rng.choice(TITLES).format(t=t)
            cur = self.db.execute("INSERT INTO threads (title, category, author_id) VALUES (?,?,?)",
                                  (title[0].upper() + title[1:], self.rng.choice(self.categories), self.rng.choice(users)))
            author = self.q1("SELECT author_id FROM threads WHERE id=?", cur.lastrowid)[0]
            self.db.execute("INSERT INTO posts (thread_id, author_id, body) VALUES (?,?,?)",
                            (cur.lastrowid, author, self.rng.choice(BODIES).format(t=t)))
            for _ in range(self.rng.randint(0, 3)):
                self.db.execute("INSERT INTO posts (thread_id, author_id, body) VALUES (?,?,?)",
                                (cur.lastrowid, self.rng.choice(users), self.rng.choice(REPLIES)))
        self.db.execute("UPDATE threads SET pinned=1 WHERE id=?", (self.rng.randint(1, 7),))

    # ---- pieces
    def search_form(self, q: str = "") -> str:
        return (f'<form role="search" method="get" action="/search"><label for="q">Search the forum</label> '
                f'<input type="search" id="q" name="q" value="{esc(q)}"> '
                f'<button type="submit">{esc(self.labels["search"])}</button></form>')

    def thread_table(self, rows, caption: str) -> str:
        table = [[f'<a href="/thread/{r["id"]}">{esc(r["title"])}</a>' + (" <strong>(pinned)</strong>" if r["pinned"] else ""),
                  esc(r["category"]), esc(r["author"]), str(r["n"] - 1)] for r in rows]
        return table_html(caption, ["Topic", "Category", "Started by", "Replies"], table) if rows else "<p>No threads found.</p>"

    THREADS_SQL = ("SELECT t.*, u.display_name AS author, (SELECT COUNT(*) FROM posts p WHERE p.thread_id=t.id) AS n "
                   "FROM threads t JOIN users u ON u.id=t.author_id")

    # ---- pages
    @route("GET", r"/")
    def index(self, req: Request) -> Response:
        cat = req.arg("category")
        rows = (self.q(self.THREADS_SQL + " WHERE t.category=? ORDER BY t.pinned DESC, t.id DESC", cat) if cat
                else self.q(self.THREADS_SQL + " ORDER BY t.pinned DESC, t.id DESC"))
        if cat:
            self.log(req, "view", "category", cat, f"results={len(rows)}")
        cats = "".join(f'<li><a href="/?category={esc(c)}"{" aria-current=page" if c == cat else ""}>{esc(c)}</a></li>'
                       for c in self.categories)
        sections = self.arrange("index", [
            f'<section aria-labelledby="h-threads"><h2 id="h-threads">{esc(cat or self.labels["threads"])}</h2>'
            + self.thread_table(rows, "Threads") + "</section>",
            f'<aside aria-labelledby="h-cats"><h2 id="h-cats">{esc(self.labels["categories"])}</h2><ul>{cats}</ul></aside>',
        ])
        body = (f"<h1>{esc(self.site_name)}</h1>{self.search_form()}"
                f'<p><a href="/new">{esc(self.labels["new_thread"])}</a></p>' + "".join(sections))
        return self.page(req, cat or "Threads", body)

    @route("GET", r"/search")
    def search(self, req: Request) -> Response:
        q = req.arg("q")
        rows = self.q(self.THREADS_SQL + " WHERE t.title LIKE ? OR EXISTS (SELECT 1 FROM posts p WHERE "
                      "p.thread_id=t.id AND p.body LIKE ?) ORDER BY t.id DESC", f"%{q}%", f"%{q}%") if q else []
        if q:
            self.log(req, "search", "thread", normalize_query(q), f"results={len(rows)}")
        body = f"<h1>Search</h1>{self.search_form(q)}"
        if q:
            body += f'<p role="status">{len(rows)} thread{"s" if len(rows) != 1 else ""} match “{esc(q)}”</p>'
            body += self.thread_table(rows, "Search results")
        return self.page(req, f"Search: {q}" if q else "Search", body)

    @route("GET", r"/thread/(\d+)")
    def thread(self, req: Request, tid: str, errors: dict | None = None, reply: str = "") -> Response:
        t = self.q1("SELECT * FROM threads WHERE id=?", int(tid))
        if t is None:
            return self.not_found(req, "Thread")
        if req.method == "GET":
            self.log(req, "view", "thread", t["title"])
        errors = errors or {}
        posts = self.q("SELECT p.*, u.display_name AS author FROM posts p JOIN users u ON u.id=p.author_id "
                       "WHERE p.thread_id=? ORDER BY p.id", t["id"])
        arts = []
        for p in posts:
            edit = (f' <a href="/post/{p["id"]}/edit" aria-label="{esc(self.labels["edit"])} post #{p["id"]}">'
                    f'{esc(self.labels["edit"])}</a>' if req.user and req.user["id"] == p["author_id"] else "")
            arts.append(f'<li><article aria-labelledby="p{p["id"]}"><h3 id="p{p["id"]}">{esc(p["author"])}'
                        f'{" (edited)" if p["edited"] else ""}</h3><p>{esc(p["body"])}</p>{edit}</article></li>')
        if req.user:
            form = (f'<form method="post" action="/thread/{t["id"]}/reply"><h2>Your reply</h2>{error_summary(errors)}'
                    + field_html("Message", "body", reply, errors.get("body", ""), textarea=True, required=True)
                    + f'<button type="submit">{esc(self.labels["reply"])}</button></form>')
        else:
            form = f'<p><a href="/login?next=/thread/{t["id"]}">{esc(self.labels["login"])}</a> to reply.</p>'
        body = (f'<nav aria-label="Breadcrumb"><a href="/">{esc(self.labels["threads"])}</a> › '
                f'<a href="/?category={esc(t["category"])}">{esc(t["category"])}</a></nav>'
                f'<h1>{esc(t["title"])}</h1><ol aria-label="Posts">{"".join(arts)}</ol>{form}')
        return self.page(req, t["title"], body, 400 if errors else 200)

    @route("POST", r"/thread/(\d+)/reply")
    def reply(self, req: Request, tid: str) -> Response:
        if req.user is None:
            return redirect(f"/login?next=/thread/{tid}")
        if self.q1("SELECT 1 FROM threads WHERE id=?", int(tid)) is None:
            return self.not_found(req, "Thread")
        body = req.arg("body")
        if len(body) < 2:
            return self.thread(req, tid, {"body": "Message must be at least 2 characters."}, body)
        self.db.execute("INSERT INTO posts (thread_id, author_id, body) VALUES (?,?,?)", (int(tid), req.user["id"], body))
        self.flash(req, "Your reply was posted.")
        return redirect(f"/thread/{tid}")

    @route("GET", r"/new")
    def new_form(self, req: Request, errors: dict | None = None) -> Response:
        if req.user is None:
            return redirect("/login?next=/new")
        errors, f = errors or {}, req.form
        cats = [("", "Choose a category")] + [(c, c) for c in self.categories]
        body = (f'<h1>{esc(self.labels["new_thread"])}</h1>{error_summary(errors)}<form method="post" action="/new" novalidate>'
                + field_html("Title", "title", f.get("title", ""), errors.get("title", ""), required=True)
                + select_html("Category", "category", cats, f.get("category", ""), errors.get("category", ""))
                + field_html("Message", "body", f.get("body", ""), errors.get("body", ""), textarea=True, required=True)
                + f'<button type="submit">{esc(self.labels["create"])}</button></form>')
        return self.page(req, self.labels["new_thread"], body, 400 if errors else 200)

    @route("POST", r"/new")
    def create(self, req: Request) -> Response:
        if req.user is None:
            return redirect("/login?next=/new")
        title, cat, body = req.arg("title"), req.arg("category"), req.arg("body")
        errors = {}
        if len(title) < 5:
            errors["title"] = "Title must be at least 5 characters."
        if cat not in self.categories:
            errors["category"] = "Choose a category."
        if not body:
            errors["body"] = "Message is required."
        if errors:
            return self.new_form(req, errors)
        cur = self.db.execute("INSERT INTO threads (title, category, author_id) VALUES (?,?,?)", (title, cat, req.user["id"]))
        self.db.execute("INSERT INTO posts (thread_id, author_id, body) VALUES (?,?,?)", (cur.lastrowid, req.user["id"], body))
        self.flash(req, "Thread created.")
        return redirect(f"/thread/{cur.lastrowid}")

    def own_post(self, req: Request, pid: str):
        p = self.q1("SELECT * FROM posts WHERE id=?", int(pid))
        return p if p is not None and req.user is not None and p["author_id"] == req.user["id"] else None

    @route("GET", r"/post/(\d+)/edit")
    def edit_form(self, req: Request, pid: str, errors: dict | None = None, text: str | None = None) -> Response:
        if req.user is None:
            return redirect(f"/login?next=/post/{pid}/edit")
        p = self.own_post(req, pid)
        if p is None:
            return self.page(req, "Forbidden", '<h1>Forbidden</h1><p role="alert">You can only edit your own posts.</p>', 403)
        errors = errors or {}
        body = (f'<h1>{esc(self.labels["edit"])}</h1>{error_summary(errors)}<form method="post" action="/post/{p["id"]}/edit">'
                + field_html("Message", "body", p["body"] if text is None else text, errors.get("body", ""), textarea=True, required=True)
                + f'<button type="submit">{esc(self.labels["save"])}</button> <a href="/thread/{p["thread_id"]}">Cancel</a></form>')
        return self.page(req, self.labels["edit"], body, 400 if errors else 200)

    @route("POST", r"/post/(\d+)/edit")
    def edit(self, req: Request, pid: str) -> Response:
        p = self.own_post(req, pid)
        if p is None:
            return self.edit_form(req, pid)
        text = req.arg("body")
        if len(text) < 2:
            return self.edit_form(req, pid, {"body": "Message must be at least 2 characters."}, text)
        self.db.execute("UPDATE posts SET body=?, edited=1 WHERE id=?", (text, p["id"]))
        self.flash(req, "Post updated.")
        return redirect(f"/thread/{p['thread_id']}")
