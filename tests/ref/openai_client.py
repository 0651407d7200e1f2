"""The official `openai` Python client against `ferrite serve --http`:
argv[1] is the base URL (http://127.0.0.1:PORT/v1), argv[2] the API key,
argv[3] the model name, argv[4] a JSON Schema file, argv[5] a WAV file of
speech (the server has whisper and a voice). Prints one JSON object
of what each scenario got; the Rust test judges it."""
import json
import sys
import threading

import http.client
import urllib.parse
import urllib.request
import jsonschema
import openai

base, key, model, schema_file, wav = sys.argv[1:6]
schema = json.load(open(schema_file))
client = openai.OpenAI(base_url=base, api_key=key, max_retries=0, timeout=120)
japan = [{"role": "user", "content": "What is the capital of Japan?"}]
out = {}

r = client.chat.completions.create(model=model, messages=japan, max_tokens=24, temperature=0)
out["whole"] = {"text": r.choices[0].message.content, "finish": r.choices[0].finish_reason,
                "usage": r.usage.model_dump() if r.usage else None}

chunks = list(client.chat.completions.create(model=model, messages=japan, max_tokens=24, temperature=0,
                                             stream=True, stream_options={"include_usage": True}))
out["stream"] = {"text": "".join(c.choices[0].delta.content or "" for c in chunks if c.choices),
                 "finish": [c.choices[0].finish_reason for c in chunks if c.choices][-1],
                 "usage": chunks[-1].usage.model_dump() if chunks[-1].usage else None}

out["models"] = [m.id for m in client.models.list()]

# The legacy text completions: the prompt continued as is, whole and streamed.
france = "The capital of France is the city of"
r = client.completions.create(model=model, prompt=france, max_tokens=6, temperature=0)
pieces = list(client.completions.create(model=model, prompt=france, max_tokens=6, temperature=0, stream=True))
out["completions"] = {"whole": r.choices[0].text, "object": r.object, "finish": r.choices[0].finish_reason,
                      "completion_tokens": r.usage.completion_tokens,
                      "stream": "".join(c.choices[0].text for c in pieces if c.choices)}

r = client.chat.completions.create(
    model=model, temperature=0, max_tokens=96,
    messages=[{"role": "user", "content": "Is the light in the kitchen on?"}],
    response_format={"type": "json_schema", "json_schema": {"name": "light", "schema": schema, "strict": True}})
text = r.choices[0].message.content
try:
    jsonschema.validate(json.loads(text), schema)
    out["json_schema"] = "valid"
except Exception as e:  # noqa: BLE001 - reported to the test
    out["json_schema"] = f"invalid: {e}: {text!r}"

def error_of(call):
    try:
        call()
        return "no error"
    except openai.APIStatusError as e:
        return f"{type(e).__name__} {e.status_code}"

with open(wav, "rb") as f:
    out["transcription"] = client.audio.transcriptions.create(model="whisper-1", file=f).text
with open(wav, "rb") as f:
    out["transcription_text"] = client.audio.transcriptions.create(
        model="whisper-1", file=f, response_format="text")
out["not_a_wav"] = error_of(lambda: client.audio.transcriptions.create(
    model="whisper-1", file=("q.wav", b"RIFF\x00\x00\x00\x00WAVE", "audio/wav")))
out["unknown_model"] = error_of(lambda: client.chat.completions.create(model="nosuch", messages=japan))
wrong = openai.OpenAI(base_url=base, api_key="wrong-key", max_retries=0)
out["wrong_key"] = error_of(lambda: wrong.chat.completions.create(model=model, messages=japan))
out["negative_max_tokens"] = error_of(
    lambda: client.chat.completions.create(model=model, messages=japan, max_tokens=-1))
out["n2"] = error_of(lambda: client.chat.completions.create(model=model, messages=japan, n=2))
out["unknown_field"] = error_of(
    lambda: client.chat.completions.create(model=model, messages=japan, extra_body={"mirostat": 2}))
# Log probabilities: chat whole and streamed, legacy completions.
r = client.chat.completions.create(model=model, messages=japan, max_tokens=8, temperature=0,
                                   logprobs=True, top_logprobs=3)
lp = r.choices[0].logprobs.content
def greedy_top(t):
    return t.token == t.top_logprobs[0].token and abs(t.logprob - t.top_logprobs[0].logprob) < 1e-5
out["logprobs"] = {
    "text": r.choices[0].message.content,
    "tokens": "".join(t.token for t in lp),
    "bytes": bytes(b for t in lp for b in t.bytes).decode(),
    "n": len(lp), "completion_tokens": r.usage.completion_tokens,
    "tops": sorted({len(t.top_logprobs) for t in lp}),
    "greedy_is_top": all(greedy_top(t) for t in lp),
    "sorted": all(a.logprob >= b.logprob for t in lp for a, b in zip(t.top_logprobs, t.top_logprobs[1:])),
    "max": max(t.logprob for t in lp),
}
chunks = list(client.chat.completions.create(model=model, messages=japan, max_tokens=8, temperature=0,
                                             stream=True, logprobs=True))
slp = [t for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content]
out["logprobs_stream"] = {"text": "".join(c.choices[0].delta.content or "" for c in chunks if c.choices),
                          "tokens": "".join(t.token for t in slp),
                          "same": [round(t.logprob, 4) for t in slp] == [round(t.logprob, 4) for t in lp]}
r = client.completions.create(model=model, prompt=france, max_tokens=6, temperature=0, logprobs=2)
l = r.choices[0].logprobs
out["logprobs_text"] = {"text": r.choices[0].text, "tokens": "".join(l.tokens), "n": len(l.token_logprobs),
                        "tops": sorted({len(t) for t in l.top_logprobs}), "offsets": l.text_offset}
out["top_logprobs_21"] = error_of(lambda: client.chat.completions.create(
    model=model, messages=japan, logprobs=True, top_logprobs=21))

# Embeddings: the client asks for base64; the float form must agree, and a
# text embeds the same alone as in a list.
texts = ["The cat sat on the mat.", "A cat was sitting on a rug.", "Stock markets fell sharply today."]
e = client.embeddings.create(model=model, input=texts)
vecs = [d.embedding for d in e.data]
req = urllib.request.Request(f"{base}/embeddings", method="POST",
                             headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
                             data=json.dumps({"model": model, "input": texts, "encoding_format": "float"}).encode())
with urllib.request.urlopen(req, timeout=120) as f:
    floats = [d["embedding"] for d in json.load(f)["data"]]
alone = client.embeddings.create(model=model, input=texts[2]).data[0].embedding
dot = lambda a, b: sum(x * y for x, y in zip(a, b))
out["embeddings"] = {
    "dims": [len(v) for v in vecs], "norms": [dot(v, v) ** 0.5 for v in vecs],
    "index": [d.index for d in e.data], "prompt_tokens": e.usage.prompt_tokens,
    "cos_cat_rug": dot(vecs[0], vecs[1]), "cos_cat_stocks": dot(vecs[0], vecs[2]),
    "float_vs_base64": max(abs(a - b) for u, v in zip(vecs, floats) for a, b in zip(u, v)),
    "alone_vs_list": max(abs(a - b) for a, b in zip(alone, vecs[2])),
}
out["embeddings_empty"] = error_of(lambda: client.embeddings.create(model=model, input=[""]))
out["embeddings_dimensions"] = error_of(lambda: client.embeddings.create(model=model, input="x", dimensions=7))

# Speech: the server's voice says a sentence, whisper hears it back.
said = "Please turn on the kitchen light."
wav_bytes = client.audio.speech.create(model="tts-1", voice="alloy", input=said, response_format="wav").content
pcm = client.audio.speech.create(model="tts-1", voice="alloy", input=said, response_format="pcm").content
import io, wave
with wave.open(io.BytesIO(wav_bytes)) as w:
    wav_seconds = w.getnframes() / w.getframerate()
    wav_format = [w.getnchannels(), w.getsampwidth()]
out["speech"] = {
    "heard": client.audio.transcriptions.create(model="whisper-1", file=("s.wav", wav_bytes, "audio/wav")).text,
    "wav_format": wav_format, "wav_seconds": wav_seconds, "pcm_seconds": len(pcm) / 2 / 24000,
}
out["speech_mp3"] = error_of(lambda: client.audio.speech.create(
    model="tts-1", voice="alloy", input=said, response_format="mp3"))
out["speech_unknown_voice"] = error_of(lambda: client.audio.speech.create(
    model="tts-1", voice="nosuch", input=said))

# A 10 MB body: refused from its Content-Length, before it is read (the
# client sends the headers and waits, as with `Expect: 100-continue`).
url = urllib.parse.urlparse(base)
conn = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
conn.putrequest("POST", url.path + "/chat/completions")
conn.putheader("Authorization", f"Bearer {key}")
conn.putheader("Content-Type", "application/json")
conn.putheader("Content-Length", str(10 << 20))
conn.endheaders()
big = conn.getresponse()
out["ten_mb_body"] = f"{big.status} {json.load(big)['error']['type']}"
conn.close()

# A client that drops mid-stream frees its place; then eight at once.
s = client.chat.completions.create(model=model, max_tokens=400, temperature=0, stream=True,
                                   messages=[{"role": "user", "content": "Write a long story about a dragon."}])
for i, _ in zip(range(3), s):
    pass
s.close()
results = [None] * 8
def one(i):
    try:
        parts = client.chat.completions.create(model=model, messages=japan, max_tokens=16, temperature=0,
                                               stream=True)
        results[i] = "".join(c.choices[0].delta.content or "" for c in parts if c.choices)
    except Exception as e:  # noqa: BLE001 - reported to the test
        results[i] = f"error: {e}"
threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
for t in threads:
    t.start()
for t in threads:
    t.join()
out["eight_clients"] = results

# A conversation longer than the context loses its oldest turns, as a
# console's does, and is still answered.
long = []
for i in range(60):
    long += [{"role": "user", "content": f"Tell me something about the number {i}."},
             {"role": "assistant", "content": f"The number {i} comes right after {i - 1} and right before {i + 1}; "
                                             f"it is {'even' if i % 2 == 0 else 'odd'}, and its square is {i * i}."}]
r = client.chat.completions.create(model=model, max_tokens=16, temperature=0,
                                   messages=long + japan)
out["long_history"] = {"text": r.choices[0].message.content, "prompt_tokens": r.usage.prompt_tokens}

# Batched answers are the answers: four questions at once (one batch on the
# server's slots) get the same greedy text as each asked alone.
questions = ["What is the capital of Japan?", "How many legs does a spider have?",
             "What color is the sky on a clear day?", "What is the largest planet in the solar system?"]
def ask(q):
    r = client.chat.completions.create(model=model, max_tokens=8, temperature=0,
                                       messages=[{"role": "user", "content": q}])
    return r.choices[0].message.content
alone = [ask(q) for q in questions]
together = [None] * len(questions)
def ask_into(i):
    together[i] = ask(questions[i])
threads = [threading.Thread(target=ask_into, args=(i,)) for i in range(len(questions))]
for t in threads:
    t.start()
for t in threads:
    t.join()
out["batched"] = {"questions": questions, "alone": alone, "together": together}
with urllib.request.urlopen(f"{base.removesuffix('/v1')}/metrics", timeout=30) as m:
    out["metrics"] = {line.split("{")[0]: float(line.split()[-1])
                      for line in m.read().decode().splitlines() if line and not line.startswith("#")}
print(json.dumps(out))
