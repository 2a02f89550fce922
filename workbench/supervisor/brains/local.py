"""The ``local`` brain: a LangChain chat model over one of our checkpoints, in-process.

Same prompt format and tool-call parser as our server (``model.chat``), and the same batching
engine, so several graph branches asking at once share decode steps. Each answer carries the
token-level record RL needs in ``response_metadata``: ``prompt_token_ids``,
``completion_token_ids``, ``logprobs`` and ``weights_version``.

    brain = LocalChatModel("ckpt/", temperature=0.0, max_new_tokens=512)
    ai = brain.bind_tools([my_tool]).invoke([HumanMessage("...")])
    ai.tool_calls  # parsed from <minimax:tool_call> XML
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, convert_to_openai_messages
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.runnables import Runnable
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import ConfigDict, PrivateAttr

from model.chat import END_OF_TURN, TOOL_CALL_BEGIN, as_content, parse_output, render_messages

_ENGINES: dict[str, tuple[Any, Any]] = {}
_LOCK = threading.Lock()


_KEEP_ENGINES = 2  # an RL loop loads a checkpoint per iteration: keep the newest only


def _engine(model_dir: str):
    """One loaded checkpoint (engine + tokenizer) per directory, shared by every brain; the
    least recently used beyond ``_KEEP_ENGINES`` are dropped."""
    key = str(Path(model_dir).resolve())
    with _LOCK:
        if key not in _ENGINES:
            from model.serving import load_engine

            _ENGINES[key] = load_engine(key, max_batch=16)
        _ENGINES[key] = _ENGINES.pop(key)  # most recently used last
        while len(_ENGINES) > _KEEP_ENGINES:  # its decode thread would hold it alive
            _ENGINES.pop(next(iter(_ENGINES)))[0].shutdown()
        return _ENGINES[key]


def prompt_text(wire: list[dict], tools: list[dict] | None, thinking: bool = False) -> str:
    """The prompt the local brain sends for an OpenAI-style conversation: MiniMax-M2's
    template, thinking off by default (our policies answer with the tool call directly).
    SFT renders teacher turns with this same function (``workbench.rl.episodes``)."""
    return render_messages(wire, tools=tools or None, enable_thinking=thinking)


def _listed_remedies(wire: list[dict]) -> dict[tuple[str, str], list[str]]:
    """The remedy ids (with a patch) of the latest ``read_findings`` result: the values a
    ``propose_config_patch`` by id may name."""
    for msg in reversed(wire):
        if msg.get("role") != "tool":
            continue
        try:
            data = json.loads(msg.get("content") or "")
        except (TypeError, json.JSONDecodeError):
            continue
        if isinstance(data, dict) and isinstance(data.get("remedies"), list):
            ids = [r["id"] for r in data["remedies"] if isinstance(r, dict) and r.get("patch")]
            return {("propose_config_patch", "remedy_id"): ids}
    return {}


class LocalChatModel(BaseChatModel):
    model_dir: str
    thinking: bool = False
    temperature: float = 0.0
    top_p: float = 1.0
    max_new_tokens: int = 512
    seed: int | None = None
    # RL rollouts: the share of sampled choices among values a tool result listed (remedy ids)
    # made uniformly at random instead of by the policy (``choose_option``'s ``explore``)
    explore: float = 0.0
    _calls: int = PrivateAttr(0)  # answers given: each call's random draws are its own
    timeout_s: float = 600.0
    # Structured output: tool names, parameter names and enum values only as the schema allows
    # (model.serving.constrain); the rest of the answer is the model's own.
    constrain: bool = True

    model_config = ConfigDict(arbitrary_types_allowed=True)

    def __init__(self, model_dir: str | Path, **kwargs: Any) -> None:
        from model.serving import check_model_dir

        check_model_dir(model_dir)  # a clear one-line error before anything loads
        super().__init__(model_dir=str(model_dir), **kwargs)

    @property
    def _llm_type(self) -> str:
        return "m2-workbench-local"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {
            "model_dir": self.model_dir,
            "temperature": self.temperature,
            "explore": self.explore,
        }

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable | Any],
        *,
        tool_choice: str | None = None,
        **kwargs: Any,
    ) -> Runnable:
        formatted = [convert_to_openai_tool(t) for t in tools]
        if tool_choice == "none":
            formatted = []
        return super().bind(tools=formatted, **kwargs)

    def _call_seed(self) -> int | None:
        """This answer's seed: the brain's seed and how many answers it gave before, so a seeded
        episode is repeatable and its decisions still draw independently (one seed for every
        call would repeat one draw: with it, RL's exploration never fired)."""
        self._calls += 1
        return None if self.seed is None else (int(self.seed) * 1_000_003 + self._calls) % 2**31

    def _choose(
        self, engine, tokenizer, prompt_ids, texts: list[str], temperature: float, explore: float,
        seed: int | None,
    ) -> tuple[int, list[int], list[float]]:  # fmt: skip
        import torch

        from model.serving.constrain import choose_option

        options = [tokenizer.encode(t, add_special_tokens=False).ids for t in texts]
        generator = None if seed is None else torch.Generator().manual_seed(seed)
        return choose_option(engine.model, prompt_ids, options, temperature, generator, explore)

    def _choose_opening(
        self, engine, tokenizer, prompt_ids: list[int], constraint, temperature: float,
        seed: int | None = None,
    ) -> tuple[str, list[int], list[float]]:  # fmt: skip
        """The answer's opening, chosen whole (``choose_option``): the tool, then the value of
        its first required parameter with listed values (a remedy id, a cause), as
        structured-output engines choose among fixed strings."""
        heads = [f'{TOOL_CALL_BEGIN}\n<invoke name="{name}">' for name in constraint.offered]
        seeds = (None, None) if seed is None else (seed, seed + 1)
        k, ids, lps = self._choose(engine, tokenizer, prompt_ids, heads, temperature, 0.0, seeds[0])
        slot = constraint.value_slot(constraint.offered[k])
        if slot is None:
            return heads[k], ids, lps
        param, values, named = slot
        texts = [f'{heads[k]}\n<parameter name="{param}">{v}</parameter>' for v in values]
        explore = self.explore if named else 0.0  # (a schema's enum, a cause, is not explored)
        j, ids, lps = self._choose(
            engine, tokenizer, prompt_ids, texts, temperature, explore, seeds[1]
        )
        return texts[j], ids, lps

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        tools: list[dict[str, Any]] | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        from model.serving import SamplingParams
        from model.serving.constrain import ToolSchemaConstraint

        engine, tokenizer = _engine(self.model_dir)
        wire = convert_to_openai_messages(messages)
        prompt = prompt_text(wire, tools, self.thinking)
        prompt_ids = tokenizer.encode(prompt, add_special_tokens=False).ids
        eos = tokenizer.token_to_id(END_OF_TURN)
        temperature = float(kwargs.get("temperature", self.temperature))
        max_new = int(kwargs.get("max_tokens", self.max_new_tokens))
        seed = self._call_seed()
        constraint, forced, forced_ids, forced_lps = None, "", [], []
        if self.constrain and tools:
            constraint = ToolSchemaConstraint(tokenizer, tools, _listed_remedies(wire))
            if not self.thinking and max_new > 0:
                # Our policies answer with the call at once: its tool and first listed value
                # are chosen whole (see choose_option), the rest generated under the constraint.
                forced, forced_ids, forced_lps = self._choose_opening(
                    engine, tokenizer, prompt_ids, constraint, temperature, seed
                )
                constraint.prefix = forced
                max_new = max(1, max_new - len(forced_ids))
        params = SamplingParams(
            max_new_tokens=max_new,
            temperature=temperature,
            top_p=self.top_p,
            seed=None if seed is None else seed + 2,
            stop_token_ids=tuple(
                t for t in {eos, engine.model.config.eos_token_id} if t is not None
            ),
            logits_processor=constraint,
        )
        done = threading.Event()
        failure: list[str] = []

        def emit(event: tuple) -> None:
            if event[0] == "error":
                failure.append(event[1])
            if event[0] in ("done", "error"):
                done.set()

        seq = engine.submit(prompt_ids + forced_ids, params, emit)
        if not done.wait(self.timeout_s):
            seq.cancel()
            raise TimeoutError(f"local model did not answer within {self.timeout_s:.0f}s")
        if failure:
            raise RuntimeError(f"local generation failed: {failure[0]}")
        out_ids = forced_ids + list(seq.out_ids)
        text = forced + tokenizer.decode(seq.out_ids, skip_special_tokens=False)
        text = text.replace(END_OF_TURN, "")
        for s in stop or []:
            if s in text:
                text = text[: text.find(s)]
        parsed = parse_output(text, tools=tools or None)
        # Content as the server returns it (thought included), so later turns replay it.
        body = text.split(TOOL_CALL_BEGIN)[0] if parsed.tool_calls else text
        message = AIMessage(
            content=as_content(body, thinking_open=self.thinking),
            tool_calls=[
                {"name": c.name, "args": c.arguments, "id": c.id, "type": "tool_call"}
                for c in parsed.tool_calls
            ],
            invalid_tool_calls=[
                {"name": None, "args": None, "id": None, "error": e, "type": "invalid_tool_call"}
                for e in parsed.errors
            ],
            response_metadata={
                "model_name": Path(self.model_dir).name,
                "finish_reason": "tool_calls" if parsed.tool_calls else seq.finish_reason,
                "prompt_token_ids": prompt_ids,
                "completion_token_ids": out_ids,
                "logprobs": forced_lps + list(seq.logprobs),
                "weights_version": seq.weights_version,
                "reasoning": parsed.reasoning,
            },
            usage_metadata={
                "input_tokens": len(prompt_ids),
                "output_tokens": len(out_ids),
                "total_tokens": len(prompt_ids) + len(out_ids),
            },
        )
        return ChatResult(generations=[ChatGeneration(message=message)])
