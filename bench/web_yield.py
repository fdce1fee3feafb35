"""Web yield bench: the AgentTrek funnel on the bundled docs and on web-style pages for the real apps, episode reset
time, and browser steps/s vs parallelism.

    python bench/web_yield.py [--browsers 2] [--repeat 4] [--site-repeat 2] [--parallel 1,2,4]
                              [--sections bundled,real,reset,site-steps,steps]

1. Funnel per site (pages -> tutorials -> specs -> tasks -> verified trajectories), the factory's web pipeline on
   the bundled docs; then the same pipeline on the real apps' tutorial pages (`data/site_tutorials/<site>/`: web
   style, with chrome, ads, comments, code blocks, images, and pages that are no tutorial).
2. Episode start and reset per site, the real apps (site adapters) beside the bundled ones: a fresh seeded app +
   a new browser context at its start page, then both closed; and `reset()` of a live episode.
3. Browser steps/s per site, the real apps included, one episode at a time: each site's checked replay workload
   (the bundled apps' plainly worded tutorial, the real apps' tasks from their pages) x --site-repeat; the wall
   time counts each episode's app start and browser context, as a rollout does.
4. Browser steps/s of the same replay workload (three plainly worded tutorials x --repeat) at 1/2/4 episodes
   at once, each with its own Chromium; the ratio is against 1 episode at a time.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from trajfactory.executors.browser_pool import BrowserPool  # noqa: E402
from trajfactory.executors.webapps import get_adapter, launch  # noqa: E402
from trajfactory.pipelines import web  # noqa: E402
from trajfactory.pipelines.runner import LocalRunner  # noqa: E402
from trajfactory.schema import Tutorial, WebTask, content_hash  # noqa: E402
from trajfactory.settings import DatasetConfig, Recipe, WebConfig  # noqa: E402
from trajfactory.synthesizers.web import stage  # noqa: E402
from trajfactory.synthesizers.web.spec import make_web_task, parse_tutorial  # noqa: E402

REAL_PAGES = Path(__file__).resolve().parent.parent / "trajfactory" / "data" / "site_tutorials"
REAL_SITES = ["django_admin", "roundup"]
"""The real third-party apps whose tutorial pages (`REAL_PAGES/<site>/`) the second funnel runs on."""

# the same wording as tests/test_web_tasks.py: tutorials the replay policy grounds on seed 0 of each app
WORKLOAD = {
    "shop": "How to order a Copper Lantern\n1. Click 'Sign in'.\n2. Type your username in the Username field.\n"
            "3. Type your password in the Password field.\n4. Click the 'Sign in' button.\n5. Search for \"Copper Lantern\".\n"
            "6. Open the 'Copper Lantern' product page.\n7. Click 'Add to cart'.\n8. Click 'Checkout'.\n"
            "9. Type 'ada@example.com' in the Email field.\n10. Type '1 Main Street' in the Street address field.\n"
            "11. Type 'Springfield' in the City field.\n12. Type '12345' in the ZIP code field.\n"
            "13. Type '4242 4242 4242 4242' in the Card number field.\n14. Click 'Place order'.\n",
    "forum": "Log in with your username and password. Then click 'New thread'. Type 'Favourite trail snacks?' in the "
             "Title field. Choose 'Hardware' from the 'Category' dropdown. Next, type 'What do you all bring?' in the "
             "Message box. Finally, click the 'Post thread' button.",
    "tracker": "Step 1: Sign in with your account.\nStep 2: Open the issue 'CSV import has a broken layout on narrow "
               "screens'.\nStep 3: Set the 'Status' to 'Resolved'.\nStep 4: Click 'Update status'.\n",
}


def recipe(work: Path, browsers: int = 1, tutorials: list[str] | None = None) -> Recipe:
    """A web-only recipe on the bundled docs, or on the real apps' page folders `tutorials` (each declared as the
    source of its site, as a user declares theirs), rule parser + tutorial replay, writing under `work`."""
    sites = [{"name": Path(t).name, "kind": Path(t).name, "sources": [t]} for t in tutorials or []]
    return Recipe(work_dir=str(work / "work"), dataset=DatasetConfig(root=str(work / "datasets")),
                  web=WebConfig(tutorials=tutorials or ["builtin:docs"], sites=sites, infeasible_share=0.25,
                                browsers=browsers))


def funnel(browsers: int, work: Path, tutorials: list[str] | None = None) -> tuple[list[dict], dict[str, int], float]:
    """The factory's own web pipeline (`pipelines/web.py`) end to end, without Prefect; each row gets `specs`: the
    site's tutorials the rule parser finds steps and the site in."""
    t0 = time.perf_counter()
    result = web.run(recipe(work, browsers, tutorials), LocalRunner())
    reasons: dict[str, int] = {}
    for row in result["summary"].get("quarantine", []):
        if row["stage"] != "harvest":  # pages that are no tutorial are counted in the funnel's own columns
            reasons[row["reason"]] = reasons.get(row["reason"], 0) + row["items"]
    rows = result["summary"]["by_site"]
    specs = spec_counts(tutorials or ["builtin:docs"])
    for r in rows:
        r["specs"] = specs.get(r["site"], 0)
    return rows, reasons, time.perf_counter() - t0


def spec_counts(sources: list[str]) -> dict[str, int]:
    """site -> its pages classified as tutorials that the rule parser makes a spec of (steps and a target site)."""
    with stage.tutorial_sources(sources) as uris:
        tutorials, _ = stage.harvest(uris)
    out: dict[str, int] = {}
    for tut in tutorials:
        if tut.is_tutorial:
            try:
                found = bool(parse_tutorial(tut).target_site)
            except ValueError:  # no steps
                found = False
            out[tut.site or "-"] = out.get(tut.site or "-", 0) + found
    return out


RESET_SITES = [*WORKLOAD, *REAL_SITES]
"""The bundled apps and the real ones (site adapters) whose episode start and reset are timed."""


def reset_times(n: int) -> dict[str, tuple[list[float], list[float]]]:
    """site -> (fresh episode: app + browser context at its start page, then closed; `reset()` of a live episode)."""
    out: dict[str, tuple[list[float], list[float]]] = {}
    with BrowserPool(1) as pool:
        pool.release(pool.acquire())  # Chromium launch is not part of a reset
        for app in RESET_SITES:
            get_adapter(app).start(0).close()  # a real app's once-per-seed template is not part of a reset
            fresh, reset = [], []
            for _ in range(n):
                t0 = time.perf_counter()
                with launch(app, 0) as site, pool.episode(site.url + "/"):
                    t1 = time.perf_counter()
                    site.reset()
                    reset.append(time.perf_counter() - t1)
                fresh.append(time.perf_counter() - t0 - reset[-1])
            out[app] = (sorted(fresh), sorted(reset))
    return out


def workload_tasks(repeat: int, work: Path, establish: bool = True) -> list[WebTask]:
    tasks = []
    for app, text in WORKLOAD.items():
        title, body = (text.split("\n", 1) if text.startswith("How to") else ("", text))
        tut = Tutorial(tutorial_id=content_hash("bench", app), uri=f"bench://{app}", title=title, text=body, site=app)
        tasks.append(make_web_task(parse_tutorial(tut), tut, seed=0))
    if not establish:
        return tasks
    with BrowserPool(1) as pool:  # one gold replay each gives the checks the timed rollouts are verified against
        checked = [web.establish(recipe(work), pool, t) for t in tasks]
    return [t for t in checked if isinstance(t, WebTask)] * repeat


def site_workloads(repeat: int, work: Path) -> dict[str, list[WebTask]]:
    """site -> its checked replay workload x `repeat`: the bundled apps' WORKLOAD tutorial, and the feasible tasks
    of the real apps' tutorial pages (their folders declared as the sites' sources, as in the real funnel)."""
    real = recipe(work, tutorials=[str(REAL_PAGES / site) for site in REAL_SITES])
    web.use_sites(real)
    tutorials, _ = stage.harvest(real.web.tutorials)
    made, _ = stage.tasks_from_tutorials(tutorials, seed=0, infeasible_share=0.0)
    tasks = workload_tasks(1, work, establish=False) + made
    with BrowserPool(1) as pool:  # one gold replay each gives the checks the timed rollouts are verified against
        checked = [web.establish(real, pool, t) for t in tasks]
    out: dict[str, list[WebTask]] = {}
    for t in checked:
        if isinstance(t, WebTask):
            out.setdefault(t.environment.app, []).append(t)
    return {site: out[site] * repeat for site in RESET_SITES if site in out}


def steps_per_second(tasks: list[WebTask], parallel: int, work: Path) -> tuple[float, int, int, float]:
    with BrowserPool(parallel) as pool:
        with ThreadPoolExecutor(parallel) as ex:  # launch every Chromium before the clock starts
            list(ex.map(lambda _: pool.acquire(), range(parallel)))
        for b in list(pool._all):
            pool.release(b)
        t0 = time.perf_counter()
        with ThreadPoolExecutor(parallel) as ex:
            runs = list(ex.map(lambda t: web.replay_rollout(recipe(work), pool, None, t), tasks))
        wall = time.perf_counter() - t0
    steps = sum(len(tr.steps) for tr, _ in runs)
    return steps / wall, steps, sum(v.passed for _, v in runs), wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--browsers", type=int, default=2, help="browsers for the funnel run")
    ap.add_argument("--repeat", type=int, default=4, help="copies of the 3-tutorial replay workload")
    ap.add_argument("--site-repeat", type=int, default=2, help="copies of each site's workload for steps/s per site")
    ap.add_argument("--parallel", default="1,2,4")
    ap.add_argument("--resets", type=int, default=15)
    ap.add_argument("--sections", default="bundled,real,reset,site-steps,steps",
                    help="which parts to run: bundled (funnel on the bundled docs), real (funnel on the real apps' "
                         "pages), reset (episode start/reset per site), site-steps (browser steps/s per site, the "
                         "real apps included), steps (browser steps/s vs parallel episodes)")
    args = ap.parse_args()
    sections = set(args.sections.split(","))
    if unknown := sections - {"bundled", "real", "reset", "site-steps", "steps"}:
        ap.error(f"--sections: unknown {sorted(unknown)}; choose from bundled, real, reset, site-steps, steps")

    work = Path(tempfile.mkdtemp(prefix="tf-web-bench-"))
    runs = []
    if "bundled" in sections:
        runs.append(("the bundled docs", work / "bundled", None))
    if "real" in sections:
        runs.append((f"web-style pages for the real apps ({', '.join(REAL_SITES)})", work / "real",
                     [str(REAL_PAGES / site) for site in REAL_SITES]))
    for what, folder, tutorials in runs:
        rows, reasons, took = funnel(args.browsers, folder, tutorials)
        print(f"\n## Funnel on {what} (rule parser + tutorial replay, {took:.0f}s)\n")
        print("| site | pages | tutorials | specs | tasks (checked) | infeasible tasks | trajectories | verified | "
              "verified infeasible | verified/tutorials |\n|---|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['site']} | {r['pages']} | {r['tutorials']} | {r['specs']} | {r['tasks']} | "
                  f"{r['infeasible_tasks']} | {r['trajectories']} | {r['verified']} | {r['verified_infeasible']} | "
                  f"{r['yield']:.2f} |")
        print(f"\nquarantined by reason: {dict(sorted(reasons.items()))}")
    if "reset" in sections:
        print_resets(args.resets)
    if "site-steps" in sections:
        print_site_steps(args.site_repeat, work)
    if "steps" in sections:
        print_steps(args.repeat, args.parallel, work)


def print_resets(n: int) -> None:
    print("\n## Episode start and reset per site (start: fresh seeded app + new browser context at its start page, "
          "closed; reset: `reset()` of a live episode)\n")
    print("| site | n | start median ms | start p90 ms | reset median ms | reset / start |\n|---|---|---|---|---|---|")
    for app, (fresh, reset) in reset_times(n).items():
        start_ms, reset_ms = statistics.median(fresh) * 1e3, statistics.median(reset) * 1e3
        print(f"| {app} | {len(fresh)} | {start_ms:.0f} | {fresh[int(0.9 * (len(fresh) - 1))] * 1e3:.0f} | "
              f"{reset_ms:.1f} | {reset_ms / start_ms:.3f} |")


def print_site_steps(repeat: int, work: Path) -> None:
    workloads = site_workloads(repeat, work)
    print("\n## Browser steps/s per site, one episode at a time (wall: app start + browser context + replay, "
          f"each site's checked workload x {repeat})\n")
    print("| site | episodes | steps | verified | wall s | steps/s | s per episode |\n|---|---|---|---|---|---|---|")
    for site, tasks in workloads.items():
        rate, steps, ok, wall = steps_per_second(tasks, 1, work)
        print(f"| {site} | {len(tasks)} | {steps} | {ok}/{len(tasks)} | {wall:.1f} | {rate:.2f} | {wall / len(tasks):.1f} |")


def print_steps(repeat: int, parallel: str, work: Path) -> None:
    tasks = workload_tasks(repeat, work)
    print(f"\n## Browser steps/s, same replay workload ({len(tasks)} episodes), one Chromium per parallel episode\n")
    print("| parallel episodes | steps | verified | wall s | steps/s | ratio vs 1 |\n|---|---|---|---|---|---|")
    base = None
    for p in [int(x) for x in parallel.split(",")]:
        rate, steps, ok, wall = steps_per_second(tasks, p, work)
        base = base or rate
        print(f"| {p} | {steps} | {ok}/{len(tasks)} | {wall:.1f} | {rate:.2f} | {rate / base:.2f}x |")


if __name__ == "__main__":
    main()
