"""A tiny random-init Qwen2-architecture chat model the factory builds for itself.

No model hub can be reached, so tests and the default run use this model: a byte-level BPE
tokenizer trained on the factory's own corpus (tool schemas, system prompt, the bundled demo
repository, synthetic chat/tool-call samples), a Qwen2.5-style chat template with tools, and
random weights. It loads with `transformers` and with vLLM from its directory.
"""

from __future__ import annotations

import json
from pathlib import Path

from trajfactory.schema import SWE_SYSTEM_PROMPT, SWE_TOOLS

# ChatML control tokens plus the Hermes tool-call markers used by Qwen2.5 and vLLM's `hermes` parser.
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
TOOL_CALL_TOKENS = ["<tool_call>", "</tool_call>"]
QWEN2_PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
DEMO_REPO = Path(__file__).resolve().parent.parent / "data" / "repos" / "textkit"

# Qwen2.5's template, trimmed: tools go into the system turn, assistant tool calls are
# <tool_call>{json}</tool_call>, tool results are <tool_response> blocks in a user turn.
CHAT_TEMPLATE = r"""{%- if tools %}
{{- '<|im_start|>system\n' }}
{%- if messages[0].role == 'system' %}{{- messages[0].content + '\n\n' }}{%- endif %}
{{- "# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
{%- for tool in tools %}{{- "\n" }}{{- tool | tojson }}{%- endfor %}
{{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- elif messages[0].role == 'system' %}
{{- '<|im_start|>system\n' + messages[0].content + '<|im_end|>\n' }}
{%- endif %}
{%- for message in messages %}
{%- if message.role == 'user' or (message.role == 'system' and not loop.first) or (message.role == 'assistant' and not message.tool_calls) %}
{{- '<|im_start|>' + message.role + '\n' + (message.content or '') + '<|im_end|>\n' }}
{%- elif message.role == 'assistant' %}
{{- '<|im_start|>assistant' }}
{%- if message.content %}{{- '\n' + message.content }}{%- endif %}
{%- for tool_call in message.tool_calls %}
{%- if tool_call.function is defined %}{%- set tool_call = tool_call.function %}{%- endif %}
{{- '\n<tool_call>\n{"name": "' + tool_call.name + '", "arguments": ' }}
{%- if tool_call.arguments is string %}{{- tool_call.arguments }}{%- else %}{{- tool_call.arguments | tojson }}{%- endif %}
{{- '}\n</tool_call>' }}
{%- endfor %}
{{- '<|im_end|>\n' }}
{%- elif message.role == 'tool' %}
{%- if loop.index0 == 0 or messages[loop.index0 - 1].role != 'tool' %}{{- '<|im_start|>user' }}{%- endif %}
{{- '\n<tool_response>\n' + (message.content or '') + '\n</tool_response>' }}
{%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}{{- '<|im_end|>\n' }}{%- endif %}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}
"""


def _synthetic_samples() -> list[str]:
    """A few ChatML conversations with tool calls, so the markers' byte patterns get merges."""
    calls = [
        ("bash", {"command": "python -m pytest -q"}),
        ("bash", {"command": "grep -rn 'def ' src/"}),
        ("edit", {"path": "src/textkit/case.py", "old_str": "return s", "new_str": "return s.lower()"}),
        ("submit", {}),
    ]
    out = []
    for name, args in calls:
        call = json.dumps({"name": name, "arguments": args})
        out.append(
            "<|im_start|>user\nThe tests fail; please fix the bug.<|im_end|>\n"
            f"<|im_start|>assistant\n<tool_call>\n{call}\n</tool_call><|im_end|>\n"
            "<|im_start|>user\n<tool_response>\n[exit code: 0]\n</tool_response><|im_end|>\n"
            "<|im_start|>assistant\nDone.<|im_end|>\n<|endoftext|>"
        )
    return out


def default_corpus() -> list[str]:
    """The factory's own text: tool schemas, the agent system prompt, the demo repository, chat samples."""
    corpus = [json.dumps(t) for t in SWE_TOOLS] + [json.dumps(t, indent=2) for t in SWE_TOOLS]
    corpus.append(SWE_SYSTEM_PROMPT)
    if DEMO_REPO.is_dir():
        corpus += [p.read_text(errors="replace") for p in sorted(DEMO_REPO.rglob("*.py"))]
    return corpus + _synthetic_samples()


def train_tokenizer(corpus: list[str], vocab_size: int = 2048):
    """Byte-level BPE with Qwen2's normalizer and pre-tokenizer: every byte is in the alphabet, and
    transformers' `Qwen2Tokenizer` (which v5 picks for a qwen2 model) tokenizes exactly like tokenizer.json."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    # Not special (as in Qwen2.5): they must survive detokenization for the hermes tool parser.
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in TOOL_CALL_TOKENS])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        chat_template=CHAT_TEMPLATE,
        model_max_length=2048,
    )


def init_tiny_model(
    out_dir: str | Path,
    corpus: list[str] | None = None,
    *,
    vocab_size: int = 2048,
    seed: int = 0,
) -> Path:
    """Build and save the tiny chat model in `out_dir`; the same seed and corpus give the same files."""
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig, Qwen2Config

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer(default_corpus() if corpus is None else corpus, vocab_size)
    tokenizer.save_pretrained(out)
    # Older transformers (vLLM's venv) know this class name, not v5's `TokenizersBackend`.
    cfg_path = out / "tokenizer_config.json"
    tok_cfg = json.loads(cfg_path.read_text())
    tok_cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    tok_cfg.setdefault("chat_template", CHAT_TEMPLATE)
    cfg_path.write_text(json.dumps(tok_cfg, indent=2, sort_keys=True) + "\n")

    eos, pad = tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=256,
        num_attention_heads=4,  # head_dim 64: vLLM's CPU attention refuses head_dim 16
        num_key_value_heads=4,
        num_hidden_layers=2,
        intermediate_size=512,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=eos,
        eos_token_id=eos,
        pad_token_id=pad,
        dtype="float32",
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.generation_config = GenerationConfig(bos_token_id=eos, eos_token_id=eos, pad_token_id=pad)
    model.save_pretrained(out, safe_serialization=True)
    return out
