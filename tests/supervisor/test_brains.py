"""Brains: the rules brain's protocol, and the openai brain against a real local HTTP server."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from workbench.errors import BadInputError
from workbench.supervisor.brains import make_brain
from workbench.supervisor.brains.base import decide, load_prompts, start_messages
from workbench.supervisor.tools import DIAGNOSE_TOOLS, PROPOSE_TOOLS, EpisodeContext
from workbench.supervisor.trajectory import Trajectory

FINDINGS = [
    {"kind": "divergence", "metric": "loss", "step": 15, "severity": 1.0, "evidence": "loss rose"}
]
DOCTOR = {
    "diagnosis": {"cause": "lr_too_high", "confidence": 0.8, "summary": "lr", "explanation": ""},
    "remedies": [
        {
            "id": "lower_lr",
            "description": "divide lr by 10",
            "patch": [{"key": "optimizer.lr", "op": "mul", "value": 0.1}],
        },
        {
            "id": "clip_grads",
            "description": "clip",
            "patch": [{"key": "optimizer.grad_clip", "op": "set", "value": 1.0}],
        },
    ],
}


def _ctx(tried=()) -> EpisodeContext:
    return EpisodeContext(
        None, "r1", Path("."), "0" * 40, "configs/train.yaml", FINDINGS, DOCTOR, list(tried)
    )


def _decide(brain, tools, tmp_path, phase="diagnose"):
    prompts = load_prompts()
    msgs = start_messages(
        prompts, phase, run_id="r1", findings=FINDINGS, diagnosis=None, config="c.yaml", attempts=[]
    )
    traj = Trajectory(tmp_path / "t.jsonl")
    return decide(
        brain,
        tools,
        msgs,
        _ctx(("lower_lr",) if phase == "propose" else ()),
        traj,
        retry_template=prompts["retry"],
    ), traj


def test_rules_brain_reads_findings_then_decides(tmp_path):
    (name, args), traj = _decide(make_brain("rules"), DIAGNOSE_TOOLS, tmp_path)
    assert name == "submit_diagnosis" and args.cause == "lr_too_high"
    assert [e["name"] for e in traj.of_type("tool")] == ["read_findings"]
    (name, args), _ = _decide(make_brain("rules"), PROPOSE_TOOLS, tmp_path, "propose")
    assert name == "propose_config_patch" and args.remedy_id == "clip_grads"  # lower_lr was tried


def test_unknown_brain_is_a_clear_error():
    with pytest.raises(BadInputError):
        make_brain("oracle")


class _Server:
    """A chat-completions endpoint that answers from a script and records the requests."""

    def __init__(self, replies: list[dict]) -> None:
        self.replies, self.requests = list(replies), []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append(body)
                msg = (
                    outer.replies.pop(0) if outer.replies else {"role": "assistant", "content": "?"}
                )
                data = json.dumps({
                    "id": f"c{len(outer.requests)}", "object": "chat.completion", "created": 0,
                    "model": body["model"], "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                    "choices": [{"index": 0, "message": msg, "finish_reason": "tool_calls"}],
                }).encode()  # fmt: skip
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)  # port 0: a free port
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def _tool_reply(name: str, arguments: str, i: int = 0) -> dict:
    call = {
        "id": f"call{i}",
        "type": "function",
        "function": {"name": name, "arguments": arguments},
    }
    return {"role": "assistant", "content": None, "tool_calls": [call]}


@pytest.fixture
def server(request):
    srv = _Server(request.param)
    yield srv
    srv.close()


GOOD = json.dumps({"cause": "lr_too_high", "confidence": 0.7, "summary": "updates overshoot"})


@pytest.mark.parametrize(
    "server",
    [[_tool_reply("submit_diagnosis", "{not json", 1), _tool_reply("submit_diagnosis", GOOD, 2)]],
    indirect=True,
)
def test_openai_brain_malformed_call_is_retried_with_the_error_shown(server, tmp_path):
    brain = make_brain("openai", base_url=server.url, model="m2")
    (name, args), traj = _decide(brain, DIAGNOSE_TOOLS, tmp_path)
    assert name == "submit_diagnosis" and args.summary == "updates overshoot"
    assert len(server.requests) == 2
    assert {t["function"]["name"] for t in server.requests[0]["tools"]} >= {
        "read_findings",
        "submit_diagnosis",
    }
    second = json.dumps(server.requests[1]["messages"])
    assert "malformed tool call" in second  # the model saw its error
    assert len(traj.of_type("brain_mistake")) == 1


BAD_ARGS = json.dumps({"cause": "gremlins", "confidence": 2, "summary": "?"})


@pytest.mark.parametrize(
    "server",
    [
        [
            _tool_reply("read_findings", "{}", 1),
            _tool_reply("submit_diagnosis", BAD_ARGS, 2),
            _tool_reply("no_such_tool", "{}", 3),
        ]
    ],
    indirect=True,
)
def test_openai_brain_second_mistake_returns_none_for_the_rules_fallback(server, tmp_path):
    brain = make_brain("openai", base_url=server.url, model="m2")
    got, traj = _decide(brain, DIAGNOSE_TOOLS, tmp_path)
    assert got is None
    # The read tool ran and its JSON result went back to the model.
    tool_msgs = [m for m in server.requests[1]["messages"] if m["role"] == "tool"]
    assert tool_msgs and json.loads(tool_msgs[0]["content"])["findings"] == FINDINGS
    errors = [e["error"] for e in traj.of_type("brain_mistake")]
    assert "invalid arguments for submit_diagnosis" in errors[0] and "unknown tool" in errors[1]


def test_unreachable_endpoint_falls_back_instead_of_crashing(tmp_path):
    brain = make_brain("openai", base_url="http://127.0.0.1:9/v1", model="m2")
    got, traj = _decide(brain, DIAGNOSE_TOOLS, tmp_path)
    assert got is None and traj.of_type("brain_error")
