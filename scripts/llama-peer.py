#!/usr/bin/env python3
"""llama.cpp reference timings for `scripts/bench`, via llama-cpp-python's low-level API.

Run with the private venv's Python (made by `scripts/setup --llama-venv`):

    ~/.cache/ember/llama-venv/bin/python scripts/llama-peer.py --model M.gguf \
        --prompt-tokens 64 --gen-tokens 128 --threads 2 --reps 3 --json

Per repetition, in a fresh context (so an empty KV cache):
  prefill: one llama_decode call holding all N prompt tokens (logits for the last only);
  decode:  G steps, each taking the argmax of the last logits and feeding it back as a
           one-token batch; timed in total, argmax included (as a greedy generator pays it).
The prompt is a fixed English text, tokenized with the model's own tokenizer (BOS added when
the model asks for it) and cut to exactly N ids; the ids are reported so runs can be compared.
Untimed warm-up repetitions run first so page faults of the freshly mapped weights and
one-off allocations are not charged to the first timed repetition.
"""

import argparse
import ctypes
import json
import statistics
import sys
import time

import llama_cpp
import numpy as np

# Long enough for several hundred tokens with any vocabulary; repeated if more are asked for.
PROMPT_TEXT = (
    "The history of the lighthouse is a long one. Long before electric lamps, people who lived "
    "by the sea lit fires on hills and towers to warn ships away from rocks and to guide them "
    "into harbour. The most famous of the ancient lights stood on the island of Pharos, near "
    "Alexandria, and was counted among the wonders of the world. Over the centuries builders "
    "learned to raise towers on bare reefs swept by waves, to burn oil in lamps with many "
    "wicks, and later to focus the light with great lenses of glass arranged in rings. Keepers "
    "lived in the towers with their families, trimming the wicks, winding the clockwork that "
    "turned the lens, and writing the weather in a log every few hours. Today most lights are "
    "automatic, and the keepers are gone, but the towers still stand along the coasts, and "
    "sailors still count the flashes to know which light they are looking at and where they are."
)


def log_quiet():
    """Silences llama.cpp's log output, which would otherwise go to stderr on every load."""
    callback = llama_cpp.llama_log_callback(lambda level, text, data: None)
    llama_cpp.llama_log_set(callback, ctypes.c_void_p(0))
    return callback  # kept alive by the caller: ctypes would free it otherwise


def tokenize(vocab, text, add_bos):
    data = text.encode("utf-8")
    capacity = len(data) + 16
    tokens = (llama_cpp.llama_token * capacity)()
    n = llama_cpp.llama_tokenize(vocab, data, len(data), tokens, capacity, add_bos, False)
    if n < 0:
        raise RuntimeError(f"tokenize needed {-n} slots")
    return list(tokens[:n])


def prompt_ids(vocab, count):
    add_bos = bool(llama_cpp.llama_vocab_get_add_bos(vocab))
    ids = tokenize(vocab, PROMPT_TEXT, add_bos)
    text = PROMPT_TEXT
    while len(ids) < count:
        text += " " + PROMPT_TEXT
        ids = tokenize(vocab, text, add_bos)
    return ids[:count], add_bos


def run_once(model, n_vocab, ids, gen_tokens, threads):
    params = llama_cpp.llama_context_default_params()
    params.n_ctx = len(ids) + gen_tokens + 16
    params.n_batch = max(len(ids), 1)  # the whole prompt goes in one llama_decode call
    params.n_ubatch = params.n_batch
    params.n_threads = threads
    params.n_threads_batch = threads
    params.no_perf = True
    ctx = llama_cpp.llama_init_from_model(model, params)
    if not ctx:
        raise RuntimeError("llama_init_from_model failed")
    try:
        prompt = (llama_cpp.llama_token * len(ids))(*ids)
        start = time.perf_counter()
        if llama_cpp.llama_decode(ctx, llama_cpp.llama_batch_get_one(prompt, len(ids))) != 0:
            raise RuntimeError("prefill llama_decode failed")
        prefill = time.perf_counter() - start

        generated = []
        one = (llama_cpp.llama_token * 1)()
        start = time.perf_counter()
        for _ in range(gen_tokens):
            logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, -1), shape=(n_vocab,))
            token = int(np.argmax(logits))
            generated.append(token)
            one[0] = token
            if llama_cpp.llama_decode(ctx, llama_cpp.llama_batch_get_one(one, 1)) != 0:
                raise RuntimeError("decode llama_decode failed")
        decode = time.perf_counter() - start
    finally:
        llama_cpp.llama_free(ctx)
    return prefill, decode, generated


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--gen-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1, help="untimed repetitions first")
    parser.add_argument("--json", action="store_true", help="JSON on stdout (else a short text report)")
    args = parser.parse_args()
    if args.prompt_tokens < 1 or args.gen_tokens < 1 or args.reps < 1:
        parser.error("--prompt-tokens, --gen-tokens and --reps must be positive")

    keep = log_quiet()
    llama_cpp.llama_backend_init()
    mparams = llama_cpp.llama_model_default_params()
    mparams.n_gpu_layers = 0
    load_start = time.perf_counter()
    model = llama_cpp.llama_model_load_from_file(args.model.encode(), mparams)
    if not model:
        sys.exit(f"llama-peer: cannot load {args.model}")
    load_seconds = time.perf_counter() - load_start
    vocab = llama_cpp.llama_model_get_vocab(model)
    n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)
    ids, add_bos = prompt_ids(vocab, args.prompt_tokens)
    # Which prompt, on stderr so that --json output stays a single object.
    print(f"llama-peer: prompt = first {len(ids)} tokens of the fixed lighthouse text "
          f"(BOS {'added' if add_bos else 'not added'}): {ids}", file=sys.stderr)

    for _ in range(args.warmup):
        run_once(model, n_vocab, ids, min(args.gen_tokens, 8), args.threads)
    reps = []
    for _ in range(args.reps):
        prefill, decode, generated = run_once(model, n_vocab, ids, args.gen_tokens, args.threads)
        reps.append({
            "prefill_s": prefill,
            "decode_s": decode,
            "prefill_tps": len(ids) / prefill,
            "decode_tps": args.gen_tokens / decode,
        })
    llama_cpp.llama_model_free(model)
    del keep

    result = {
        "engine": "llama.cpp",
        "llama_cpp_python": llama_cpp.__version__,
        "model": args.model,
        "threads": args.threads,
        "prompt_tokens": len(ids),
        "gen_tokens": args.gen_tokens,
        "warmup_reps": args.warmup,
        "load_s": load_seconds,
        "prompt_text": "fixed English text (lighthouse history), repeated as needed, cut to N tokens",
        "bos_added": add_bos,
        "prompt_ids": ids,
        "generated_ids": generated,  # from the last repetition; greedy, so all agree
        "reps": reps,
        "prefill_tps_median": statistics.median(r["prefill_tps"] for r in reps),
        "decode_tps_median": statistics.median(r["decode_tps"] for r in reps),
    }
    if args.json:
        json.dump(result, sys.stdout)
        print()
    else:
        for i, r in enumerate(reps):
            print(f"rep {i + 1}: prefill {r['prefill_tps']:.1f} tok/s, decode {r['decode_tps']:.1f} tok/s")
        print(f"median: prefill {result['prefill_tps_median']:.1f} tok/s, "
              f"decode {result['decode_tps_median']:.1f} tok/s ({len(ids)} prompt, {args.gen_tokens} generated)")


if __name__ == "__main__":
    main()
