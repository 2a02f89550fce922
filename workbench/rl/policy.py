"""Policy I/O: the checkpoint + tokenizer, prompt rendering, sampling, greedy evaluation."""

from __future__ import annotations

from pathlib import Path

import torch

from trainer.rl.forward import behaviour_logprobs
from workbench.errors import BadInputError
from workbench.rl.tasks import Task, answer_name, parse_action, prompt_messages


class Policy:
    """The policy checkpoint + tokenizer, with rendering and sampling helpers."""

    def __init__(self, model, tokenizer, answer: str = "code") -> None:
        from model.chat import END_OF_TURN

        self.model, self.tok, self.answer = model, tokenizer, answer
        self.eos = tokenizer.token_to_id(END_OF_TURN)

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def prompt_ids(self, task: Task, actions: list[str]) -> list[int]:
        """Exactly what the server renders for a chat request with thinking off."""
        from model.chat import render_messages

        text = render_messages(prompt_messages(task, actions, self.answer), enable_thinking=False)
        return self.encode(text)

    def answer_ids(self, action: str, actions: list[str]) -> list[int]:
        return self.encode(answer_name(action, actions, self.answer)) + [self.eos]

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode([i for i in ids if i != self.eos])

    @torch.no_grad()
    def sample(self, model, prompt: list[int], n: int, temperature: float, max_new: int, gen):
        """n completions of one prompt, each with its tokens' log-probs under ``model`` (raw,
        untempered: what the server reports and CISPO's ratio needs)."""
        out = model.generate(
            torch.tensor([prompt] * n),
            max_new_tokens=max_new,
            temperature=temperature,
            stop_token_ids=[self.eos],
            generator=gen,
        )[:, len(prompt) :].tolist()
        outs = [ids[: ids.index(self.eos) + 1] if self.eos in ids else ids for ids in out]
        _, raw = behaviour_logprobs(model, prompt, outs, 0.0)  # each distinct answer once
        return list(zip(outs, raw, strict=True))


def load_policy(path: Path, seed: int = 0):
    """Load ``path``; a missing or empty folder gets a fresh tiny policy (+ the shipped tokenizer)."""
    from model.config import MiniMaxM2Config
    from model.modeling import MiniMaxM2ForCausalLM
    from model.tokenizer import default_tokenizer, load_tokenizer, save_tokenizer

    if (path / "config.json").exists():
        model = MiniMaxM2ForCausalLM.from_pretrained(path)
        tok = load_tokenizer(path) if (path / "tokenizer.json").exists() else default_tokenizer()
        return model, tok
    if path.exists() and any(path.iterdir()):
        raise BadInputError(f"--policy {path}: not a checkpoint folder (no config.json)")
    torch.manual_seed(seed)
    cfg = MiniMaxM2Config.from_preset(
        "tiny", num_hidden_layers=2, use_mtp=False, moe_backend="grouped"
    )
    model = MiniMaxM2ForCausalLM(cfg)
    tok = default_tokenizer()
    model.save_pretrained(path)
    save_tokenizer(tok, path)
    return model, tok


def greedy_answers(policy: Policy, model, tasks: list[Task], cache, max_new: int) -> dict:
    """Greedy decoding on each task: scenario -> {answer, reward, source, patch}."""
    model.eval()
    out = {}
    for t in tasks:
        [(ids, _)] = policy.sample(model, policy.prompt_ids(t, t.menu), 1, 0.0, max_new, None)
        act = parse_action(policy.decode(ids), t.menu, policy.answer)
        reward, source = cache.judge(t, act)
        patch = cache.catalog.get(act, []) if act else []
        out[t.scenario] = {"answer": act or "?", "reward": reward, "source": source,
                           "teacher": t.teacher, "patch": patch}  # fmt: skip
    return out


def success_rate(answers: dict[str, dict]) -> float:
    """The fraction of tasks whose greedy answer verifies."""
    return sum(a["reward"] for a in answers.values()) / max(len(answers), 1)


def save_policy(model, tok, ckpt: Path) -> None:
    from model.tokenizer import save_tokenizer

    model.save_pretrained(ckpt)
    save_tokenizer(tok, ckpt)


def imitates(policy: Policy, model, tasks: list[Task], max_new: int) -> bool:
    model.eval()
    for t in tasks:
        [(ids, _)] = policy.sample(model, policy.prompt_ids(t, t.menu), 1, 0.0, max_new, None)
        if parse_action(policy.decode(ids), t.menu, policy.answer) != t.teacher:
            return False
    return True


@torch.no_grad()
def menu_probs(policy: Policy, model, tasks: list[Task]) -> list[list[float]]:
    """Per task, the probability of sampling each menu answer (letter + end of turn)."""
    model.eval()
    out = []
    for t in tasks:
        prompt = policy.prompt_ids(t, t.menu)
        row = []
        for a in t.menu:
            ids = prompt + policy.answer_ids(a, t.menu)
            lp = model.token_logprobs(torch.tensor([ids]), torch.tensor([ids[1:] + [-1]]))[0]
            row.append(float(lp[len(prompt) - 1 : len(ids) - 1].sum().exp()))
        out.append(row)
    return out


@torch.no_grad()
def kl_to(model, start, policy: Policy, tasks: list[Task]) -> float:
    """KL(current || start) of the first answer token's distribution, averaged over tasks."""
    model.eval()
    kls = []
    for t in tasks:
        ids = torch.tensor([policy.prompt_ids(t, t.menu)])
        p = torch.log_softmax(model(ids).logits[0, -1].float(), -1)
        q = torch.log_softmax(start(ids).logits[0, -1].float(), -1)
        kls.append(float((p.exp() * (p - q)).sum()))
    return sum(kls) / max(len(kls), 1)
