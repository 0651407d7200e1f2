"""Adapters over the HTTP API with the official `openai` client: argv[1] is
the base URL (http://127.0.0.1:PORT/v1), argv[2] the model name, argv[3] an
adapter's name. Asks the same question of `MODEL` and `MODEL:ADAPTER`, then
of `MODEL` again (the swap back). Prints one JSON object; the Rust test
judges it."""
import json
import sys

import openai

base, model, adapter = sys.argv[1:4]
client = openai.OpenAI(base_url=base, api_key="none", max_retries=0, timeout=120)
q = [{"role": "user", "content": "What is the capital of Veltria?"}]


def ask(name):
    r = client.chat.completions.create(model=name, messages=q, max_tokens=24, temperature=0)
    return {"model": r.model, "text": r.choices[0].message.content}


out = {"models": [m.id for m in client.models.list()],
       "base": ask(model), "adapter": ask(f"{model}:{adapter}"), "base_again": ask(model)}
try:
    client.chat.completions.create(model=f"{model}:nosuch", messages=q)
    out["unknown_adapter"] = "no error"
except openai.APIStatusError as e:
    out["unknown_adapter"] = f"{type(e).__name__} {e.status_code}"
print(json.dumps(out))
