// Ember's driver of PowerInfer's C API (its llama.h), compiled by scripts/powerinfer-peer
// against a PowerInfer build; it is not part of Ember itself.
//
//   ember-powerinfer-driver bench MODEL PROMPT_TOKENS GEN_TOKENS THREADS REPS WARMUP JSON COMMIT
//       scripts/llama-peer.py's measurement: per repetition a fresh context, the prompt as one
//       llama_decode batch (logits of the last position only), then GEN_TOKENS greedy steps,
//       each an argmax and a one-token batch; the prompt is llama-peer's lighthouse text cut to
//       PROMPT_TOKENS ids. JSON on stdout (JSON = 1) or a short text report.
//   ember-powerinfer-driver greedy MODEL IDS N_GEN THREADS OUT|-
//       IDS (comma-separated) as one batch with logits at every position, then N_GEN greedy
//       tokens (argmax, ties to the lower id), each but the last fed back one at a time. Every
//       logits row goes to OUT (raw little-endian f32, rows x n_vocab); JSON with the steps.
//   ember-powerinfer-driver tokenize MODEL TEXT
//       PowerInfer's ids and pieces for TEXT (BOS only for SentencePiece vocabularies, as its main).
//
// PowerInfer prints its log with printf in places, so stdout is pointed at stderr and the
// results go to a private copy of the original stdout.
#define _POSIX_C_SOURCE 200809L
#include "llama.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static const char *prompt_text =
    "The history of the lighthouse is a long one. Long before electric lamps, people who lived "
    "by the sea lit fires on hills and towers to warn ships away from rocks and to guide them "
    "into harbour. The most famous of the ancient lights stood on the island of Pharos, near "
    "Alexandria, and was counted among the wonders of the world. Over the centuries builders "
    "learned to raise towers on bare reefs swept by waves, to burn oil in lamps with many "
    "wicks, and later to focus the light with great lenses of glass arranged in rings. Keepers "
    "lived in the towers with their families, trimming the wicks, winding the clockwork that "
    "turned the lens, and writing the weather in a log every few hours. Today most lights are "
    "automatic, and the keepers are gone, but the towers still stand along the coasts, and "
    "sailors still count the flashes to know which light they are looking at and where they are.";

static FILE *out;  // the original stdout

static void fail(const char *message, const char *detail) {
    fprintf(stderr, "ember-powerinfer-driver: %s%s%s\n", message, detail ? ": " : "", detail ? detail : "");
    exit(1);
}

static void quiet_log(enum ggml_log_level level, const char *text, void *user) {
    (void)user;
    if (level == GGML_LOG_LEVEL_ERROR || getenv("EMBER_POWERINFER_VERBOSE")) fputs(text, stderr);
}

static double now_seconds(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static long parse_count(const char *text, const char *what, long minimum) {
    char *end = NULL;
    errno = 0;
    long value = strtol(text, &end, 10);
    if (errno != 0 || end == text || *end != '\0' || value < minimum) fail("bad count for", what);
    return value;
}

static struct llama_model *load_model(const char *path, bool vocab_only) {
    struct llama_model_params params = llama_model_default_params();
    params.n_gpu_layers = 0;
    params.vocab_only = vocab_only;
    struct llama_model *model = llama_load_model_from_file(path, params);
    if (!model) fail("PowerInfer cannot load the model", path);
    return model;
}

// A context for n_ctx positions whose batches may hold all of them. PowerInfer sizes its compute
// buffer once, on a worst-case graph of min(n_ctx, n_batch) tokens; with n_batch = the prompt's
// length, a later one-token graph of its sparse FFN outgrew that buffer (GGML_ASSERT "not enough
// space in the buffer" in ggml-alloc.c), so the worst case is the whole context.
static struct llama_context *new_context(struct llama_model *model, int n_ctx, int threads) {
    struct llama_context_params params = llama_context_default_params();
    params.seed = 0;
    params.n_ctx = (uint32_t)((n_ctx + 31) / 32 * 32);
    params.n_batch = params.n_ctx;
    params.n_threads = (uint32_t)threads;
    params.n_threads_batch = (uint32_t)threads;
    struct llama_context *ctx = llama_new_context_with_model(model, params);
    if (!ctx) fail("llama_new_context_with_model failed", NULL);
    return ctx;
}

static bool adds_bos(const struct llama_model *model) {
    return llama_vocab_type(model) == LLAMA_VOCAB_TYPE_SPM;  // the rule of PowerInfer's main
}

// Returns the count; *ids is malloc'ed.
static int tokenize(const struct llama_model *model, const char *text, bool add_bos, llama_token **ids) {
    int capacity = (int)strlen(text) + 16;
    *ids = malloc(sizeof(llama_token) * (size_t)capacity);
    int n = llama_tokenize(model, text, (int)strlen(text), *ids, capacity, add_bos, false);
    if (n < 0) fail("tokenize overflowed", NULL);
    return n;
}

static int argmax(const float *logits, int n_vocab) {
    int best = 0;
    for (int i = 1; i < n_vocab; i++)
        if (logits[i] > logits[best]) best = i;  // strict: ties go to the lower id
    return best;
}

static void print_ids(const llama_token *ids, int n) {
    fputc('[', out);
    for (int i = 0; i < n; i++) fprintf(out, "%s%d", i ? ", " : "", ids[i]);
    fputc(']', out);
}

static void print_json_string(const char *text, int length) {
    fputc('"', out);
    for (int i = 0; i < length; i++) {
        unsigned char c = (unsigned char)text[i];
        if (c == '"' || c == '\\') fprintf(out, "\\%c", c);
        else if (c < 0x20 || c >= 0x7f) fprintf(out, "\\u%04x", c);  // bytes, not code points
        else fputc(c, out);
    }
    fputc('"', out);
}

static void print_piece(const struct llama_model *model, llama_token id) {
    char piece[256];
    int n = llama_token_to_piece(model, id, piece, sizeof piece);
    print_json_string(piece, n < 0 ? 0 : n);
}

static const char *threshold_override(void) {
    const char *value = getenv("LLAMA_SPARSE_PRED_THRESHOLD");
    return value ? value : "";
}

static int compare_doubles(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *values, int n) {
    qsort(values, (size_t)n, sizeof *values, compare_doubles);
    return n % 2 ? values[n / 2] : 0.5 * (values[n / 2 - 1] + values[n / 2]);
}

// One repetition; returns the seconds of prefill and decode, fills generated.
static void run_once(struct llama_model *model, llama_token *ids, int n_prompt, int n_gen, int threads,
                     llama_token *generated, double *prefill, double *decode) {
    const int n_vocab = llama_n_vocab(model);
    struct llama_context *ctx = new_context(model, n_prompt + n_gen + 16, threads);
    double start = now_seconds();
    if (llama_decode(ctx, llama_batch_get_one(ids, n_prompt, 0, 0)) != 0) fail("prefill llama_decode failed", NULL);
    *prefill = now_seconds() - start;
    start = now_seconds();
    for (int i = 0; i < n_gen; i++) {
        // Without per-position flags, llama_decode keeps the last position's logits only, in row 0.
        llama_token token = argmax(llama_get_logits(ctx), n_vocab);
        generated[i] = token;
        if (llama_decode(ctx, llama_batch_get_one(&token, 1, n_prompt + i, 0)) != 0) fail("decode llama_decode failed", NULL);
    }
    *decode = now_seconds() - start;
    llama_free(ctx);
}

static int bench(char **argv) {
    const char *path = argv[0];
    int n_prompt = (int)parse_count(argv[1], "prompt tokens", 1);
    int n_gen = (int)parse_count(argv[2], "generated tokens", 1);
    int threads = (int)parse_count(argv[3], "threads", 1);
    int reps = (int)parse_count(argv[4], "reps", 1);
    int warmup = (int)parse_count(argv[5], "warmup", 0);
    bool json = strcmp(argv[6], "1") == 0;
    const char *commit = argv[7];

    double load_start = now_seconds();
    struct llama_model *model = load_model(path, false);
    double load_seconds = now_seconds() - load_start;
    bool add_bos = adds_bos(model);

    // The fixed text, repeated until it holds enough tokens, cut to exactly n_prompt.
    size_t base = strlen(prompt_text), length = base;
    char *text = strdup(prompt_text);
    llama_token *ids = NULL;
    int n = tokenize(model, text, add_bos, &ids);
    while (n < n_prompt) {
        free(ids);
        text = realloc(text, length + base + 2);
        strcat(text, " ");
        strcat(text, prompt_text);
        length += base + 1;
        n = tokenize(model, text, add_bos, &ids);
    }
    free(text);
    fprintf(stderr, "powerinfer-peer: prompt = first %d tokens of the fixed lighthouse text (BOS %s)\n",
            n_prompt, add_bos ? "added" : "not added");

    llama_token *generated = malloc(sizeof(llama_token) * (size_t)n_gen);
    double prefill, decode;
    for (int i = 0; i < warmup; i++)
        run_once(model, ids, n_prompt, n_gen < 8 ? n_gen : 8, threads, generated, &prefill, &decode);
    double *prefill_s = malloc(sizeof(double) * (size_t)reps), *decode_s = malloc(sizeof(double) * (size_t)reps);
    double *prefill_tps = malloc(sizeof(double) * (size_t)reps), *decode_tps = malloc(sizeof(double) * (size_t)reps);
    for (int r = 0; r < reps; r++) {
        run_once(model, ids, n_prompt, n_gen, threads, generated, &prefill_s[r], &decode_s[r]);
        prefill_tps[r] = n_prompt / prefill_s[r];
        decode_tps[r] = n_gen / decode_s[r];
    }

    if (json) {
        fprintf(out, "{\"engine\": \"PowerInfer\", \"powerinfer_commit\": \"%s\", \"model\": ", commit);
        print_json_string(path, (int)strlen(path));
        fprintf(out, ", \"sparse_inference\": %s, \"sparse_threshold_override\": ",
                llama_use_sparse_inference(model) ? "true" : "false");
        print_json_string(threshold_override(), (int)strlen(threshold_override()));
        fprintf(out, ", \"threads\": %d, \"prompt_tokens\": %d, \"gen_tokens\": %d, \"warmup_reps\": %d, "
                     "\"load_s\": %.6f, \"prompt_text\": \"fixed English text (lighthouse history), repeated as "
                     "needed, cut to N tokens\", \"bos_added\": %s, \"prompt_ids\": ",
                threads, n_prompt, n_gen, warmup, load_seconds, add_bos ? "true" : "false");
        print_ids(ids, n_prompt);
        fprintf(out, ", \"generated_ids\": ");
        print_ids(generated, n_gen);
        fprintf(out, ", \"reps\": [");
        for (int r = 0; r < reps; r++)
            fprintf(out, "%s{\"prefill_s\": %.6f, \"decode_s\": %.6f, \"prefill_tps\": %.4f, \"decode_tps\": %.4f}",
                    r ? ", " : "", prefill_s[r], decode_s[r], prefill_tps[r], decode_tps[r]);
        double prefill_median = median(prefill_tps, reps), decode_median = median(decode_tps, reps);
        fprintf(out, "], \"prefill_tps_median\": %.4f, \"decode_tps_median\": %.4f}\n", prefill_median, decode_median);
    } else {
        for (int r = 0; r < reps; r++)
            fprintf(out, "rep %d: prefill %.1f tok/s, decode %.1f tok/s\n", r + 1, prefill_tps[r], decode_tps[r]);
        double prefill_median = median(prefill_tps, reps), decode_median = median(decode_tps, reps);
        fprintf(out, "median: prefill %.1f tok/s, decode %.1f tok/s (%d prompt, %d generated, %s)\n",
                prefill_median, decode_median, n_prompt, n_gen,
                llama_use_sparse_inference(model) ? "sparse" : "dense");
    }
    llama_free_model(model);
    return 0;
}

static int greedy(char **argv) {
    const char *path = argv[0], *id_list = argv[1], *logits_path = argv[4];
    int n_gen = (int)parse_count(argv[2], "generated tokens", 1);
    int threads = (int)parse_count(argv[3], "threads", 1);

    int n_prompt = 1;
    for (const char *c = id_list; *c; c++) n_prompt += *c == ',';
    llama_token *ids = malloc(sizeof(llama_token) * (size_t)n_prompt);
    char *list = strdup(id_list), *save = NULL;
    int k = 0;
    for (char *item = strtok_r(list, ",", &save); item; item = strtok_r(NULL, ",", &save))
        ids[k++] = (llama_token)parse_count(item, "token id", 0);
    if (k != n_prompt) fail("bad id list", id_list);
    free(list);

    struct llama_model *model = load_model(path, false);
    const int n_vocab = llama_n_vocab(model);
    for (int i = 0; i < n_prompt; i++)
        if (ids[i] >= n_vocab) fail("token id beyond the vocabulary", NULL);
    const int n_rows = n_prompt + n_gen - 1;
    float *rows = malloc(sizeof(float) * (size_t)n_rows * (size_t)n_vocab);
    struct llama_context *ctx = new_context(model, n_prompt + n_gen + 16, threads);

    struct llama_batch batch = llama_batch_init(n_prompt, 0, 1);
    batch.n_tokens = n_prompt;
    for (int i = 0; i < n_prompt; i++) {
        batch.token[i] = ids[i];
        batch.pos[i] = i;
        batch.n_seq_id[i] = 1;
        batch.seq_id[i][0] = 0;
        batch.logits[i] = 1;
    }
    if (llama_decode(ctx, batch) != 0) fail("prompt llama_decode failed", NULL);
    for (int i = 0; i < n_prompt; i++)
        memcpy(rows + (size_t)i * n_vocab, llama_get_logits_ith(ctx, i), sizeof(float) * (size_t)n_vocab);
    llama_batch_free(batch);

    llama_token *generated = malloc(sizeof(llama_token) * (size_t)n_gen);
    fprintf(out, "{\"model\": ");
    print_json_string(path, (int)strlen(path));
    fprintf(out, ", \"sparse_inference\": %s, \"sparse_threshold_override\": ",
            llama_use_sparse_inference(model) ? "true" : "false");
    print_json_string(threshold_override(), (int)strlen(threshold_override()));
    fprintf(out, ", \"threads\": %d, \"n_vocab\": %d, \"prompt_ids\": ", threads, n_vocab);
    print_ids(ids, n_prompt);
    fprintf(out, ", \"steps\": [");
    double min_margin = INFINITY;
    for (int step = 0; step < n_gen; step++) {
        const float *row = rows + (size_t)(n_prompt - 1 + step) * n_vocab;
        // The five best ids by logit (ties to the lower id).
        int top[5];
        for (int t = 0; t < 5; t++) {
            int best = -1;
            for (int i = 0; i < n_vocab; i++) {
                bool taken = false;
                for (int s = 0; s < t; s++) taken |= top[s] == i;
                if (!taken && (best < 0 || row[i] > row[best])) best = i;
            }
            top[t] = best;
        }
        generated[step] = top[0];
        double margin = (double)row[top[0]] - (double)row[top[1]];
        if (margin < min_margin) min_margin = margin;
        fprintf(out, "%s{\"step\": %d, \"pos\": %d, \"id\": %d, \"piece\": ", step ? ", " : "", step,
                n_prompt + step, top[0]);
        print_piece(model, top[0]);
        fprintf(out, ", \"logit\": %.9g, \"top2_margin\": %.9g, \"top5\": [", row[top[0]], margin);
        for (int t = 0; t < 5; t++) fprintf(out, "%s[%d, %.9g]", t ? ", " : "", top[t], row[top[t]]);
        fprintf(out, "]}");
        if (step + 1 < n_gen) {
            llama_token token = top[0];
            if (llama_decode(ctx, llama_batch_get_one(&token, 1, n_prompt + step, 0)) != 0)
                fail("decode llama_decode failed", NULL);
            memcpy(rows + (size_t)(n_prompt + step) * n_vocab, llama_get_logits(ctx), sizeof(float) * (size_t)n_vocab);
        }
    }
    fprintf(out, "], \"greedy_ids\": ");
    print_ids(generated, n_gen);
    fprintf(out, ", \"min_top2_margin\": %.9g, \"logits_rows\": %d}\n", min_margin, n_rows);

    if (strcmp(logits_path, "-") != 0) {
        // Written beside the target, then renamed over it: never a partial file.
        size_t length = strlen(logits_path);
        char *temporary = malloc(length + 8);
        snprintf(temporary, length + 8, "%s.tmp", logits_path);
        FILE *file = fopen(temporary, "wb");
        if (!file) fail("cannot write", temporary);
        size_t count = (size_t)n_rows * (size_t)n_vocab;
        if (fwrite(rows, sizeof(float), count, file) != count || fclose(file) != 0) fail("cannot write", temporary);
        if (rename(temporary, logits_path) != 0) fail("cannot rename onto", logits_path);
        free(temporary);
    }
    llama_free(ctx);
    llama_free_model(model);
    return 0;
}

static int tokenize_text(char **argv) {
    struct llama_model *model = load_model(argv[0], true);
    llama_token *ids = NULL;
    int n = tokenize(model, argv[1], adds_bos(model), &ids);
    fprintf(out, "{\"ids\": ");
    print_ids(ids, n);
    fprintf(out, ", \"pieces\": [");
    for (int i = 0; i < n; i++) {
        if (i) fprintf(out, ", ");
        print_piece(model, ids[i]);
    }
    fprintf(out, "]}\n");
    llama_free_model(model);
    return 0;
}

int main(int argc, char **argv) {
    int saved = dup(STDOUT_FILENO);
    if (saved < 0 || dup2(STDERR_FILENO, STDOUT_FILENO) < 0) fail("cannot redirect stdout", NULL);
    out = fdopen(saved, "w");
    if (!out) fail("cannot reopen stdout", NULL);

    llama_log_set(quiet_log, NULL);
    llama_backend_init(false);
    int status;
    if (argc == 10 && strcmp(argv[1], "bench") == 0) status = bench(argv + 2);
    else if (argc == 7 && strcmp(argv[1], "greedy") == 0) status = greedy(argv + 2);
    else if (argc == 4 && strcmp(argv[1], "tokenize") == 0) status = tokenize_text(argv + 2);
    else fail("usage: bench|greedy|tokenize ... (see scripts/powerinfer-peer)", NULL);
    llama_backend_free();
    fflush(out);
    return status;
}
