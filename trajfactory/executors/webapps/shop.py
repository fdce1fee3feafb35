"""A web shop: catalog with categories and search, product pages, a cart, a validated checkout, orders."""

from __future__ import annotations

import json
import re

from trajfactory.settings.sites import SiteFacts

from .base import Request, Response, WebApp, error_summary, normalize_query, esc, field_html, redirect, route, select_html, table_html

CATALOG = {
    "Kitchen": ["Kettle", "Skillet", "Mug", "Chef Knife", "Cutting Board", "Teapot", "Colander"],
    "Outdoors": ["Tent", "Lantern", "Backpack", "Sleeping Bag", "Water Bottle", "Hammock", "Compass"],
    "Office": ["Notebook", "Desk Lamp", "Stapler", "Fountain Pen", "Monitor Stand", "Planner"],
    "Audio": ["Headphones", "Speaker", "Turntable", "Earbuds", "Microphone", "Radio"],
    "Garden": ["Watering Can", "Trowel", "Planter", "Pruning Shears", "Bird Feeder", "Hose Reel"],
}
ADJECTIVES = ["Copper", "Alpine", "Classic", "Compact", "Deluxe", "Nordic", "Rustic", "Solar", "Urban",
              "Vintage", "Midnight", "Coral", "Granite", "Ivory", "Sage", "Walnut"]
EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[a-z]{2,}$", re.I)
SHIPPING = [("standard", "Standard (5-7 days)"), ("express", "Express (1-2 days)"), ("pickup", "Store pickup")]


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def money(cents: int) -> str:
    return f"${cents / 100:,.2f}"


class ShopApp(WebApp):
    name = "shop"
    FACTS = SiteFacts(
        name="shop",
        keywords={"cart": 2, "basket": 2, "checkout": 3, "product": 1, "products": 1, "order": 1, "orders": 1,
                  "shipping": 2, "stock": 1, "price": 1, "purchase": 1, "zip": 1, "warenkorb": 2, "shop": 1},
        outcome_tables={"orders": ["order", "purchase"], "cart": ["cart", "basket", "bag"]},
        volatile={"*": ["session", "token"]}, log_tables=["activity"],
        missing_features=["Apply gift card", "Add to wishlist", "Pay with PayPal", "Track shipment"],
        synonyms=[["Cart", "Basket", "Bag", "Shopping bag", "Shopping cart"], ["My orders", "Order history", "Orders"],
                  ["Place order", "Confirm order"],
                  ["Search products", "Search box"]])
    SITE_NAMES = ["Northwind Goods", "Cobalt Market", "Maple & Co.", "Harbor Supply", "Juniper Store"]
    SCHEMA = """
    CREATE TABLE products (id INTEGER PRIMARY KEY, name TEXT, category TEXT, price_cents INTEGER,
                           stock INTEGER, description TEXT, featured INTEGER DEFAULT 0);
    CREATE TABLE cart_items (session TEXT, product_id INTEGER, quantity INTEGER,
                             PRIMARY KEY (session, product_id));
    CREATE TABLE orders (id INTEGER PRIMARY KEY, user_id INTEGER, full_name TEXT, email TEXT, address TEXT,
                         city TEXT, zip TEXT, shipping TEXT, items TEXT, total_cents INTEGER, status TEXT);
    """
    LABELS = {
        "add_to_cart": ["Add to cart", "Add to basket", "Add to bag"],
        "cart": ["Cart", "Basket", "Shopping bag"],
        "checkout": ["Checkout", "Proceed to checkout", "Check out"],
        "place_order": ["Place order", "Confirm purchase", "Buy now"],
        "remove": ["Remove", "Delete"],
        "update": ["Update", "Save quantity"],
        "orders": ["My orders", "Order history"],
        "home": ["Home", "Shop"],
        "featured": ["Featured products", "Staff picks", "Popular right now"],
        "categories": ["Shop by category", "Categories", "Departments"],
    }
    NAV = [("home", "/"), ("cart", "/cart"), ("orders", "/orders")]
    STATE_QUERIES = {
        "products": "SELECT id, name, category, price_cents, stock FROM products ORDER BY id",
        "cart": ("SELECT c.session, u.username, c.product_id, p.name, c.quantity FROM cart_items c "
                 "JOIN products p ON p.id=c.product_id LEFT JOIN sessions s ON s.token=c.session "
                 "LEFT JOIN users u ON u.id=s.user_id ORDER BY c.rowid"),
        "orders": ("SELECT o.id, u.username, o.full_name, o.email, o.address, o.city, o.zip, o.shipping, "
                   "o.items, o.total_cents, o.status FROM orders o JOIN users u ON u.id=o.user_id ORDER BY o.id"),
    }

    def seed_content(self) -> None:
        cats = self.rng.sample(sorted(CATALOG), 4)
        for cat in cats:
            nouns = self.rng.sample(CATALOG[cat], self.rng.randint(4, 6))
            for noun in nouns:
                name = f"{self.rng.choice(ADJECTIVES)} {noun}"
                price = self.rng.randint(5, 250) * 100 + self.rng.choice([0, 49, 99])
                stock = self.rng.choice([0, 2, 5, 8, 12, 20, 35])
                desc = (f"The {name} is a {self.rng.choice(['dependable', 'handsome', 'lightweight', 'sturdy'])} "
                        f"pick for {cat.lower()} lovers. {self.rng.choice(['Ships in recycled packaging.', 'Two-year warranty.', 'Made to last.'])}")
                self.db.execute("INSERT INTO products (name, category, price_cents, stock, description) VALUES (?,?,?,?,?)",
                                (name, cat, price, stock, desc))
        ids = [r[0] for r in self.q("SELECT id FROM products")]
        for pid in self.rng.sample(ids, 3):
            self.db.execute("UPDATE products SET featured=1 WHERE id=?", (pid,))

    # ---- pieces
    def product_list(self, rows) -> str:
        items = "".join(f'<li><a href="/product/{r["id"]}">{esc(r["name"])}</a> — {money(r["price_cents"])}'
                        + ("" if r["stock"] else " <em>(out of stock)</em>") + "</li>" for r in rows)
        return f"<ul>{items}</ul>" if rows else "<p>No products found.</p>"

    def search_form(self, q: str = "") -> str:
        return (f'<form role="search" method="get" action="/search"><label for="q">Search products</label> '
                f'<input type="search" id="q" name="q" value="{esc(q)}"> '
                f'<button type="submit">{esc(self.labels["search"])}</button></form>')

    # ---- catalog
    @route("GET", r"/")
    def home(self, req: Request) -> Response:
        featured = (f'<section aria-labelledby="h-feat"><h2 id="h-feat">{esc(self.labels["featured"])}</h2>'
                    + self.product_list(self.q("SELECT * FROM products WHERE featured=1 ORDER BY id")) + "</section>")
        cats = "".join(f'<li><a href="/category/{slug(r[0])}">{esc(r[0])}</a></li>'
                       for r in self.q("SELECT DISTINCT category FROM products ORDER BY category"))
        categories = (f'<section aria-labelledby="h-cat"><h2 id="h-cat">{esc(self.labels["categories"])}</h2>'
                      f"<ul>{cats}</ul></section>")
        sections = self.arrange("home", [featured, categories])
        return self.page(req, "Home", f"<h1>Welcome to {esc(self.site_name)}</h1>{self.search_form()}" + "".join(sections))

    @route("GET", r"/category/([a-z0-9-]+)")
    def category(self, req: Request, cat_slug: str) -> Response:
        cats = {slug(r[0]): r[0] for r in self.q("SELECT DISTINCT category FROM products")}
        if cat_slug not in cats:
            return self.not_found(req, "Category")
        rows = self.q("SELECT * FROM products WHERE category=? ORDER BY name", cats[cat_slug])
        self.log(req, "view", "category", cats[cat_slug], f"results={len(rows)}")
        return self.page(req, cats[cat_slug], f"<h1>{esc(cats[cat_slug])}</h1>{self.product_list(rows)}")

    @route("GET", r"/search")
    def search(self, req: Request) -> Response:
        q = req.arg("q")
        rows = (self.q("SELECT * FROM products WHERE name LIKE ? OR category LIKE ? ORDER BY name", f"%{q}%", f"%{q}%")
                if q else [])
        if q:
            self.log(req, "search", "product", normalize_query(q), f"results={len(rows)}")
        body = (f"<h1>Search</h1>{self.search_form(q)}"
                + (f'<p role="status">{len(rows)} result{"s" if len(rows) != 1 else ""} for “{esc(q)}”</p>'
                   + self.product_list(rows) if q else "<p>Type a product name or category.</p>"))
        return self.page(req, f"Search: {q}" if q else "Search", body)

    @route("GET", r"/product/(\d+)")
    def product(self, req: Request, pid: str, errors: dict | None = None, qty: str = "1") -> Response:
        p = self.q1("SELECT * FROM products WHERE id=?", int(pid))
        if p is None:
            return self.not_found(req, "Product")
        if req.method == "GET":  # not the re-rendered form of a failed add-to-cart
            self.log(req, "view", "product", p["name"])
        errors = errors or {}
        stock = f"In stock ({p['stock']} left)" if p["stock"] else "Out of stock"
        buy = (f'<form method="post" action="/cart/add"><input type="hidden" name="product_id" value="{p["id"]}">'
               + field_html("Quantity", "quantity", qty, errors.get("quantity", ""), kind="number", extra='min="1"')
               + f'<button type="submit"{"" if p["stock"] else " disabled"}>{esc(self.labels["add_to_cart"])}</button></form>')
        body = (f'<nav aria-label="Breadcrumb"><a href="/">{esc(self.labels["home"])}</a> › '
                f'<a href="/category/{slug(p["category"])}">{esc(p["category"])}</a></nav>'
                f'<article><h1>{esc(p["name"])}</h1><p>Price: <strong>{money(p["price_cents"])}</strong></p>'
                f'<p>{esc(stock)}</p><p>{esc(p["description"])}</p>{error_summary(errors)}{buy}</article>')
        return self.page(req, p["name"], body, 400 if errors else 200)

    # ---- cart
    @route("POST", r"/cart/add")
    def cart_add(self, req: Request) -> Response:
        pid = req.arg("product_id")
        p = self.q1("SELECT * FROM products WHERE id=?", int(pid)) if pid.isdigit() else None
        if p is None:
            return self.not_found(req, "Product")
        qty = req.arg("quantity", "1")
        have = self.q1("SELECT quantity FROM cart_items WHERE session=? AND product_id=?", req.session, p["id"])
        have_n = have["quantity"] if have else 0
        if not qty.isdigit() or int(qty) < 1:
            return self.product(req, pid, {"quantity": "Quantity must be a whole number of at least 1."}, qty)
        if int(qty) + have_n > p["stock"]:
            return self.product(req, pid, {"quantity": f"Only {p['stock']} in stock."}, qty)
        self.db.execute("INSERT INTO cart_items VALUES (?,?,?) ON CONFLICT (session, product_id) "
                        "DO UPDATE SET quantity=quantity+excluded.quantity", (req.session, p["id"], int(qty)))
        self.flash(req, f"Added {qty} × {p['name']} to your {self.labels['cart'].lower()}.")
        return redirect("/cart")

    def cart_rows(self, req: Request):
        return self.q("SELECT p.*, c.quantity FROM cart_items c JOIN products p ON p.id=c.product_id "
                      "WHERE c.session=? ORDER BY c.rowid", req.session)

    @route("GET", r"/cart")
    def cart(self, req: Request) -> Response:
        rows = self.cart_rows(req)
        if not rows:
            return self.page(req, self.labels["cart"], f'<h1>{esc(self.labels["cart"])}</h1><p>Your {esc(self.labels["cart"].lower())} is empty.</p>')
        table = []
        for r in rows:
            qty_form = (f'<form method="post" action="/cart/update"><input type="hidden" name="product_id" value="{r["id"]}">'
                        f'<label for="qty-{r["id"]}">Quantity of {esc(r["name"])}</label> '
                        f'<input type="number" id="qty-{r["id"]}" name="quantity" min="0" value="{r["quantity"]}"> '
                        f'<button type="submit">{esc(self.labels["update"])}</button></form>')
            rm = (f'<form method="post" action="/cart/update"><input type="hidden" name="product_id" value="{r["id"]}">'
                  f'<input type="hidden" name="quantity" value="0"><button type="submit" aria-label="'
                  f'{esc(self.labels["remove"])} {esc(r["name"])}">{esc(self.labels["remove"])}</button></form>')
            table.append([f'<a href="/product/{r["id"]}">{esc(r["name"])}</a>', money(r["price_cents"]), qty_form,
                          money(r["price_cents"] * r["quantity"]), rm])
        total = sum(r["price_cents"] * r["quantity"] for r in rows)
        body = (f'<h1>{esc(self.labels["cart"])}</h1>'
                + table_html(f"Items in your {self.labels['cart'].lower()}", ["Product", "Price", "Quantity", "Subtotal", ""], table)
                + f'<p>Total: <strong>{money(total)}</strong></p><p><a href="/checkout">{esc(self.labels["checkout"])}</a></p>')
        return self.page(req, self.labels["cart"], body)

    @route("POST", r"/cart/update")
    def cart_update(self, req: Request) -> Response:
        pid, qty = req.arg("product_id"), req.arg("quantity")
        if not (pid.isdigit() and qty.isdigit()):
            self.flash(req, "Quantity must be a whole number.")
        elif int(qty) == 0:
            self.db.execute("DELETE FROM cart_items WHERE session=? AND product_id=?", (req.session, int(pid)))
        else:
            stock = self.q1("SELECT stock FROM products WHERE id=?", int(pid))
            if stock and int(qty) <= stock["stock"]:
                self.db.execute("UPDATE cart_items SET quantity=? WHERE session=? AND product_id=?", (int(qty), req.session, int(pid)))
            else:
                self.flash(req, "Not enough stock for that quantity.")
        return redirect("/cart")

    # ---- checkout
    @route("GET", r"/checkout")
    def checkout_form(self, req: Request, errors: dict | None = None) -> Response:
        if req.user is None:
            return redirect("/login?next=/checkout")
        rows = self.cart_rows(req)
        if not rows:
            return self.page(req, self.labels["checkout"], f'<h1>{esc(self.labels["checkout"])}</h1><p>Nothing to check out yet.</p>')
        errors, f = errors or {}, req.form
        total = sum(r["price_cents"] * r["quantity"] for r in rows)
        summary = "".join(f"<li>{r['quantity']} × {esc(r['name'])}</li>" for r in rows)
        body = (f'<h1>{esc(self.labels["checkout"])}</h1><section aria-labelledby="h-sum"><h2 id="h-sum">Order summary</h2>'
                f"<ul>{summary}</ul><p>Total: <strong>{money(total)}</strong></p></section>{error_summary(errors)}"
                '<form method="post" action="/checkout" novalidate><fieldset><legend>Shipping address</legend>'
                + field_html("Full name", "full_name", f.get("full_name", req.user["display_name"]), errors.get("full_name", ""), required=True)
                + field_html("Email", "email", f.get("email", ""), errors.get("email", ""), kind="email", required=True)
                + field_html("Street address", "address", f.get("address", ""), errors.get("address", ""), required=True)
                + field_html("City", "city", f.get("city", ""), errors.get("city", ""), required=True)
                + field_html("ZIP code", "zip", f.get("zip", ""), errors.get("zip", ""), required=True)
                + "</fieldset>" + select_html("Shipping method", "shipping", SHIPPING, f.get("shipping", "standard"))
                + field_html("Card number", "card", "", errors.get("card", ""), required=True)
                + f'<button type="submit">{esc(self.labels["place_order"])}</button></form>')
        return self.page(req, self.labels["checkout"], body, 400 if errors else 200)

    @route("POST", r"/checkout")
    def checkout(self, req: Request) -> Response:
        if req.user is None:
            return redirect("/login?next=/checkout")
        rows = self.cart_rows(req)
        if not rows:
            return redirect("/cart")
        a = req.arg
        errors = {}
        for key, label in [("full_name", "Full name"), ("address", "Street address"), ("city", "City")]:
            if not a(key):
                errors[key] = f"{label} is required."
        if not EMAIL_RE.match(a("email")):
            errors["email"] = "Enter a valid email address, like name@example.com."
        if not re.fullmatch(r"\d{5}", a("zip")):
            errors["zip"] = "ZIP code must be 5 digits."
        if not re.fullmatch(r"\d{16}", re.sub(r"[\s-]", "", a("card"))):
            errors["card"] = "Card number must be 16 digits."
        if a("shipping", "standard") not in dict(SHIPPING):
            errors["shipping"] = "Choose a shipping method."
        if any(r["quantity"] > r["stock"] for r in rows):
            errors["cart"] = "Some items are no longer in stock."
        if errors:
            return self.checkout_form(req, errors)
        items = [{"product_id": r["id"], "name": r["name"], "quantity": r["quantity"], "price_cents": r["price_cents"]} for r in rows]
        total = sum(i["price_cents"] * i["quantity"] for i in items)
        cur = self.db.execute(
            "INSERT INTO orders (user_id, full_name, email, address, city, zip, shipping, items, total_cents, status) "
            "VALUES (?,?,?,?,?,?,?,?,?, 'placed')",
            (req.user["id"], a("full_name"), a("email"), a("address"), a("city"), a("zip"), a("shipping", "standard"),
             json.dumps(items), total))
        for i in items:
            self.db.execute("UPDATE products SET stock=stock-? WHERE id=?", (i["quantity"], i["product_id"]))
        self.db.execute("DELETE FROM cart_items WHERE session=?", (req.session,))
        return redirect(f"/orders/{cur.lastrowid}")

    @route("GET", r"/orders")
    def orders(self, req: Request) -> Response:
        if req.user is None:
            return redirect("/login?next=/orders")
        rows = self.q("SELECT * FROM orders WHERE user_id=? ORDER BY id", req.user["id"])
        table = [[f'<a href="/orders/{r["id"]}">Order #{r["id"]}</a>', money(r["total_cents"]), esc(r["status"])] for r in rows]
        body = f'<h1>{esc(self.labels["orders"])}</h1>' + (table_html("Your orders", ["Order", "Total", "Status"], table)
                                                          if rows else "<p>No orders yet.</p>")
        return self.page(req, self.labels["orders"], body)

    @route("GET", r"/orders/(\d+)")
    def order(self, req: Request, oid: str) -> Response:
        o = self.q1("SELECT * FROM orders WHERE id=? AND user_id=?", int(oid), req.user["id"] if req.user else -1)
        if o is None:
            return self.not_found(req, "Order")
        self.log(req, "view", "order", f"Order #{o['id']}")
        items = "".join(f"<li>{i['quantity']} × {esc(i['name'])}</li>" for i in json.loads(o["items"]))
        body = (f'<h1>Thank you! Order #{o["id"]} is confirmed</h1><p role="status">Order #{o["id"]} placed.</p>'
                f"<ul>{items}</ul><p>Total: <strong>{money(o['total_cents'])}</strong></p>"
                f"<p>Shipping to {esc(o['full_name'])}, {esc(o['address'])}, {esc(o['city'])} {esc(o['zip'])}</p>")
        return self.page(req, f"Order #{o['id']}", body)
