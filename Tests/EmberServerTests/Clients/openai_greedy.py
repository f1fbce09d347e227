"""Greedy generations from a real Ember server through the `openai` package, printed as JSON.

Usage: openai_greedy.py PORT API_KEY PROMPT MAX_TOKENS. Runs the prompt as a text completion
and as a user turn of a chat, each whole and streamed; the Swift test compares the texts with
`ember run`'s.
"""
import json
import sys

import openai

port, key, prompt, max_tokens = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0, timeout=120)
messages = [{"role": "user", "content": prompt}]
out = {}

whole = client.completions.create(model="any", prompt=prompt, max_tokens=max_tokens, temperature=0)
out["completion"] = {"text": whole.choices[0].text, "finish_reason": whole.choices[0].finish_reason,
                     "usage": [whole.usage.prompt_tokens, whole.usage.completion_tokens]}
out["completion_stream"] = "".join(chunk.choices[0].text for chunk in client.completions.create(
    model="any", prompt=prompt, max_tokens=max_tokens, temperature=0, stream=True))

chat = client.chat.completions.create(model="any", messages=messages, max_tokens=max_tokens, temperature=0)
out["chat"] = {"text": chat.choices[0].message.content, "finish_reason": chat.choices[0].finish_reason,
               "usage": [chat.usage.prompt_tokens, chat.usage.completion_tokens]}
pieces, usage = [], None
for chunk in client.chat.completions.create(model="any", messages=messages, max_tokens=max_tokens, temperature=0,
                                            stream=True, stream_options={"include_usage": True}):
    if chunk.choices:
        pieces.append(chunk.choices[0].delta.content or "")
    if chunk.usage:
        usage = [chunk.usage.prompt_tokens, chunk.usage.completion_tokens]
out["chat_stream"] = {"text": "".join(pieces), "usage": usage}
print(json.dumps(out))
