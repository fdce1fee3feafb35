"""Tutorial text -> AgentTrek-style task spec (platform, target site, description, prerequisites,
steps, expected outcome), and web tasks built from it, feasible or deliberately infeasible.

The rule-based parser needs no model; `parse_tutorial_with_model` asks a served model for the same
spec under a JSON schema and falls back to the rules whenever the answer is unusable.
"""

from __future__ import annotations

import json
import re
from typing import Any

from trajfactory.schema import StatePredicate, Tutorial, WebEnvironment, WebProvenance, WebTask, WebTaskSpec, content_hash, control_chars
from trajfactory.settings.sites import known_sites, site_facts
from trajfactory.sources.tutorial_text import guess_site
from trajfactory.synthesizers.web.page_text import prepare, split_sentences

SYNTHESIZER = "web.tutorial_spec"
VERSION = "1"

UI_VERBS = ("click", "tap", "press", "select", "choose", "pick", "type", "enter", "fill", "write", "input", "open",
            "go", "navigate", "visit", "sign", "log", "search", "submit", "set", "add", "change", "find", "scroll",
            "check", "uncheck", "hit", "switch", "return", "head", "follow", "use", "leave", "post", "reply",
            "create", "save", "update")
OPENERS = re.compile(r"^(?:first|then|next(?!\s+to\b)|now|finally|afterwards|after that|lastly|once done|to finish)\s*,?\s*", re.I)
# "On the product page, click ..." / "Below your post, click ...": a short place phrase before the verb
LEAD_PLACE = re.compile(r"^(?:on|in|under|below|above|from|at|inside|within|next to|beside)\b[^,.;]{0,80},\s*", re.I)
SCREENSHOT = re.compile(r"\[(?:screenshot|image|figure|picture|video)\b[^\]]*\]", re.I)
HEADING = re.compile(r"^\s*#{1,6}\s*(.*)$")
STEP_HEADING = re.compile(r"^\s*#{1,6}\s*step\s*(\d+)\s*[:.)\u2014\u2013-]?\s*(.*)$", re.I)
ANSWER = re.compile(r"^\s*(?:a|answer)\s*:\s*", re.I)
NUMBERED = re.compile(r"^\s*(?:step\s*(\d+)\s*[:.)-]\s*|(\d+)\s*[.)](?!\d)\s*|[-*\u2022]\s+|\(\d+\)\s*)(.+)$", re.I)
INLINE_NUM = re.compile(r"(?:^|(?<=[\s.!?]))(?:step\s*)?(\d{1,2})\s*[.):]\s+(?=\S)", re.I)
OUTCOME_RE = re.compile(r"\b(you should (?:now )?see|you will (?:now )?see|you'll see|should now|will now|you should be|"
                        r"now (?:shows?|lists?|displays?|contains?|opens?)|(?:is|are) (?:now )?shown|"
                        r"is now|are now|will appear|appears?|expected (?:outcome|result)|result:|the result is)\b", re.I)
PREREQ_RE = re.compile(r"\b(you need|you must have|you'll need|you will need|requires?|make sure|before you (?:begin|start)|"
                       r"prerequisites?|an account on)\b", re.I)
def _sentences(text: str) -> list[str]:
    return [s for line in text.splitlines() for s in split_sentences(line)]


def _is_imperative(sentence: str) -> bool:
    words = LEAD_PLACE.sub("", OPENERS.sub("", sentence.strip())).split()
    return bool(words) and words[0].lower().strip(",:") in UI_VERBS


def _clean(step: str) -> str:
    step = OPENERS.sub("", re.sub(r"\s+", " ", step).strip().rstrip(";"))
    return step[:1].upper() + step[1:]


def _normalize(text: str) -> str:
    """Markdown-ish page text -> plain step text: screenshot descriptions go, `## Step N: Title` headings become
    `Step N:` markers in front of their section's body (the heading's title is not an instruction), other
    headings go, and FAQ answers lose their `A:` prefix. Page chrome, prerequisites and code go first (`prepare`)."""
    text = SCREENSHOT.sub("", prepare(text).text)
    out: list[str] = []
    pending = ""
    for line in text.splitlines():
        if m := STEP_HEADING.match(line):
            pending = f"Step {m.group(1)}: "
            continue
        if HEADING.match(line):
            pending = ""
            continue
        line = ANSWER.sub("", line)
        if not line.strip():
            continue
        out.append(pending + line.strip() if pending else line)
        pending = ""
    return "\n".join(out)


def extract_steps(text: str) -> tuple[list[str], list[str]]:
    """(steps, outcome sentences): numbered / `Step N:` / bulleted lines, inline `1. ... 2. ...`, else imperative prose."""
    text = _normalize(text)
    lines = [ln for ln in text.splitlines() if ln.strip()]
    listed = [m.group(3) for ln in lines if (m := NUMBERED.match(ln))]
    if len(listed) < 2:  # maybe all steps sit in one paragraph: "1. Click X. 2. Type Y."
        marks = list(INLINE_NUM.finditer(text))
        nums = [int(m.group(1)) for m in marks]
        if len(marks) >= 2 and nums == list(range(nums[0], nums[0] + len(nums))):
            ends = [m.start() for m in marks[1:]] + [len(text)]
            listed = [text[m.end():e] for m, e in zip(marks, ends)]
    candidates = listed or [s for s in _sentences(text) if _is_imperative(s)]
    steps, outcomes = [], []
    for n, item in enumerate(candidates):
        kept = []
        for s in _sentences(item) or [item]:  # a step may carry a "You should see ..." tail
            if OUTCOME_RE.search(s) and not _is_imperative(s):
                if n == len(candidates) - 1:  # earlier tails are checkpoints, not the task's outcome
                    outcomes.append(s)
            elif kept and any(_is_imperative(k) for k in kept) and not _is_imperative(s):
                continue  # a note after the instruction ("It may be labelled X.", "To cancel, click Y.")
            else:
                kept.append(s)
        if kept:
            steps.append(_clean(" ".join(kept)))
    rest = "\n".join(ln for ln in lines if not NUMBERED.match(ln)) if listed else text  # text outside the list
    outcomes += [s for s in _sentences(rest) if OUTCOME_RE.search(s) and not _is_imperative(s)]
    return steps, list(dict.fromkeys(outcomes))


def target_site(text: str, hint: str | None = None) -> str:
    """The site a tutorial is about: the tutorial's own `site`, else the one its words tell ('' when none)."""
    return hint or guess_site(text) or ""


def _description(title: str, text: str, steps: list[str]) -> str:
    t = re.sub(r"^(?:how to|how do i|tutorial:|guide:)\s*", "", title.strip(), flags=re.I).rstrip("?.! ")
    if t:
        return t[0].upper() + t[1:]
    for s in _sentences(text):  # a leading sentence that is neither a step nor an outcome
        if not NUMBERED.match(s) and not _is_imperative(s) and not OUTCOME_RE.search(s) and not PREREQ_RE.search(s):
            return s.rstrip(".")
    return f"Follow these steps: {'; '.join(steps)}" if steps else ""


def parse_tutorial(tutorial: Tutorial | str, title: str = "", site: str | None = None) -> WebTaskSpec:
    """The rule-based parser: a tutorial's text -> `WebTaskSpec`. Raises ValueError when no step is found."""
    if isinstance(tutorial, Tutorial):
        text, title, site = tutorial.text, title or tutorial.title, site or tutorial.site
    else:
        text = tutorial
    steps, outcomes = extract_steps(text)
    if not steps:
        raise ValueError("no instruction steps found: expected numbered lines, 'Step N:' lines, bullets, "
                         "or sentences that start with a UI verb (click, type, select ...)")
    prepared = prepare(text)
    prereq = prepared.prerequisites + [s for s in _sentences(prepared.text) if PREREQ_RE.search(s) and not NUMBERED.match(s)
                                       and s not in steps and not HEADING.match(s)]
    expected = " ".join(outcomes) or f"The final step is done: {steps[-1].rstrip('.')}."
    return WebTaskSpec(target_site=target_site(title + "\n" + text, site), task_description=_description(title, text, steps),
                       prerequisites=prereq, steps=steps, expected_outcome=expected)


# ---------------------------------------------------------------- model-backed path


SPEC_JSON_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "platform": {"type": "string"},
        "target_site": {"type": "string"},
        "task_description": {"type": "string"},
        "prerequisites": {"type": "array", "items": {"type": "string"}},
        "steps": {"type": "array", "items": {"type": "string"}, "minItems": 1},
        "expected_outcome": {"type": "string"},
    },
    "required": ["platform", "target_site", "task_description", "prerequisites", "steps", "expected_outcome"],
    "additionalProperties": False,
}
SPEC_PROMPT = ("Turn this web tutorial into a task spec. Fields: platform (web), target_site, task_description "
               "(one sentence), prerequisites, steps (one imperative UI instruction each, keep quoted labels), "
               "expected_outcome. Answer with JSON only.\n\nTitle: {title}\n\n{text}")


async def parse_tutorial_with_model(tutorial: Tutorial, client, **sampling: Any) -> tuple[WebTaskSpec, str]:
    """(spec, parser): a served model's JSON-schema-constrained spec, or the rule parser's when that fails."""
    from trajfactory.models.client import ModelError

    fmt = {"type": "json_schema", "json_schema": {"name": "web_task_spec", "schema": SPEC_JSON_SCHEMA, "strict": True}}
    try:
        result = await client.chat([{"role": "user", "content": SPEC_PROMPT.format(title=tutorial.title, text=tutorial.text[:6000])}],
                                   response_format=fmt, **{"temperature": 0.0, "max_tokens": 512, **sampling})
        if (bad := control_chars(result.message.content or "")) is not None:
            raise ValueError(f"not_text: {bad}")
        spec = WebTaskSpec.model_validate(json.loads(result.message.content or ""))
        if not spec.steps or not all(s.strip() for s in spec.steps):
            raise ValueError("model spec has empty steps")
        return spec.model_copy(update={"target_site": spec.target_site or target_site(tutorial.text, tutorial.site)}), "model"
    except (ModelError, ValueError, TypeError) as exc:  # pydantic's ValidationError and JSONDecodeError are ValueErrors
        return parse_tutorial(tutorial), f"rule-fallback: {type(exc).__name__}"


# ---------------------------------------------------------------- tasks


def _task_id(env: WebEnvironment, spec: WebTaskSpec, feasible: bool) -> str:
    return content_hash(env.model_dump(), spec.model_dump(), feasible)


def make_web_task(spec: WebTaskSpec, tutorial: Tutorial, app: str | None = None, seed: int = 0, start_path: str = "/",
                  checks: list[StatePredicate] | None = None, parser: str = "rule") -> WebTask:
    """A feasible `WebTask` of `spec` on a registered site (the spec's target site unless `app` is given)."""
    app = app or spec.target_site
    if not app:
        raise ValueError(f"tutorial {tutorial.uri}: no target site could be told; pass app= (one of {known_sites()})")
    env = WebEnvironment(app=app, seed=seed, start_path=start_path)
    return WebTask(task_id=_task_id(env, spec, True), instruction=_instruction(spec), environment=env, spec=spec,
                   checks=list(checks or []), difficulty=_difficulty(spec),
                   provenance=WebProvenance(tutorial_id=tutorial.tutorial_id, tutorial_uri=tutorial.uri,
                                            synthesizer=SYNTHESIZER, synthesizer_version=VERSION,
                                            params={"parser": parser, "app": app, "seed": seed}))


def _instruction(spec: WebTaskSpec) -> str:
    steps = "\n".join(f"{i}. {s}" for i, s in enumerate(spec.steps, 1))
    return f"{spec.task_description}\n\nSteps:\n{steps}\n\nExpected outcome: {spec.expected_outcome}"


def _difficulty(spec: WebTaskSpec) -> str:
    return "easy" if len(spec.steps) <= 4 else "medium" if len(spec.steps) <= 8 else "hard"


# a form that asks for a password but is no sign-in: "Fill in Username, Password and Password confirmation"
_NEW_ACCOUNT = re.compile(r"\bconfirm(?:ation)?\b|\brepeat\b|\bagain\b|\bnew password\b|\bsign\s*up\b|\bregist", re.I)


def _is_login(step: str) -> bool:
    """A sign-in step: "Log in ...", or entering a username/password that is not a new account's form."""
    if re.search(r"\b(sign|log)\s*in\b|\blogin\b", step, re.I):
        return True
    return bool(re.search(r"\bpassword\b|\busername\b", step, re.I)) and not _NEW_ACCOUNT.search(step)


def make_infeasible(task: WebTask, site_labels: dict[str, str] | None = None, pick: int = 0) -> WebTask:
    """An infeasible twin of `task`: a step asks for a feature the app lacks, before anything changes state.

    The step is inserted right after the login steps, so a correct agent reports infeasibility
    with the state untouched; `site_labels` (the app's real button texts) guard against picking
    a feature the seeded site does have.
    """
    app = task.environment.app
    real = {v.lower() for v in (site_labels or {}).values()}
    facts = site_facts(app)
    options = [f for f in (facts.missing_features if facts and facts.missing_features else ["Export to PDF"])
               if f.lower() not in real]
    if not options:
        raise ValueError(f"no missing feature known for app {app!r}: declare some in its site facts (missing_features)")
    feature = options[pick % len(options)]
    steps = list(task.spec.steps)
    at = max([i + 1 for i, s in enumerate(steps) if _is_login(s)], default=0)
    bad = f"Click the '{feature}' button."
    steps.insert(at, bad)
    spec = task.spec.model_copy(update={"steps": steps, "expected_outcome": f"The site has no '{feature}' feature: "
                                        "the task cannot be done, and nothing may change."})
    params = {**task.provenance.params, "infeasible_step": at, "missing_feature": feature}
    return task.model_copy(update={
        "task_id": _task_id(task.environment, spec, False), "instruction": _instruction(spec), "spec": spec,
        "feasible": False, "infeasible_reason": f"no '{feature}' control on {app}", "checks": [], "gold": [],
        "provenance": task.provenance.model_copy(update={"params": params})})
