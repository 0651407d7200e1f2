"""Three requests at once against `ferrite serve --http --http-queue 1`:
argv[1] the base URL, argv[2] the model. Prints what each got, as JSON: the
answer's finish reason, or the error class, status and code."""
import json
import sys
import threading

import openai

base, model = sys.argv[1:3]
client = openai.OpenAI(base_url=base, api_key="none", max_retries=0, timeout=300)
got = [None] * 3

def one(i):
    try:
        r = client.chat.completions.create(
            model=model, max_tokens=200, temperature=0,
            messages=[{"role": "user", "content": "Write a long story about a dragon."}])
        got[i] = r.choices[0].finish_reason
    except openai.APIStatusError as e:
        got[i] = f"{type(e).__name__} {e.status_code} {e.body.get('code') if isinstance(e.body, dict) else e.body}"

threads = [threading.Thread(target=one, args=(i,)) for i in range(3)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(json.dumps(got))
