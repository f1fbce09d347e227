/// OpenCL C for the float steps of a transformer block, mirroring the CPU's (VectorKernels,
/// Rope, ember_attention_head): RMS norm, the gated activation, RoPE with precomputed angles,
/// and single-query attention over a KV cache. Same operations in the same order as the CPU;
/// only summation order, fused multiply-adds and the exp/tanh implementations differ.
enum OpenCLVectorKernelSource {
    static let groupSize = 64

    static let source = """
    #define GROUP \(groupSize)

    float group_sum(float v, local float *scratch) {
        int lid = get_local_id(0);
        barrier(CLK_LOCAL_MEM_FENCE);  // scratch may still be read by a previous reduction
        scratch[lid] = v;
        barrier(CLK_LOCAL_MEM_FENCE);
        for (int step = GROUP / 2; step > 0; step >>= 1) {
            if (lid < step) scratch[lid] += scratch[lid + step];
            barrier(CLK_LOCAL_MEM_FENCE);
        }
        return scratch[0];
    }

    float group_max(float v, local float *scratch) {
        int lid = get_local_id(0);
        barrier(CLK_LOCAL_MEM_FENCE);
        scratch[lid] = v;
        barrier(CLK_LOCAL_MEM_FENCE);
        for (int step = GROUP / 2; step > 0; step >>= 1) {
            if (lid < step) scratch[lid] = fmax(scratch[lid], scratch[lid + step]);
            barrier(CLK_LOCAL_MEM_FENCE);
        }
        return scratch[0];
    }

    // out = x / rms(x) * w for each of the rows (one work-group per row of n floats);
    // has_weight 0: no scaling (w is not read).
    kernel void rms_norm(global const float *x, global const float *w, int has_weight, float eps,
                         global float *out, int n) {
        local float scratch[GROUP];
        size_t base = get_group_id(0) * (size_t)n;
        float ss = 0.0f;
        for (int i = get_local_id(0); i < n; i += GROUP) ss += x[base + i] * x[base + i];
        float inverse = 1.0f / sqrt(group_sum(ss, scratch) / (float)n + eps);
        for (int i = get_local_id(0); i < n; i += GROUP)
            out[base + i] = has_weight ? x[base + i] * inverse * w[i] : x[base + i] * inverse;
    }

    // out[i] = act(gate[i]) * up[i] (has_up 0: act(gate[i])). act: 0 SiLU, 1 GELU (tanh), 2 ReLU,
    // 3 dReLU (ReLU on up too).
    kernel void gated_activation(int act, global const float *gate, global const float *up, int has_up,
                                 global float *out, int n) {
        int i = get_global_id(0);
        if (i >= n) return;
        float g = gate[i], a;
        if (act == 0) {
            a = g / (1.0f + exp(-g));
        } else if (act == 1) {
            const float c = 0.7978845608028654f;  // sqrt(2/pi)
            a = 0.5f * g * (1.0f + tanh(c * (g + 0.044715f * g * g * g)));
        } else {
            a = g > 0.0f ? g : 0.0f;
        }
        float u = has_up ? up[i] : 1.0f;
        out[i] = a * (act == 3 && !(u > 0.0f) ? 0.0f : u);
    }

    // values[k] += bias[rows[k]] for k < n: the biases of gathered rows (m of them; a row id
    // outside them gives NaN instead of a read past the buffer).
    kernel void add_gathered(global float *values, global const float *bias, int m, global const int *rows, int n) {
        int k = get_global_id(0);
        if (k >= n) return;
        int r = rows[k];
        values[k] += r >= 0 && r < m ? bias[r] : NAN;
    }

    // Rotates the leading `dims` of each of `heads` vectors (head_dim apart) in place, pair i
    // by the angle whose cos/sin are given; halves 0: pairs (2i, 2i+1), 1: pairs (i, i + dims/2).
    kernel void rope(global float *x, global const float *cosines, global const float *sines,
                     int heads, int head_dim, int dims, int halves) {
        int item = get_global_id(0), half_dims = dims / 2;
        if (item >= heads * half_dims) return;
        int h = item / half_dims, i = item % half_dims;
        global float *v = x + (size_t)h * head_dim;
        int ia = halves ? i : 2 * i, ib = halves ? i + half_dims : 2 * i + 1;
        float a = v[ia], b = v[ib], c = cosines[i], s = sines[i];
        v[ia] = a * c - b * s;
        v[ib] = a * s + b * c;
    }

    // Single-query attention, one work-group per query head h: over `count` cached positions
    // from `first` on (a sliding window starts past 0),
    // scores = q_h . k_p * scale, softmax, out_h = sum_p score_p v_p. Query head h reads
    // key/value head h / group (grouped-query attention). Keys of position p start at
    // keys + p * key_stride, values at values + p * value_stride (floats); `scores` holds
    // count floats per head.
    kernel void attention(global const float *q, global const float *keys, int key_stride,
                          global const float *values, int value_stride, int first, int count, int head_dim,
                          int value_dim, int group, float scale, global float *scores, global float *out) {
        local float scratch[GROUP];
        int h = get_group_id(0), lid = get_local_id(0), g = h / group;
        keys += (size_t)first * key_stride;
        values += (size_t)first * value_stride;
        const global float *qh = q + (size_t)h * head_dim;
        global float *s = scores + (size_t)h * count;
        float largest = -INFINITY;
        for (int p = lid; p < count; p += GROUP) {
            const global float *k = keys + (size_t)p * key_stride + (size_t)g * head_dim;
            float dot = 0.0f;
            for (int i = 0; i < head_dim; i++) dot += qh[i] * k[i];
            s[p] = dot * scale;
            largest = fmax(largest, s[p]);
        }
        largest = group_max(largest, scratch);
        float sum = 0.0f;
        for (int p = lid; p < count; p += GROUP) {
            s[p] = exp(s[p] - largest);
            sum += s[p];
        }
        sum = group_sum(sum, scratch);
        barrier(CLK_GLOBAL_MEM_FENCE);  // every item reads every score below
        for (int p = lid; p < count; p += GROUP) s[p] /= sum;
        barrier(CLK_GLOBAL_MEM_FENCE);
        for (int i = lid; i < value_dim; i += GROUP) {
            float acc = 0.0f;
            for (int p = 0; p < count; p++) acc += s[p] * values[(size_t)p * value_stride + (size_t)g * value_dim + i];
            out[(size_t)h * value_dim + i] = acc;
        }
    }
    """
}
