#!/usr/bin/env bash
# Serve a tiny checkpoint with vLLM (our plugin + MiniMax-M2 tool/reasoning parsers) and make
# one tool call through the OpenAI API. Needs a CUDA machine with vLLM installed.
#
#   scripts/gpu_vllm_smoke.sh [PORT]
#
# The checkpoint is the tiny preset with its lm_head fitted (tests/serving/conftest.py) so that,
# greedily, it answers "Weather in Paris?" with a <minimax:tool_call> for get_weather; vLLM's
# minimax_m2 parser must turn that into an OpenAI tool call.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
PORT=${1:-8765}
WORK=$(mktemp -d)
trap 'kill ${VLLM_PID:-} 2>/dev/null || true; rm -rf "$WORK"' EXIT

command -v vllm >/dev/null || { echo "error: vllm is not installed (pip install vllm)" >&2; exit 1; }

"$PY" - "$WORK/tiny" <<'PY'
import sys
from pathlib import Path
sys.path.insert(0, ".")
from tests.serving.conftest import fit_tool_head, save, tiny_model
from model.vllm_plugin import write_chat_template
out = Path(sys.argv[1])
save(fit_tool_head(tiny_model(seed=0)), out)
write_chat_template(out)
print("checkpoint:", out)
PY

vllm serve "$WORK/tiny" --port "$PORT" --served-model-name tiny \
  --chat-template "$WORK/tiny/chat_template.jinja" \
  --enable-auto-tool-choice --tool-call-parser minimax_m2 \
  --reasoning-parser minimax_m2_append_think \
  --max-model-len 2048 --gpu-memory-utilization 0.3 --enforce-eager \
  >"$WORK/vllm.log" 2>&1 &
VLLM_PID=$!

for _ in $(seq 1 180); do
  curl -sf "http://127.0.0.1:$PORT/health" >/dev/null && break
  kill -0 "$VLLM_PID" 2>/dev/null || { tail -50 "$WORK/vllm.log"; exit 1; }
  sleep 2
done

"$PY" - "$PORT" <<'PY'
import json, sys
from openai import OpenAI
sys.path.insert(0, ".")
from tests.serving.conftest import TOOL_MESSAGES, TOOLS
c = OpenAI(base_url=f"http://127.0.0.1:{sys.argv[1]}/v1", api_key="x")
r = c.chat.completions.create(model="tiny", messages=TOOL_MESSAGES, tools=TOOLS, max_tokens=120, temperature=0)
msg = r.choices[0].message
print("content:", repr(msg.content))
calls = [(t.function.name, json.loads(t.function.arguments)) for t in msg.tool_calls or []]
print("tool calls:", calls)
assert calls == [("get_weather", {"city": "Paris", "days": 2})], calls
print("OK: vLLM served our checkpoint and returned the tool call")
PY
