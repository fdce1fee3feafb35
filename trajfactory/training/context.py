"""What a training row may look like for one model: the chat template that marks assistant turns, and the context
policy that makes every row fit `max_length`.

Template (loss on assistant turns only, via TRL's `assistant_only_loss`, which needs `{% generation %}` markers):
  1. a `chat_template` file given in the settings (it must have the markers);
  2. the model's own template, when it has the markers;
  3. the built-in tiny model's template: a copy of it with the markers (`TINY_TRAINING_TEMPLATE`);
  4. a template TRL knows (Qwen, Llama, Gemma, Phi, ... : `trl.chat_template_utils.get_training_chat_template`);
  5. otherwise an error naming the model: pass a template with markers, or train on every token (`loss: all`).
The markers change nothing in the rendered text (checked on every row before training), and they are used for
training only: the saved model keeps its own template, which vLLM serves.

Context policy, per row (after clipping observations when `clip_tool_output_chars` is set: tool outputs, and a web
trajectory's pages; a web step row, `datasets/web_steps.py`, has its page clipped as the agent clips it, and is used
as it is or dropped, never cut):
  - it fits `max_length` tokens: used as it is;
  - it does not: cut at a turn boundary, keeping the longest prefix that ends after an assistant turn and fits
    (counted as truncated);
  - not even the first assistant turn fits, or there is no assistant turn: dropped, with its reason (counted).
Rows are rendered exactly as TRL renders them (the template with the row's tools), so a kept row is never cut by
TRL's own truncation.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from trajfactory.agents.model import clip_middle
from trajfactory.models.tiny import CHAT_TEMPLATE as TINY_CHAT_TEMPLATE


class TemplateError(ValueError):
    """No chat template with generation markers for this model: names the model and what would be right."""


def _replace_once(text: str, old: str, new: str) -> str:
    if text.count(old) != 1:
        raise TemplateError("the tiny model's chat template changed; update TINY_TRAINING_TEMPLATE's markers in "
                            f"trajfactory/training/context.py (expected one {old!r})")
    return text.replace(old, new)


def _tiny_training_template() -> str:
    """The tiny template with its assistant turn (content, tool calls and `<|im_end|>`) inside generation markers.

    As in TRL's own training templates, the marked span starts after `<|im_start|>assistant` and ends after the
    turn's `<|im_end|>\\n`, so the model learns to stop."""
    t = _replace_once(
        TINY_CHAT_TEMPLATE,
        "{%- if message.role == 'user' or (message.role == 'system' and not loop.first) or "
        "(message.role == 'assistant' and not message.tool_calls) %}",
        "{%- if message.role == 'user' or (message.role == 'system' and not loop.first) %}")
    t = _replace_once(
        t,
        "{%- elif message.role == 'assistant' %}\n{{- '<|im_start|>assistant' }}\n",
        "{%- elif message.role == 'assistant' %}\n{{- '<|im_start|>assistant' }}\n{%- generation %}\n"
        "{%- if not message.tool_calls %}{{- '\\n' + (message.content or '') + '<|im_end|>\\n' }}\n{%- else %}\n")
    return _replace_once(
        t,
        "{%- endfor %}\n{{- '<|im_end|>\\n' }}\n{%- elif message.role == 'tool' %}",
        "{%- endfor %}\n{{- '<|im_end|>\\n' }}\n{%- endif %}\n{%- endgeneration %}\n{%- elif message.role == 'tool' %}")


TINY_TRAINING_TEMPLATE = _tiny_training_template()


def training_template(tokenizer, model_ref: str, template_file_text: str | None = None) -> tuple[str, str]:
    """The chat template to train with (generation markers in it) and where it came from (module docstring)."""
    from trl.chat_template_utils import get_training_chat_template, has_generation_markers

    if template_file_text is not None:
        if not has_generation_markers(template_file_text):
            raise TemplateError("the chat template file given for training has no `{% generation %}` markers; "
                                "wrap each assistant turn's output in `{% generation %}...{% endgeneration %}`")
        return template_file_text, "file"
    own = tokenizer.chat_template
    if isinstance(own, dict):
        own = own.get("default")
    if not own:
        raise TemplateError(f"model {model_ref}: its tokenizer has no chat template; give one with generation "
                            "markers (`--chat-template FILE`)")
    if own == TINY_CHAT_TEMPLATE:
        return TINY_TRAINING_TEMPLATE, "tiny"
    try:
        patched = get_training_chat_template(tokenizer)
    except ValueError:
        raise TemplateError(
            f"model {model_ref}: its chat template has no `{{% generation %}}` markers and TRL cannot patch it, so "
            "assistant-only loss cannot tell assistant tokens apart; pass `--chat-template FILE` (a copy of the "
            "template with `{% generation %}...{% endgeneration %}` around each assistant turn's output), or "
            "`--loss all` to train on every token") from None
    return (own, "model") if patched is None else (patched, "trl")


def render(tokenizer, messages: list[dict], tools: list[dict] | None, template: str) -> str:
    return tokenizer.apply_chat_template(messages, tools=tools, tokenize=False, chat_template=template)


def count_tokens(tokenizer, messages: list[dict], tools: list[dict] | None, template: str) -> int:
    """Tokens of the row as TRL tokenizes it (`apply_chat_template` with the tools)."""
    out = tokenizer.apply_chat_template(messages, tools=tools, tokenize=True, return_dict=True, chat_template=template)
    return len(out["input_ids"])


def clip_tool_outputs(messages: list[dict], limit: int | None) -> tuple[list[dict], int]:
    """Observations longer than `limit` characters cut to their head and tail; returns the messages and how many.
    Observations are tool outputs, and the user turns after the first (a web trajectory's pages: the first user turn
    is the task)."""
    if not limit:
        return messages, 0
    out, clipped, users = [], 0, 0
    for m in messages:
        content = m.get("content")
        users += m["role"] == "user"
        observation = m["role"] == "tool" or (m["role"] == "user" and users > 1)
        if observation and isinstance(content, str) and len(content) > limit:
            m = {**m, "content": clip_middle(content, limit)}
            clipped += 1
        out.append(m)
    return out, clipped


def row_tools(row: dict) -> list[dict] | None:
    """A row's tool schemas (rows carry them as a JSON string)."""
    return json.loads(row["tools"]) if isinstance(row.get("tools"), str) else row.get("tools")


def conversation(row: dict) -> list[dict]:
    """A row's whole conversation: its `messages`, or a prompt-completion row's prompt then completion."""
    return list(row["messages"]) if "messages" in row else [*row["prompt"], *row["completion"]]


def fit_step(tokenizer, row: dict, template: str, max_length: int) -> dict[str, Any]:
    """A prompt-completion row (a web step as the agent sees it) under the context policy: used as it is, or dropped.
    Its pages are clipped as the agent clips them, and it is never cut: a cut would lose the completion it trains."""
    tools = row_tools(row)
    n = count_tokens(tokenizer, conversation(row), tools, template)
    if n <= max_length:
        return {"row": row, "tokens": n, "status": "used", "reason": "", "clipped": 0}
    return {"row": None, "tokens": n, "status": "dropped", "clipped": 0,
            "reason": f"step {row.get('step')}: {n} tokens > max_length {max_length} (a step row is not cut; "
                      "clip its pages harder with clip_tool_output_chars)"}


def fit_row(tokenizer, row: dict, template: str, max_length: int, clip: int | None = None) -> dict[str, Any]:
    """One row under the context policy: `{"row": fitted row or None, "tokens", "status", "reason", "clipped"}`.

    `status` is `used`, `truncated` or `dropped`; a truncated row keeps the longest prefix of whole turns that ends
    after an assistant turn and fits (prefix lengths grow with the turns, so a binary search finds it). A
    prompt-completion row is fitted by `fit_step`."""
    if "prompt" in row:
        return fit_step(tokenizer, row, template, max_length)
    tools = row_tools(row)
    messages, clipped = clip_tool_outputs(list(row["messages"]), clip)
    ends = [i + 1 for i, m in enumerate(messages) if m["role"] == "assistant"]
    if not ends:
        return {"row": None, "tokens": 0, "status": "dropped", "reason": "no assistant turn", "clipped": clipped}
    full = count_tokens(tokenizer, messages, tools, template)
    if full <= max_length:
        return {"row": {**row, "messages": messages}, "tokens": full, "status": "used", "reason": "",
                "clipped": clipped}
    lo, hi, best = 0, len(ends) - 1, None  # the last index into `ends` whose prefix fits
    while lo <= hi:
        mid = (lo + hi) // 2
        n = count_tokens(tokenizer, messages[:ends[mid]], tools, template)
        if n <= max_length:
            best, lo = (ends[mid], n), mid + 1
        else:
            hi = mid - 1
    if best is None:
        return {"row": None, "tokens": full, "status": "dropped", "clipped": clipped,
                "reason": f"the first assistant turn ends past max_length {max_length} (the row has {full} tokens)"}
    cut, n = best
    return {"row": {**row, "messages": messages[:cut]}, "tokens": n, "status": "truncated", "clipped": clipped,
            "reason": f"{full} tokens > max_length {max_length}: kept {cut} of {len(messages)} turns"}


def fit_rows(tokenizer, rows: list[dict], template: str, max_length: int, clip: int | None = None,
             progress: Callable[[], Any] | None = None) -> tuple[list[dict], dict[str, Any]]:
    """The rows that train, and the policy's report: counts, and which rows were truncated or dropped and why."""
    kept, truncated, dropped, clipped, tokens = [], [], [], 0, 0
    for row in rows:
        fit = fit_row(tokenizer, row, template, max_length, clip)
        if progress is not None:
            progress()
        clipped += fit["clipped"]
        entry = {"trajectory_id": row.get("trajectory_id"), "tokens": fit["tokens"], "reason": fit["reason"]}
        if fit["row"] is None:
            dropped.append(entry)
            continue
        kept.append(fit["row"])
        tokens += fit["tokens"]
        if fit["status"] == "truncated":
            truncated.append(entry)
    report = {"max_length": max_length, "clip_tool_output_chars": clip, "rows_in": len(rows), "rows_used": len(kept),
              "rows_truncated": len(truncated), "rows_dropped": len(dropped), "tool_outputs_clipped": clipped,
              "tokens_per_epoch": tokens, "truncated": truncated, "dropped": dropped}
    return kept, report


def check_renders_alike(tokenizer, rows: list[dict], template: str, original: str) -> None:
    """The training template must render each row exactly as the model's own template does (markers are no-ops)."""
    if template == original:
        return
    for row in rows:
        tools = row_tools(row)
        messages = conversation(row)
        if render(tokenizer, messages, tools, template) != render(tokenizer, messages, tools, original):
            raise TemplateError(f"the training chat template renders trajectory {row.get('trajectory_id')} unlike "
                                "the model's own template; the model would learn a format it is not served with")
