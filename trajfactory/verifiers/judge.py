"""Model judge: a served model reads the task, the action history and the final state, and answers
with a strict JSON verdict `{"passed": bool, "confidence": 0..1, "rationale": str}`.

The answer is constrained with `response_format` (`json_schema`, which vLLM 0.32 turns into
structured outputs; its legacy `guided_json` field is ignored there). A server that refuses it
(HTTP 400/422) is asked again with the prompt alone. An answer that does not parse, or breaks the
schema, or a request that fails, is an ABSTENTION: `passed=False`, `score=0`, and
`evidence.detail` (JSON) says `"status": "abstain"` with the raw answer's head. It is never a pass.

A web task (`WebTask`) is judged from its goal, the browser actions, the final URL and page excerpt
(accessibility tree) and the final screenshot. A server whose model takes no images (HTTP 400 about
image/multimodal input) is asked again without the image; `evidence.detail` records `image_dropped`.

`agreement` measures the judge against test verdicts (the labels) on a labeled set, or against web
state checks.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from trajfactory.models.client import ModelClient, ModelError, image_data_uri
from trajfactory.schema import Evidence, Task, Trajectory, Verdict, WebTask, content_hash

VERIFIER = "judge"
VERSION = "1"
DEFAULT_SAMPLING: dict[str, Any] = {"temperature": 0.0, "max_tokens": 400}
STRUCTURED_MODES = ("json_schema", "json_object", "none")
VERDICT_JSON_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "passed": {"type": "boolean"},
        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
        "rationale": {"type": "string"},
    },
    "required": ["passed", "confidence", "rationale"],
    "additionalProperties": False,
}
SYSTEM = (
    "You are a strict reviewer of an agent's work. Decide whether the agent solved the task, from "
    "its actions and the final state. Answer with one JSON object and nothing else: "
    '{"passed": true|false, "confidence": <number 0..1>, "rationale": "<one or two sentences>"}.'
)

WEB_NOTE = ("The agent acted in a web browser. If the site cannot do what the task asks, the right outcome "
            "is that the agent reports it (report_infeasible) and changes nothing.")


class Abstain(Exception):
    """The judge gave no usable verdict."""


# ---------------------------------------------------------------- prompt


def _clip(text: str, limit: int) -> str:
    """Head and tail of a long text (errors usually sit at the end)."""
    if len(text) <= limit:
        return text
    half = max(limit // 2, 1)
    return f"{text[:half]}\n... [{len(text) - 2 * half} characters cut] ...\n{text[-half:]}"


def render_history(trajectory: Trajectory, *, max_steps: int = 30, max_observation_chars: int = 400) -> str:
    steps = trajectory.steps
    shown = steps if len(steps) <= max_steps else steps[: max_steps // 2] + steps[-(max_steps - max_steps // 2):]
    out = []
    if len(shown) < len(steps):
        out.append(f"({len(steps) - len(shown)} middle steps left out)")
    for s in shown:
        args = _clip(json.dumps(s.arguments, sort_keys=True), max_observation_chars)
        status = f"exit {s.exit_code}" if s.exit_code is not None else "no exit code"
        if s.error:
            status += f", error: {s.error}"
        out.append(f"[{s.index}] {s.tool} {args} ({status})\n{_clip(s.observation.strip(), max_observation_chars)}")
    return "\n\n".join(out) or "(no actions)"


def _web_action(step) -> str:
    if not step.tool:
        return f"(no action: {step.error})"
    args = ", ".join(repr(v) for k, v in step.arguments.items() if k != "screenshot")
    return f"{step.tool}({args})" + (f" -> error: {step.error}" if step.error else "")


def final_page(trajectory: Trajectory) -> tuple[str, str]:
    """(final URL, final accessibility tree) of a web trajectory, from its last observations."""
    seen = [m.content for m in trajectory.messages if m.role == "user" and (m.content or "").startswith("URL: ")]
    url = seen[-1].splitlines()[0][5:] if seen else ""
    tree = next((s.observation for s in reversed(trajectory.steps) if s.tool and s.observation), "")
    if not tree and seen:
        tree = seen[-1].split("Accessibility tree:\n", 1)[-1]
    return url, tree


def web_text(task: WebTask, trajectory: Trajectory, *, max_steps: int = 30, max_axtree_chars: int = 3000) -> str:
    steps = trajectory.steps
    shown = steps if len(steps) <= max_steps else steps[: max_steps // 2] + steps[-(max_steps - max_steps // 2):]
    lines = [f"({len(steps) - len(shown)} middle steps left out)"] if len(shown) < len(steps) else []
    lines += [f"[{s.index}] {_clip(_web_action(s), 400)}" for s in shown]
    url, tree = final_page(trajectory)
    return (f"## Task\n{task.instruction.strip()}\n\n{WEB_NOTE}\n\n"
            f"## Actions ({len(steps)} steps, exit status: {trajectory.exit_status})\n"
            + ("\n".join(lines) or "(no actions)")
            + f"\n\n## Final state\nURL: {url or '(unknown)'}\nPage (accessibility tree):\n"
            f"{_clip(tree.strip(), max_axtree_chars) or '(empty)'}\n")


def build_messages(task: Task | WebTask, trajectory: Trajectory, *, image: str | Path | bytes | None = None,
                   max_steps: int = 30, max_observation_chars: int = 400,
                   max_patch_chars: int = 4000, max_axtree_chars: int = 3000) -> list[dict]:
    if isinstance(task, WebTask):
        text = (web_text(task, trajectory, max_steps=max_steps, max_axtree_chars=max_axtree_chars)
                + ("\nA screenshot of the final page is attached.\n" if image is not None else "")
                + "\nDid the agent solve the task? Answer with the JSON object only.")
    else:
        text = _swe_text(task, trajectory, image=image, max_steps=max_steps,
                         max_observation_chars=max_observation_chars, max_patch_chars=max_patch_chars)
    content: str | list[dict] = text
    if image is not None:
        content = [{"type": "text", "text": text}, {"type": "image_url", "image_url": {"url": image_data_uri(image)}}]
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": content}]


def _swe_text(task: Task, trajectory: Trajectory, *, image, max_steps: int, max_observation_chars: int,
              max_patch_chars: int) -> str:
    patch = trajectory.final.patch.strip()
    return (
        f"## Task\n{task.instruction.strip()}\n\n"
        f"## Actions ({len(trajectory.steps)} steps, exit status: {trajectory.exit_status})\n"
        f"{render_history(trajectory, max_steps=max_steps, max_observation_chars=max_observation_chars)}\n\n"
        f"## Final state: the agent's patch\n```diff\n{_clip(patch, max_patch_chars) if patch else '(empty)'}\n```\n"
        + ("\nA screenshot of the final state is attached.\n" if image is not None else "")
        + "\nDid the agent solve the task? Answer with the JSON object only."
    )


def response_format(mode: str) -> dict[str, Any] | None:
    if mode == "json_schema":
        schema = {"name": "verdict", "schema": VERDICT_JSON_SCHEMA, "strict": True}
        return {"type": "json_schema", "json_schema": schema}
    if mode == "json_object":
        return {"type": "json_object"}
    return None


# ---------------------------------------------------------------- answer


def parse_verdict(answer: str | None) -> tuple[bool, float, str]:
    """(passed, confidence, rationale) of a strict JSON answer; raises `Abstain` on anything else.

    The whole answer must be one JSON object (a single ```json fence around it is tolerated) with
    exactly the keys of `VERDICT_JSON_SCHEMA`, of exactly those types.
    """
    text = (answer or "").strip()
    if text.startswith("```") and text.endswith("```") and text.count("```") == 2:
        text = text[3:-3].removeprefix("json").strip()
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise Abstain(f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise Abstain(f"not a JSON object but {type(data).__name__}")
    if set(data) != {"passed", "confidence", "rationale"}:
        raise Abstain(f"keys {sorted(data)} instead of ['confidence', 'passed', 'rationale']")
    passed, confidence, rationale = data["passed"], data["confidence"], data["rationale"]
    if not isinstance(passed, bool):
        raise Abstain(f"passed is {type(passed).__name__}, not a boolean")
    # bool is an int subclass: `"confidence": true` is a schema violation too.
    if isinstance(confidence, bool) or not isinstance(confidence, (int, float)) or not math.isfinite(confidence):
        raise Abstain(f"confidence is {confidence!r}, not a number")
    if not 0.0 <= confidence <= 1.0:
        raise Abstain(f"confidence {confidence} is outside 0..1")
    if not isinstance(rationale, str) or not rationale.strip():
        raise Abstain("rationale is not a non-empty string")
    return passed, float(confidence), rationale.strip()


def is_abstention(verdict: Verdict) -> bool:
    """Whether a judge verdict is an abstention (see the module docstring)."""
    try:
        return json.loads(verdict.evidence.detail).get("status") == "abstain"
    except (ValueError, AttributeError):
        return False


async def judge_trajectory(
    client: ModelClient, task: Task | WebTask, trajectory: Trajectory, *, image: str | Path | bytes | None = None,
    structured: str = "json_schema", sampling: dict[str, Any] | None = None, max_steps: int = 30,
    max_observation_chars: int = 400, max_patch_chars: int = 4000, raw_head_chars: int = 300,
    max_axtree_chars: int = 3000, image_fallback: bool = True,
) -> Verdict:
    """The judge's verdict on one trajectory; an abstention (never a pass) when the answer is unusable.

    `score` is the judge's probability that the task was solved: `confidence` for a pass,
    `1 - confidence` for a fail, 0 for an abstention. With `image_fallback`, a model that takes no
    images is asked again without the image (recorded as `image_dropped`).
    """
    if structured not in STRUCTURED_MODES:
        raise ValueError(f"structured={structured!r}: must be one of {STRUCTURED_MODES}")
    started = time.monotonic()
    params = {**DEFAULT_SAMPLING, **(sampling or {})}
    info: dict[str, Any] = {"model": client.model, "response_format": structured, "image": image is not None}
    fmt = response_format(structured)
    answer: str | None = None
    try:
        for _ in range(3):  # at most: the image refused, then response_format refused
            messages = build_messages(task, trajectory, image=image if info["image"] else None, max_steps=max_steps,
                                      max_observation_chars=max_observation_chars, max_patch_chars=max_patch_chars,
                                      max_axtree_chars=max_axtree_chars)
            try:
                result = await client.chat(messages, **params, **({"response_format": fmt} if fmt else {}))
                break
            except ModelError as exc:
                if info["image"] and image_fallback and exc.images_refused:
                    info["image"], info["image_dropped"] = False, str(exc)[:160]  # a text-only model
                elif fmt is not None and exc.status in (400, 422) and not exc.context_overflow:
                    # The server does not take response_format: ask again, the prompt alone constrains.
                    fmt, info["response_format"] = None, f"none (server refused {structured}: {str(exc)[:160]})"
                else:
                    raise
        else:
            raise ModelError("the server refused every form of the request", 400)
        answer = result.message.content
        passed, confidence, rationale = parse_verdict(answer)
    except (ModelError, Abstain) as exc:
        if isinstance(exc, ModelError) and exc.infrastructure:  # no verdict to record: the step is retried
            raise
        why = f"model error: {exc}" if isinstance(exc, ModelError) else str(exc)
        detail = {"status": "abstain", "why": why[:500], "raw_head": (answer or "")[:raw_head_chars], **info}
        return _verdict(task, trajectory, client.model, False, 0.0, detail, time.monotonic() - started)
    detail = {"status": "verdict", "passed": passed, "confidence": confidence, "rationale": rationale, **info}
    score = confidence if passed else 1.0 - confidence
    return _verdict(task, trajectory, client.model, passed, score, detail, time.monotonic() - started)


def judge_confidence(verdict: Verdict) -> float | None:
    """The confidence a judge verdict recorded (None for an abstention or another verifier's verdict)."""
    try:
        detail = json.loads(verdict.evidence.detail)
    except ValueError:
        return None
    return detail.get("confidence") if isinstance(detail, dict) and detail.get("status") == "verdict" else None


def _verdict(task: Task | WebTask, trajectory: Trajectory, model: str, passed: bool, score: float, detail: dict,
             duration: float) -> Verdict:
    return Verdict(
        verdict_id=content_hash(VERIFIER, VERSION, model, task.task_id, trajectory.trajectory_id, "trajectory"),
        task_id=task.task_id,
        trajectory_id=trajectory.trajectory_id,
        subject="trajectory",
        verifier=VERIFIER,
        verifier_version=VERSION,
        passed=passed,
        score=score,
        evidence=Evidence(detail=json.dumps(detail, sort_keys=True)),
        duration_s=duration,
    )


# ---------------------------------------------------------------- agreement with tests


def cohen_kappa(tp: int, fp: int, fn: int, tn: int) -> float | None:
    """Cohen's kappa of a 2x2 confusion table; None where it is undefined (chance agreement is 1)."""
    n = tp + fp + fn + tn
    if n == 0:
        return None
    observed = (tp + tn) / n
    chance = ((tp + fp) * (tp + fn) + (tn + fn) * (tn + fp)) / (n * n)
    return None if chance == 1 else (observed - chance) / (1 - chance)


def agreement(judge_verdicts: list[Verdict], test_verdicts: list[Verdict]) -> dict[str, Any]:
    """The judge measured against test verdicts (the labels), paired by (task_id, trajectory_id).

    `agreement` and `kappa` count the answered pairs only (abstentions are reported apart, as
    `abstention_rate` and in the confusion counts); `agreement_abstain_as_fail` counts an abstention
    as the fail it is recorded as. Judge verdicts without a label are counted in `unlabeled`.
    """
    labels = {(v.task_id, v.trajectory_id): v.passed for v in test_verdicts}
    counts = {"tp": 0, "fp": 0, "fn": 0, "tn": 0, "abstain_pos": 0, "abstain_neg": 0}
    unlabeled = 0
    for v in judge_verdicts:
        label = labels.get((v.task_id, v.trajectory_id))
        if label is None:
            unlabeled += 1
        elif is_abstention(v):
            counts["abstain_pos" if label else "abstain_neg"] += 1
        else:
            counts[("t" if v.passed == label else "f") + ("p" if v.passed else "n")] += 1
    tp, fp, fn, tn = counts["tp"], counts["fp"], counts["fn"], counts["tn"]
    answered = tp + fp + fn + tn
    abstained = counts["abstain_pos"] + counts["abstain_neg"]
    n = answered + abstained
    return {
        "n": n,
        "answered": answered,
        "abstained": abstained,
        "unlabeled": unlabeled,
        "abstention_rate": abstained / n if n else 0.0,
        "agreement": (tp + tn) / answered if answered else None,
        "agreement_abstain_as_fail": (tp + tn + counts["abstain_neg"]) / n if n else None,
        "kappa": cohen_kappa(tp, fp, fn, tn),
        "confusion": counts,
    }
