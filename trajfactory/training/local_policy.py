"""An in-process transformers model behind the factory's model agent, for on-policy RL (`training/grpo.py`).

    client = LocalChatClient(lm, tokenizer, max_context=2048)
    policy = ModelPolicy(client, ModelPolicyConfig(actions="text", max_tokens=32))   # the factory's own agent
    episode = await run_episode(env, policy, task)                                   # the factory's own loop
    rollout = client.rollout()      # prompt ids, completion ids, env mask, sampling logprobs of that episode

`LocalChatClient` answers `ModelPolicy`'s `chat` calls with `model.generate` instead of an HTTP server, so the
agent's prompting and its parsing of replies (`agents/model.py`) are exactly those of a served model. It keeps the
episode as ONE growing token sequence: each turn's input is the previous input, the tokens it generated, and the
tokens the chat template adds for the new messages (tool results, error observations, the generation prompt). So the
sequence the trainer scores is exactly what the model saw and sampled; `env_mask` is 1 on sampled tokens only.
That bookkeeping is `TokenChatClient`'s; `training/vllm_policy.py` samples the same way on a vLLM server.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from trajfactory.models.client import ChatResult, ModelError
from trajfactory.schema import Message


@dataclass
class Rollout:
    """One episode as token ids: the first turn's input, then everything after it (sampled or not)."""

    prompt_ids: list[int] = field(default_factory=list)
    completion_ids: list[int] = field(default_factory=list)
    env_mask: list[int] = field(default_factory=list)
    """1: a token the model sampled (trained on); 0: a token the environment or the template added."""
    logprobs: list[float] = field(default_factory=list)
    """The sampling log-probability of each completion token (0.0 where the environment added it)."""
    turns: int = 0


class TokenChatClient:
    """`ModelClient.chat` on one growing token sequence per episode (text actions only, one episode at a time);
    `_sample` generates: in-process here (`LocalChatClient`), or on a vLLM server (`training/vllm_policy.py`)."""

    def __init__(self, tokenizer, *, max_context: int, name: str = "local"):
        self.tokenizer, self.max_context, self.model = tokenizer, max_context, name
        self._text = ""  # the rendered conversation the running ids stand for
        self._ids: list[int] = []
        self._rollout = Rollout()

    def start_episode(self) -> None:
        self._text, self._ids, self._rollout = "", [], Rollout()

    def rollout(self) -> Rollout:
        return self._rollout

    def request_cost(self, result: ChatResult) -> float:
        return 0.0

    def _render(self, messages: list[dict[str, Any]], generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)

    def _new_tokens(self, messages: list[dict[str, Any]]) -> list[int]:
        """The tokens the template adds for the messages since the last turn (all of them on the first turn)."""
        full = self._render(messages, True)
        if self._text and full.startswith(self._text):  # the template's end of the last reply comes with the rest
            return self.tokenizer(full[len(self._text):], add_special_tokens=False)["input_ids"]
        return self.tokenizer(full, add_special_tokens=False)["input_ids"]

    async def _sample(self, ids: list[int], max_new: int, temperature: float, top_p: float, seed: int | None
                      ) -> tuple[list[int], list[float]]:
        """The token ids sampled after `ids` and the sampling log-probability of each."""
        raise NotImplementedError

    async def chat(self, messages: list[dict[str, Any]], tools: Any = None, **sampling: Any) -> ChatResult:
        if tools:
            raise ModelError(f"{type(self).__name__} reads text actions only; use ModelPolicyConfig(actions='text')",
                             400)
        started = time.monotonic()
        added = self._new_tokens(messages)
        first = not self._ids
        max_new = int(sampling.get("max_tokens") or 64)
        if len(self._ids) + len(added) + max_new > self.max_context:
            raise ModelError(f"the episode reached the model's maximum context length of {self.max_context} tokens",
                             400)
        ids = self._ids + added
        seed = sampling.get("seed")
        sampled, logps = await self._sample(ids, max_new, float(sampling.get("temperature", 1.0)),
                                            float(sampling.get("top_p") or 1.0),
                                            None if seed is None else int(seed) * 1009 + self._rollout.turns)
        r = self._rollout
        if first:
            r.prompt_ids = list(ids)
        else:
            r.completion_ids += added
            r.env_mask += [0] * len(added)
            r.logprobs += [0.0] * len(added)
        r.completion_ids += sampled
        r.env_mask += [1] * len(sampled)
        r.logprobs += logps
        r.turns += 1
        self._ids = ids + sampled
        text = self.tokenizer.decode(sampled, skip_special_tokens=True)
        self._text = self._render(messages, True) + text
        eos = self.tokenizer.eos_token_id
        return ChatResult(message=Message(role="assistant", content=text),
                          finish_reason="stop" if sampled and sampled[-1] == eos else "length",
                          prompt_tokens=len(ids), completion_tokens=len(sampled),
                          latency_s=time.monotonic() - started, raw={})


class LocalChatClient(TokenChatClient):
    """Generation with `model.generate` in this process, on the model under training."""

    def __init__(self, lm, tokenizer, *, max_context: int, name: str = "local"):
        super().__init__(tokenizer, max_context=max_context, name=name)
        self.lm = lm

    async def _sample(self, ids: list[int], max_new: int, temperature: float, top_p: float, seed: int | None
                      ) -> tuple[list[int], list[float]]:
        import torch

        if seed is not None:
            torch.manual_seed(seed)
        self.lm.eval()
        with torch.no_grad():
            out = self.lm.generate(
                torch.tensor([ids], device=self.lm.device), attention_mask=torch.ones(1, len(ids), dtype=torch.long,
                                                                                    device=self.lm.device),
                max_new_tokens=max_new, do_sample=temperature > 0, temperature=temperature or None,
                top_p=top_p, output_scores=True, return_dict_in_generate=True,
                pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id)
        sampled = out.sequences[0, len(ids):].tolist()
        logps = [torch.log_softmax(s[0].float(), -1)[t].item() for s, t in zip(out.scores, sampled, strict=True)]
        return sampled, logps
