"""Drives an Ember server with the `openai` package and prints what the client parsed, as JSON.

Usage: openai_client.py PORT API_KEY. The Swift test (OpenAIClientTests) checks the values; this
script only fails when the client itself cannot parse a response or raises the wrong error.
"""
import json
import sys

import openai

port, key = sys.argv[1], sys.argv[2]
client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0, timeout=20)
messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
out = {"openai_version": openai.__version__}

out["models"] = [model.id for model in client.models.list().data]

whole = client.chat.completions.create(model="any", messages=messages, max_tokens=4)
out["chat"] = {
    "object": whole.object,
    "content": whole.choices[0].message.content,
    "role": whole.choices[0].message.role,
    "finish_reason": whole.choices[0].finish_reason,
    "usage": [whole.usage.prompt_tokens, whole.usage.completion_tokens, whole.usage.total_tokens],
}

pieces, finish, usage, ids = [], None, None, set()
for chunk in client.chat.completions.create(model="any", messages=messages, max_tokens=50, stream=True,
                                            stream_options={"include_usage": True}):
    ids.add(chunk.id)
    if chunk.choices:
        pieces.append(chunk.choices[0].delta.content or "")
        finish = chunk.choices[0].finish_reason or finish
    if chunk.usage:
        usage = [chunk.usage.prompt_tokens, chunk.usage.completion_tokens, chunk.usage.total_tokens]
out["chat_stream"] = {"content": "".join(pieces), "finish_reason": finish, "usage": usage, "ids": len(ids)}

text = client.completions.create(model="any", prompt="Once", max_tokens=3)
out["completion"] = {"text": text.choices[0].text, "finish_reason": text.choices[0].finish_reason,
                     "usage": [text.usage.prompt_tokens, text.usage.completion_tokens]}
out["completion_stream"] = "".join(chunk.choices[0].text for chunk in
                                   client.completions.create(model="any", prompt="Once", max_tokens=3, stream=True))

try:
    client.chat.completions.create(model="any", messages=messages, max_tokens=-1)
    out["bad_request"] = "no error"
except openai.BadRequestError as error:
    out["bad_request"] = {"status": error.status_code, "code": error.code, "param": error.param}

try:
    openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="wrong", max_retries=0).models.list()
    out["wrong_key"] = "no error"
except openai.AuthenticationError as error:
    out["wrong_key"] = {"status": error.status_code, "code": error.code}

print(json.dumps(out))
