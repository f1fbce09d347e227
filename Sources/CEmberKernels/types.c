// Type table: block sizes and byte counts per GGUF type, and which activation format each
// weight type is dotted with.
#include "internal.h"

int ember_block_size(int type) {
    switch (type) {
    case EMBER_TYPE_F32: case EMBER_TYPE_F16: case EMBER_TYPE_BF16: return 1;
    case EMBER_TYPE_Q4_0: case EMBER_TYPE_Q4_1: case EMBER_TYPE_Q5_0: case EMBER_TYPE_Q5_1:
    case EMBER_TYPE_Q8_0: case EMBER_TYPE_Q8_1: return 32;
    case EMBER_TYPE_Q4_K: case EMBER_TYPE_Q5_K: case EMBER_TYPE_Q6_K: case EMBER_TYPE_Q8_K:
        return QK_K;
    default: return 0;
    }
}

int ember_block_bytes(int type) {
    switch (type) {
    case EMBER_TYPE_F32: return 4;
    case EMBER_TYPE_F16: case EMBER_TYPE_BF16: return 2;
    case EMBER_TYPE_Q4_0: return sizeof(block_q4_0);
    case EMBER_TYPE_Q4_1: return sizeof(block_q4_1);
    case EMBER_TYPE_Q5_0: return sizeof(block_q5_0);
    case EMBER_TYPE_Q5_1: return sizeof(block_q5_1);
    case EMBER_TYPE_Q8_0: return sizeof(block_q8_0);
    case EMBER_TYPE_Q8_1: return sizeof(block_q8_1);
    case EMBER_TYPE_Q4_K: return sizeof(block_q4_K);
    case EMBER_TYPE_Q5_K: return sizeof(block_q5_K);
    case EMBER_TYPE_Q6_K: return sizeof(block_q6_K);
    case EMBER_TYPE_Q8_K: return sizeof(block_q8_K);
    default: return 0;
    }
}

size_t ember_row_bytes(int type, int64_t n) {
    int bs = ember_block_size(type);
    return bs ? (size_t)(n / bs) * (size_t)ember_block_bytes(type) : 0;
}

// As llama.cpp (vec_dot_type): symmetric formats pair with Q8_0, formats with a min pair with
// Q8_1 (whose s term absorbs the min), super-block formats with Q8_K, floats with F32.
int ember_activation_type(int weight_type) {
    switch (weight_type) {
    case EMBER_TYPE_Q4_0: case EMBER_TYPE_Q5_0: case EMBER_TYPE_Q8_0: return EMBER_TYPE_Q8_0;
    case EMBER_TYPE_Q4_1: case EMBER_TYPE_Q5_1: return EMBER_TYPE_Q8_1;
    case EMBER_TYPE_Q4_K: case EMBER_TYPE_Q5_K: case EMBER_TYPE_Q6_K: return EMBER_TYPE_Q8_K;
    default: return EMBER_TYPE_F32;
    }
}

size_t ember_activation_bytes(int act_type, int64_t n) {
    if (act_type == EMBER_TYPE_F32) return (size_t)n * 4;
    return ember_row_bytes(act_type, n);
}
