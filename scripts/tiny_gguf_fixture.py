"""Shared parts of the tiny-model fixture scripts (scripts/make-qwen3-fixture, scripts/make-falcon-fixture).

Each of those scripts writes a tiny random GGUF with the `gguf` package, runs llama.cpp on it through
llama-cpp-python, checks llama.cpp's logits against an independent float64 NumPy forward pass of the
same file (so the fixture's README states math that was verified, not only read), and writes:

  <out>/model.gguf        the tiny model
  <out>/reference.json    tokenization, greedy ids with margins, top20 at the last prompt position,
                          every hyperparameter, the tensor table, llama.cpp's own load report
  <out>/logits-promptN.f32  all logits at the last prompt position of prompt N, little-endian float32

This module holds what the scripts share: the cut byte-level BPE vocabulary, the atomic GGUF writer,
the llama.cpp runner and the fixture writer. Run the scripts with the venv made by
`scripts/setup --llama-venv` (it has llama-cpp-python, numpy and gguf).
"""

import ctypes
import hashlib
import json
import os
import re
import sys
import tempfile

try:
    import gguf
    import llama_cpp
    import numpy as np
except ImportError as error:  # a clear message instead of a traceback
    sys.exit(f"{os.path.basename(sys.argv[0])}: {error}; run with the venv made by `scripts/setup --llama-venv`, "
             "e.g. ~/.cache/ember/llama-venv/bin/python " + sys.argv[0])

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(REPO, "Tests", "EmberCoreTests", "Fixtures")
MODEL_DIR = os.path.expanduser(os.environ.get("EMBER_MODEL_DIR", "~/.cache/ember/models"))
SMOLLM2 = os.path.join(MODEL_DIR, "SmolLM2-135M-Instruct.Q4_1.gguf")

THREADS = 2
STEPS = 24
TOP_K = 20

# Shared by every tiny fixture: ChatML with special tokens, prose, code, and digits/punctuation
# (where the pre-tokenizers differ most).
PROMPTS = [
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
    "Once upon a time, in a small village at the edge of a great forest",
    "def fibonacci(n):\n    return n if n < 2 else fibonacci(n - 1)",
    "In 2025, about 1234567 people paid $3.50 (or less!) for it...",
]

# Extra texts whose tokenization is recorded (pre-tokenizer and special-token checks).
TOKENIZATION_TEXTS = PROMPTS + [
    "Hello world",
    " Hello world",
    "  two leading spaces, then   three, then\ttab",
    "line one\nline two\n\nafter blank line\n",
    "don't can't I'm we'll they've She'S",
    "x = [a**2 for a in range(10)]  # comment",
    "<|im_start|>system\nBe brief.<|im_end|>",
    "naïve café — «quotes» and 🚀",
    "",
]


# ---------------------------------------------------------------------------------------------
# Vocabulary

def cut_vocabulary(source=SMOLLM2, size=1024):
    """SmolLM2's GPT-2 byte-level BPE cut to its first `size` tokens, with exactly the merges whose
    two parts and result all lie in that range. SmolLM2's merges are in rank order and each one's
    result is a later token, so the cut vocabulary is a complete BPE: every token past the specials
    and the 256 byte tokens is produced by one kept merge (checked here)."""
    if not os.path.isfile(source):
        sys.exit(f"{os.path.basename(sys.argv[0])}: {source} is missing; run scripts/setup first")
    reader = gguf.GGUFReader(source)
    field = lambda name: reader.fields[name].contents()
    tokens = list(field("tokenizer.ggml.tokens")[:size])
    types = [int(t) for t in field("tokenizer.ggml.token_type")[:size]]
    index = {t: i for i, t in enumerate(tokens)}
    merges = []
    for merge in field("tokenizer.ggml.merges"):
        left, right = merge.split(" ")
        if left in index and right in index and (left + right) in index:
            merges.append(merge)
    produced = {index["".join(m.split(" "))] for m in merges}
    specials = [i for i, t in enumerate(types) if t == gguf.TokenType.CONTROL]
    singles = [i for i, t in enumerate(tokens) if len(t) == 1]
    unreachable = [i for i in range(size) if i not in produced and i not in specials and i not in singles]
    if unreachable:
        raise RuntimeError(f"cut vocabulary is not complete: tokens {unreachable[:10]} have no merge")
    return {"tokens": tokens, "types": types, "merges": merges, "source": os.path.basename(source),
            "special_ids": specials}


def add_tokenizer(writer, vocab, pre, bos, eos, pad=None):
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(vocab["tokens"])
    writer.add_token_types(vocab["types"])
    writer.add_token_merges(vocab["merges"])
    writer.add_bos_token_id(bos)
    writer.add_eos_token_id(eos)
    if pad is not None:
        writer.add_pad_token_id(pad)
    writer.add_add_bos_token(False)


# ---------------------------------------------------------------------------------------------
# GGUF writing

def write_gguf(path, arch, add_metadata, tensors):
    """Writes the GGUF to a temporary file beside `path` and renames it into place, so an
    interrupted run never leaves a half-written model. `tensors` is a list of (name, array):
    NumPy shape (rows, cols) becomes ggml ne = [cols, rows]."""
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=".tmp-", suffix=".gguf", dir=directory)
    os.close(handle)
    try:
        writer = gguf.GGUFWriter(temporary, arch)
        add_metadata(writer)
        for name, array in tensors:
            writer.add_tensor(name, array)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def describe_gguf(path):
    """The metadata (arrays by type and length) and the tensor table as the file holds them."""
    reader = gguf.GGUFReader(path)
    metadata = {}
    for name, field in reader.fields.items():
        if name.startswith("GGUF."):
            continue
        if field.types[0] == gguf.GGUFValueType.ARRAY:
            metadata[name] = f"array of {len(field.data)} {field.types[-1].name}"
        else:
            value = field.contents()
            metadata[name] = value
    tensors = [{"name": t.name, "type": t.tensor_type.name, "ne": [int(n) for n in t.shape]}
               for t in reader.tensors]
    return metadata, tensors


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def f16(array):
    return np.asarray(array, dtype=np.float32).astype(np.float16)


def f32(array):
    return np.asarray(array, dtype=np.float32)


# ---------------------------------------------------------------------------------------------
# llama.cpp

_LOG_CALLBACKS = []
# The lines of llama.cpp's context log worth keeping: attention kernel, KV cache types and size.
CONTEXT_REPORT_KEYS = ("flash_attn", "Flash Attention enabled", "Flash Attention not", "K (", "attn_rot",
                       "causal_attn", "freq_base")


class LlamaRun:
    """Loads the model with llama.cpp on the CPU, keeping its log (the load report) in memory."""

    def __init__(self, path):
        self.log = []
        callback = llama_cpp.llama_log_callback(
            lambda level, text, data: self.log.append(text.decode("utf-8", errors="replace")))
        # llama.cpp keeps the pointer for the life of the process, so the ctypes object must live as long.
        _LOG_CALLBACKS.append(callback)
        llama_cpp.llama_log_set(callback, ctypes.c_void_p(0))
        llama_cpp.llama_backend_init()
        params = llama_cpp.llama_model_default_params()
        params.n_gpu_layers = 0
        self.model = llama_cpp.llama_model_load_from_file(path.encode(), params)
        if not self.model:
            sys.stderr.write("".join(self.log))
            raise RuntimeError(f"llama.cpp cannot load {path}")
        self.vocab = llama_cpp.llama_model_get_vocab(self.model)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self.vocab)

    def close(self):
        llama_cpp.llama_model_free(self.model)

    def log_lines(self, prefixes):
        lines = "".join(self.log).splitlines()
        return [l.rstrip() for l in lines if l.startswith(prefixes)]

    def tokenize(self, text, special):
        data = text.encode("utf-8")
        capacity = len(data) + 16
        tokens = (llama_cpp.llama_token * capacity)()
        n = llama_cpp.llama_tokenize(self.vocab, data, len(data), tokens, capacity, False, special)
        if n < 0:
            raise RuntimeError(f"tokenize needed {-n} slots")
        return list(tokens[:n])

    def piece(self, token):
        buf = ctypes.create_string_buffer(256)
        n = llama_cpp.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, True)
        return buf.raw[:max(n, 0)]

    def eog_ids(self):
        return [i for i in range(self.n_vocab) if llama_cpp.llama_vocab_is_eog(self.vocab, i)]

    def context_params(self, n_prompt):
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = n_prompt + STEPS + 16
        params.n_batch = max(n_prompt, 1)
        params.n_ubatch = params.n_batch
        params.n_threads = THREADS
        params.n_threads_batch = THREADS
        return params

    def greedy(self, ids):
        """The prompt in one batch (logits of its last position), then STEPS greedy steps, each
        the argmax of the last logits (ties to the lowest id) fed back as a one-token batch.
        No samplers, no penalties, no stop at end-of-generation tokens."""
        ctx = llama_cpp.llama_init_from_model(self.model, self.context_params(len(ids)))
        if not ctx:
            raise RuntimeError("llama_init_from_model failed")
        try:
            def last_logits():
                pointer = llama_cpp.llama_get_logits_ith(ctx, -1)
                return np.ctypeslib.as_array(pointer, shape=(self.n_vocab,)).copy()

            prompt = (llama_cpp.llama_token * len(ids))(*ids)
            if llama_cpp.llama_decode(ctx, llama_cpp.llama_batch_get_one(prompt, len(ids))) != 0:
                raise RuntimeError("prompt decode failed")
            logits = last_logits()
            first = logits.copy()
            generated, margins, chosen_logits = [], [], []
            one = (llama_cpp.llama_token * 1)()
            for step in range(STEPS):
                best, second = np.argsort(-logits, kind="stable")[:2]
                generated.append(int(best))
                margins.append(float(logits[best] - logits[second]))
                chosen_logits.append(float(logits[best]))
                if step == STEPS - 1:
                    break
                one[0] = int(best)
                if llama_cpp.llama_decode(ctx, llama_cpp.llama_batch_get_one(one, 1)) != 0:
                    raise RuntimeError("step decode failed")
                logits = last_logits()
        finally:
            llama_cpp.llama_free(ctx)
        return first, generated, margins, chosen_logits


def run_llama(path):
    """Everything llama.cpp says about the model at `path`: tokenization, greedy runs, load report."""
    run = LlamaRun(path)
    try:
        tokenization = [{"text": t, "ids": run.tokenize(t, False), "ids_parse_special": run.tokenize(t, True)}
                        for t in TOKENIZATION_TEXTS]
        greedy, logits_rows = [], []
        for n, text in enumerate(PROMPTS):
            ids = run.tokenize(text, True)
            first, generated, margins, chosen = run.greedy(ids)
            order = np.argsort(-first, kind="stable")
            greedy.append({
                "prompt": text,
                "prompt_ids": ids,
                "greedy_ids": generated,
                "margins": margins,
                "greedy_logits": chosen,
                "greedy_text": b"".join(run.piece(t) for t in generated).decode("utf-8", errors="replace"),
                "top20_first": [[int(i), float(first[i])] for i in order[:TOP_K]],
                "logits_file": f"logits-prompt{n}.f32",
            })
            logits_rows.append(first.astype("<f4"))
            print(f"prompt {n}: {len(ids)} ids, min margin {min(margins):.4f}, "
                  f"ids {generated}", file=sys.stderr)
        defaults = llama_cpp.llama_context_default_params()
        report = {
            "print_info": run.log_lines(("print_info:",)),
            "context": [line for line in dict.fromkeys(run.log_lines(("llama_context:", "llama_kv_cache:", "resolve_fused_ops:")))
                        if any(key in line for key in CONTEXT_REPORT_KEYS)],
        }
        engine = {
            "llama_cpp_python_version": llama_cpp.__version__,
            "device": "CPU",
            "n_threads": THREADS,
            "kv_cache_type_k": ggml_type_name(defaults.type_k),
            "kv_cache_type_v": ggml_type_name(defaults.type_v),
            "flash_attn_requested": "auto (llama_context_default_params)",
            "flash_attn_resolved": resolved_flash_attention(run.log),
            "n_ctx": "n_prompt + steps + 16",
            "n_batch": "n_prompt (the whole prompt in one llama_decode)",
            "add_bos": bool(llama_cpp.llama_vocab_get_add_bos(run.vocab)),
            "n_vocab": run.n_vocab,
            "eog_ids": run.eog_ids(),
        }
        return {"tokenization": tokenization, "greedy": greedy, "engine": engine,
                "load_report": report}, logits_rows
    finally:
        run.close()


def ggml_type_name(value):
    names = {0: "f32", 1: "f16", 8: "q8_0", 2: "q4_0", 30: "bf16"}
    return names.get(int(value), f"ggml type {int(value)}")


def resolved_flash_attention(log):
    text = "".join(log)
    if "resolve_fused_ops: Flash Attention enabled" in text:
        return "enabled"
    if "Flash Attention not supported" in text:
        return "disabled"
    return "unknown (see load_report.context)"


# ---------------------------------------------------------------------------------------------
# Fixture output

def staging_path(out_dir):
    """Where a script writes the model before it is checked; `write_fixture` moves it into place,
    so a failed run leaves the committed fixture as it was."""
    return os.path.join(out_dir, ".staging-model.gguf")


def write_fixture(out_dir, fixture, logits_rows, staged_model):
    """The logits files and reference.json, each written to a temporary name and renamed, then
    the staged model renamed to model.gguf."""
    os.makedirs(out_dir, exist_ok=True)
    for n, row in enumerate(logits_rows):
        write_atomic(os.path.join(out_dir, f"logits-prompt{n}.f32"), row.tobytes())
    text = json.dumps(fixture, indent=1, ensure_ascii=False)
    # Lists of plain numbers on one line each, so the file reads (and diffs) by case.
    text = re.sub(r"\[([^\[\]{}\"]*)\]",
                  lambda m: "[" + ", ".join(x.strip() for x in m.group(1).split(",") if x.strip()) + "]", text)
    write_atomic(os.path.join(out_dir, "reference.json"), (text + "\n").encode("utf-8"))
    os.replace(staged_model, os.path.join(out_dir, fixture["model_file"]))


def run_main(main):
    """Runs a script's main: errors become one line on stderr and exit status 1, and a staged
    model left by a failed run is removed by the caller's `finally`."""
    try:
        main()
    except (OSError, RuntimeError, ValueError) as error:
        sys.exit(f"{os.path.basename(sys.argv[0])}: error: {error}")


def write_atomic(path, data):
    temporary = path + ".tmp"
    with open(temporary, "wb") as f:
        f.write(data)
    os.replace(temporary, path)


def compare_with_numpy(fixture, logits_rows, forward):
    """Runs `forward(ids) -> logits rows (float64)` on each prompt plus its greedy ids (teacher
    forcing) and measures how far llama.cpp is from that exact-arithmetic reference: at the last
    prompt position over all logits, and at each greedy step for the chosen logit; also checks that
    every greedy id is the float64 argmax wherever llama.cpp's margin is clear of the measured gap.
    Raises if llama.cpp and the reference disagree beyond a loose bound (a semantic error in
    the reference or the file, not rounding)."""
    worst_row, worst_step, flips = 0.0, 0.0, []
    for case, row in zip(fixture["greedy"], logits_rows):
        ids = case["prompt_ids"] + case["greedy_ids"][:-1]
        exact = forward(ids)
        n = len(case["prompt_ids"])
        worst_row = max(worst_row, float(np.max(np.abs(exact[n - 1] - row.astype(np.float64)))))
        for step, (token, logit, margin) in enumerate(zip(case["greedy_ids"], case["greedy_logits"], case["margins"])):
            reference = exact[n - 1 + step]
            worst_step = max(worst_step, abs(float(reference[token]) - logit))
            if int(np.argmax(reference)) != token:
                flips.append({"prompt": case["prompt"][:20], "step": step, "margin": margin})
    if worst_row > 0.25 or worst_step > 0.25:
        raise RuntimeError(f"llama.cpp and the NumPy reference disagree: max |dlogit| {worst_row:.4f} "
                           f"(last prompt row), {worst_step:.4f} (greedy steps)")
    return {
        "what": "float64 NumPy forward pass of the same file (weights as stored, exact arithmetic, "
                "no f16 rounding of activations or KV), teacher-forced on prompt + greedy ids",
        "max_abs_diff_last_prompt_logits": round(worst_row, 6),
        "max_abs_diff_greedy_chosen_logit": round(worst_step, 6),
        "greedy_argmax_disagreements": flips,
    }


# ---------------------------------------------------------------------------------------------
# NumPy building blocks for the float64 reference forward passes

def read_tensors(path):
    """name -> float64 array with NumPy shape = reversed ggml ne (rows, cols), as the file holds it."""
    reader = gguf.GGUFReader(path)
    return {t.name: np.array(t.data, dtype=np.float64).reshape([int(n) for n in reversed(t.shape)])
            for t in reader.tensors}


def rms_norm(x, weight, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * weight


def layer_norm(x, weight, bias, eps):
    mean = np.mean(x, axis=-1, keepdims=True)
    centered = x - mean
    return centered / np.sqrt(np.mean(centered * centered, axis=-1, keepdims=True) + eps) * weight + bias


def rope_neox(x, base):
    """x: [tokens, heads, head_dim]; rotates the pairs (i, i + head_dim/2) by pos * base^(-2i/head_dim)."""
    tokens, _, dim = x.shape
    half = dim // 2
    theta = np.arange(tokens)[:, None] * base ** (-2.0 * np.arange(half) / dim)[None, :]
    cos, sin = np.cos(theta)[:, None, :], np.sin(theta)[:, None, :]
    first, second = x[..., :half], x[..., half:]
    return np.concatenate([first * cos - second * sin, first * sin + second * cos], axis=-1)


def causal_attention(q, k, v):
    """q: [T, H, dh], k/v: [T, Hkv, dh]; query head h reads kv head h // (H / Hkv)."""
    tokens, heads, dim = q.shape
    group = heads // k.shape[1]
    out = np.empty((tokens, heads, v.shape[2]))
    mask = np.triu(np.full((tokens, tokens), -np.inf), 1)
    for h in range(heads):
        scores = q[:, h, :] @ k[:, h // group, :].T / np.sqrt(dim) + mask
        scores = np.exp(scores - scores.max(axis=1, keepdims=True))
        out[:, h, :] = (scores / scores.sum(axis=1, keepdims=True)) @ v[:, h // group, :]
    return out.reshape(tokens, -1)


def gelu_tanh(x):
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * x * (1.0 + 0.044715 * x * x)))


def silu(x):
    return x / (1.0 + np.exp(-x))
