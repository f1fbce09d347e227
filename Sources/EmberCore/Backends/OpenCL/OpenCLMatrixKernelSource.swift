/// OpenCL C for the matrix-vector family: activation quantizers, dense and row-gather matvec,
/// and the column gather on neuron-major rows. They mirror the CPU kernels (CEmberKernels:
/// quantize.c for the activation formats, dot_portable.c for the integer dots, sparse.c for
/// the gathers): weights are GGUF's raw blocks, activations are quantized the same way and
/// dotted in integers, so only the order of float additions differs from the CPU.
///
/// OpenCL 1.2, no fp16 arithmetic (halves are only loaded and stored with vload_half and
/// vstore_half_rte, which every device has), no subgroups. Row kernels use one work-group of
/// `rowGroupSize` items per output row; element kernels one item per element, the global size
/// rounded up.
enum OpenCLMatrixKernelSource {
    static let rowGroupSize = 64
    static let elementGroupSize = 64

    static let source = """
    #define ROW_GROUP \(rowGroupSize)

    // ---- byte access: blocks are packed, so multi-byte fields are read by parts --------------
    inline float half_at(const global uchar *p) { return vload_half(0, (const global half *)p); }
    inline int i8_at(const global uchar *p) { return (int)as_char(*p); }
    inline int i16_at(const global uchar *p) { return (int)as_short((ushort)(p[0] | (p[1] << 8))); }
    inline uint u32_at(const global uchar *p) {
        return (uint)p[0] | ((uint)p[1] << 8) | ((uint)p[2] << 16) | ((uint)p[3] << 24);
    }
    inline float f32_at(const global uchar *p) { return as_float(u32_at(p)); }
    inline void store_half(float v, global uchar *p) { vstore_half_rte(v, 0, (global half *)p); }

    // Sum of one value per work-item of the group (all items must call it).
    float group_sum(float v, local float *scratch) {
        int lid = get_local_id(0);
        scratch[lid] = v;
        barrier(CLK_LOCAL_MEM_FENCE);
        for (int step = ROW_GROUP / 2; step > 0; step >>= 1) {
            if (lid < step) scratch[lid] += scratch[lid + step];
            barrier(CLK_LOCAL_MEM_FENCE);
        }
        return scratch[0];
    }

    // ---- activation quantizers: one work-item per block, the CPU's arithmetic step for step --
    // Q8_0 (34 bytes): d = amax/127 as a half, q = nearest(x * 127/amax), ties to even.
    kernel void quantize_q8_0(global const float *x, global uchar *out, int blocks) {
        int b = get_global_id(0);
        if (b >= blocks) return;
        const global float *v = x + 32 * b;
        global uchar *o = out + 34 * b;
        float amax = 0.0f;
        for (int j = 0; j < 32; j++) amax = fmax(amax, fabs(v[j]));
        float d = amax / 127.0f, id = amax != 0.0f ? 127.0f / amax : 0.0f;
        store_half(d, o);
        for (int j = 0; j < 32; j++) o[2 + j] = (uchar)convert_char(convert_int_rte(v[j] * id));
    }

    // Q8_1 (36 bytes): as Q8_0, plus s = d * sum(q) as a half.
    kernel void quantize_q8_1(global const float *x, global uchar *out, int blocks) {
        int b = get_global_id(0);
        if (b >= blocks) return;
        const global float *v = x + 32 * b;
        global uchar *o = out + 36 * b;
        float amax = 0.0f;
        for (int j = 0; j < 32; j++) amax = fmax(amax, fabs(v[j]));
        float d = amax / 127.0f, id = amax != 0.0f ? 127.0f / amax : 0.0f;
        int sum = 0;
        for (int j = 0; j < 32; j++) {
            int q = convert_int_rte(v[j] * id);
            o[4 + j] = (uchar)convert_char(q);
            sum += q;
        }
        store_half(d, o);
        store_half(d * (float)sum, o + 2);
    }

    // Q8_K (292 bytes: float d, 256 quants, 16 sums of 16): the scale comes from the signed
    // value of largest magnitude, q = min(127, nearest(-127/max * x)), d = 1/iscale.
    kernel void quantize_q8_k(global const float *x, global uchar *out, int blocks) {
        int b = get_global_id(0);
        if (b >= blocks) return;
        const global float *v = x + 256 * b;
        global uchar *o = out + 292 * b;
        float amax = 0.0f, max = 0.0f;
        for (int j = 0; j < 256; j++) {
            float a = fabs(v[j]);
            if (a > amax) { amax = a; max = v[j]; }
        }
        if (amax == 0.0f) {
            for (int j = 0; j < 292; j++) o[j] = 0;
            return;
        }
        float iscale = -127.0f / max;
        for (int g = 0; g < 16; g++) {
            int s = 0;
            for (int l = 0; l < 16; l++) {
                int q = min(convert_int_rte(iscale * v[16 * g + l]), 127);
                o[4 + 16 * g + l] = (uchar)convert_char(q);
                s += q;
            }
            o[260 + 2 * g] = (uchar)(s & 255);
            o[261 + 2 * g] = (uchar)((s >> 8) & 255);
        }
        uint bits = as_uint(1.0f / iscale);
        o[0] = bits & 255; o[1] = (bits >> 8) & 255; o[2] = (bits >> 16) & 255; o[3] = bits >> 24;
    }

    // ---- one block of weights against one block of activations -------------------------------
    // F32 and F16 rows meet plain float activations; a "block" is one element.
    inline float dot_f32(const global uchar *w, const global uchar *a) { return f32_at(w) * f32_at(a); }
    inline float dot_f16(const global uchar *w, const global uchar *a) { return half_at(w) * f32_at(a); }

    // Q4_0 (18 bytes) x Q8_0: byte j holds element j (low nibble) and j + 16 (high), minus 8.
    inline float dot_q4_0(const global uchar *w, const global uchar *a) {
        int sum = 0;
        for (int j = 0; j < 16; j++) {
            int q = w[2 + j];
            sum += ((q & 15) - 8) * i8_at(a + 2 + j) + ((q >> 4) - 8) * i8_at(a + 18 + j);
        }
        return half_at(w) * half_at(a) * (float)sum;
    }

    // Q4_1 (20 bytes: d, m) x Q8_1: the offset term is m times Q8_1's s.
    inline float dot_q4_1(const global uchar *w, const global uchar *a) {
        int sum = 0;
        for (int j = 0; j < 16; j++) {
            int q = w[4 + j];
            sum += (q & 15) * i8_at(a + 4 + j) + (q >> 4) * i8_at(a + 20 + j);
        }
        return half_at(w) * half_at(a) * (float)sum + half_at(w + 2) * half_at(a + 2);
    }

    // Q5_0 (22 bytes: d, 32-bit qh, 16 bytes) x Q8_0: bit j of qh is element j's fifth bit.
    inline float dot_q5_0(const global uchar *w, const global uchar *a) {
        uint qh = u32_at(w + 2);
        int sum = 0;
        for (int j = 0; j < 16; j++) {
            int q = w[6 + j];
            int lo = ((q & 15) | (int)((qh >> j) & 1) << 4) - 16;
            int hi = ((q >> 4) | (int)((qh >> (j + 16)) & 1) << 4) - 16;
            sum += lo * i8_at(a + 2 + j) + hi * i8_at(a + 18 + j);
        }
        return half_at(w) * half_at(a) * (float)sum;
    }

    // Q8_0 (34 bytes) x Q8_0.
    inline float dot_q8_0(const global uchar *w, const global uchar *a) {
        int sum = 0;
        for (int j = 0; j < 32; j++) sum += i8_at(w + 2 + j) * i8_at(a + 2 + j);
        return half_at(w) * half_at(a) * (float)sum;
    }

    // Q4_K's packed 6-bit scale and min of sub-block j (scales = the 12 packed bytes).
    inline void k_scale_min(int j, const global uchar *q, int *sc, int *m) {
        if (j < 4) {
            *sc = q[j] & 63;
            *m = q[j + 4] & 63;
        } else {
            *sc = (q[j + 4] & 15) | ((q[j - 4] >> 6) << 4);
            *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
        }
    }

    // Q4_K (144 bytes: d, dmin, 12 scale bytes, 128 quant bytes) x Q8_K (292 bytes).
    inline float dot_q4_k(const global uchar *w, const global uchar *a) {
        int sum = 0, msum = 0;
        for (int c = 0; c < 4; c++) {
            int sc0, m0, sc1, m1;
            k_scale_min(2 * c, w + 4, &sc0, &m0);
            k_scale_min(2 * c + 1, w + 4, &sc1, &m1);
            const global uchar *q = w + 16 + 32 * c;
            const global uchar *x = a + 4 + 64 * c;
            int s0 = 0, s1 = 0;
            for (int l = 0; l < 32; l++) {
                s0 += (q[l] & 15) * i8_at(x + l);
                s1 += (q[l] >> 4) * i8_at(x + 32 + l);
            }
            sum += sc0 * s0 + sc1 * s1;
            msum += m0 * (i16_at(a + 260 + 8 * c) + i16_at(a + 262 + 8 * c))
                  + m1 * (i16_at(a + 264 + 8 * c) + i16_at(a + 266 + 8 * c));
        }
        return f32_at(a) * (half_at(w) * (float)sum - half_at(w + 2) * (float)msum);
    }

    // Q6_K (210 bytes: ql[128], qh[64], 16 signed scales, d) x Q8_K; the -32 offset is folded
    // in with the activation sums of each 16.
    inline float dot_q6_k(const global uchar *w, const global uchar *a) {
        int sum = 0;
        for (int h = 0; h < 2; h++) {
            const global uchar *ql = w + 64 * h, *qh = w + 128 + 32 * h;
            const global uchar *x = a + 4 + 128 * h;
            int g[8] = {0, 0, 0, 0, 0, 0, 0, 0};
            for (int l = 0; l < 32; l++) {
                int q0 = (ql[l] & 15) | (qh[l] & 3) << 4;
                int q1 = (ql[l + 32] & 15) | ((qh[l] >> 2) & 3) << 4;
                int q2 = (ql[l] >> 4) | ((qh[l] >> 4) & 3) << 4;
                int q3 = (ql[l + 32] >> 4) | ((qh[l] >> 6) & 3) << 4;
                int k = l >= 16;
                g[0 + k] += q0 * i8_at(x + l);
                g[2 + k] += q1 * i8_at(x + 32 + l);
                g[4 + k] += q2 * i8_at(x + 64 + l);
                g[6 + k] += q3 * i8_at(x + 96 + l);
            }
            for (int k = 0; k < 8; k++)
                sum += i8_at(w + 192 + 8 * h + k) * (g[k] - 32 * i16_at(a + 260 + 2 * (8 * h + k)));
        }
        return f32_at(a) * half_at(w + 208) * (float)sum;
    }

    // ---- row kernels: one work-group per output; items stride over the row's blocks --------
    // matvec_T:  y[r] = row r . act, for r < rows (one group each).
    // matmul_T:  y[c * rows + r] = row r . act column c (prefill: columns act_stride bytes apart;
    //            groups over rows x columns).
    // gather_T:  y[k] = row ids[k] . act, for k < count; an id outside [0, rows) gives NaN
    //            instead of a read outside the matrix.
    #define ROW_KERNELS(T, WBYTES, ABYTES)                                                       \\
    float row_##T(const global uchar *row, const global uchar *act, int blocks, local float *scratch) { \\
        float s = 0.0f;                                                                         \\
        for (int b = get_local_id(0); b < blocks; b += ROW_GROUP)                              \\
            s += dot_##T(row + (size_t)b * WBYTES, act + (size_t)b * ABYTES);                  \\
        return group_sum(s, scratch);                                                           \\
    }                                                                                           \\
    kernel void matvec_##T(global const uchar *w, ulong row_bytes, int blocks,                  \\
                           global const uchar *act, global float *y) {                          \\
        local float scratch[ROW_GROUP];                                                         \\
        size_t r = get_group_id(0);                                                             \\
        float s = row_##T(w + r * row_bytes, act, blocks, scratch);                             \\
        if (get_local_id(0) == 0) y[r] = s;                                                     \\
    }                                                                                           \\
    kernel void matmul_##T(global const uchar *w, ulong row_bytes, int blocks, int rows,        \\
                           global const uchar *act, ulong act_stride, global float *y) {        \\
        local float scratch[ROW_GROUP];                                                         \\
        size_t r = get_group_id(0), c = get_group_id(1);                                        \\
        float s = row_##T(w + r * row_bytes, act + c * act_stride, blocks, scratch);            \\
        if (get_local_id(0) == 0) y[c * rows + r] = s;                                          \\
    }                                                                                           \\
    kernel void gather_##T(global const uchar *w, ulong row_bytes, int blocks, int rows,        \\
                           global const uchar *act, global const int *ids, global float *y) {   \\
        local float scratch[ROW_GROUP];                                                         \\
        size_t k = get_group_id(0);                                                             \\
        int id = ids[k];                                                                        \\
        bool valid = id >= 0 && id < rows;                                                      \\
        /* every item reaches the barriers: a bad id reads row 0 and reports NaN */             \\
        float s = row_##T(w + (size_t)(valid ? id : 0) * row_bytes, act, blocks, scratch);      \\
        if (get_local_id(0) == 0) y[k] = valid ? s : NAN;                                       \\
    }

    ROW_KERNELS(f32, 4, 4)
    ROW_KERNELS(f16, 2, 4)
    ROW_KERNELS(q4_0, 18, 34)
    ROW_KERNELS(q4_1, 20, 36)
    ROW_KERNELS(q5_0, 22, 34)
    ROW_KERNELS(q8_0, 34, 34)
    ROW_KERNELS(q4_k, 144, 292)
    ROW_KERNELS(q6_k, 210, 292)

    // ---- column gather on neuron-major rows: y[j] += sum_k c[k] * row ids[k][j] --------------
    // One work-item per output element j, summing the active rows in order; neighbouring items
    // read neighbouring bytes of each row. Ids outside [0, rows) make y[j] NaN.
    kernel void accumulate_q8_0(global const uchar *w, ulong row_bytes, int n, int rows,
                                global const int *ids, global const float *c, int count, global float *y) {
        int j = get_global_id(0);
        if (j >= n) return;
        size_t offset = (size_t)(j / 32) * 34;
        int e = j % 32;
        float acc = 0.0f;
        for (int k = 0; k < count; k++) {
            int id = ids[k];
            if (id < 0 || id >= rows) { acc = NAN; break; }
            const global uchar *block = w + (size_t)id * row_bytes + offset;
            acc += half_at(block) * c[k] * (float)i8_at(block + 2 + e);
        }
        y[j] += acc;
    }

    // Q4_0 rows (PowerInfer's neuron-major down as its files store it): element e of a block is
    // the low nibble of byte e (e < 16) or the high nibble of byte e - 16, minus 8.
    kernel void accumulate_q4_0(global const uchar *w, ulong row_bytes, int n, int rows,
                                global const int *ids, global const float *c, int count, global float *y) {
        int j = get_global_id(0);
        if (j >= n) return;
        size_t offset = (size_t)(j / 32) * 18;
        int e = j % 32, byte = e % 16, shift = e < 16 ? 0 : 4;
        float acc = 0.0f;
        for (int k = 0; k < count; k++) {
            int id = ids[k];
            if (id < 0 || id >= rows) { acc = NAN; break; }
            const global uchar *block = w + (size_t)id * row_bytes + offset;
            acc += half_at(block) * c[k] * (float)((int)((block[2 + byte] >> shift) & 15) - 8);
        }
        y[j] += acc;
    }

    kernel void accumulate_f16(global const uchar *w, ulong row_bytes, int n, int rows,
                               global const int *ids, global const float *c, int count, global float *y) {
        int j = get_global_id(0);
        if (j >= n) return;
        float acc = 0.0f;
        for (int k = 0; k < count; k++) {
            int id = ids[k];
            if (id < 0 || id >= rows) { acc = NAN; break; }
            acc += c[k] * half_at(w + (size_t)id * row_bytes + 2 * (size_t)j);
        }
        y[j] += acc;
    }
    """
}
