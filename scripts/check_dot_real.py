#!/usr/bin/env python3
"""Checks Ember's dot kernels on real model tensors: for a few rows of the first tensor of
each type, ember_dot (AVX2 and portable) against a float64 reference built from the gguf
package's dequantized weights and Ember's dequantized activations.

    python3 scripts/check_dot_real.py ~/.cache/ember/models/*.gguf
"""
import ctypes, os, sys
import numpy as np
import gguf

import kernel_library

lib = kernel_library.load("ember_kernels_dot")
V, I64, I = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
lib.ember_dot.restype = ctypes.c_float
lib.ember_dot.argtypes = [I, I64, V, V]
lib.ember_dequantize_row.argtypes = [I, V, V, I64]
lib.ember_quantize_activations.argtypes = [I, V, V, I64]
lib.ember_activation_bytes.restype = ctypes.c_size_t
lib.ember_activation_bytes.argtypes = [I, I64]
lib.ember_row_bytes.restype = ctypes.c_size_t
lib.ember_row_bytes.argtypes = [I, I64]
lib.ember_force_portable.argtypes = [I]

rng = np.random.default_rng(7)
worst = 0.0
for path in sys.argv[1:]:
    seen = set()
    for t in gguf.GGUFReader(path).tensors:
        ty = int(t.tensor_type)
        if ty in seen or len(t.shape) != 2:
            continue
        seen.add(ty)
        n = int(t.shape[0])
        raw = np.ascontiguousarray(t.data).view(np.uint8).reshape(-1)
        rb = lib.ember_row_bytes(ty, n)
        at = lib.ember_activation_type(ty)
        for r in range(4):
            row = np.ascontiguousarray(raw[r * rb:(r + 1) * rb])
            w = gguf.quants.dequantize(row, t.tensor_type).astype(np.float64).reshape(-1)
            x = rng.standard_normal(n).astype(np.float32)
            act = np.zeros(lib.ember_activation_bytes(at, n), dtype=np.uint8)
            lib.ember_quantize_activations(at, x.ctypes.data, act.ctypes.data, n)
            xa = np.empty(n, dtype=np.float32)
            lib.ember_dequantize_row(at, act.ctypes.data, xa.ctypes.data, n)
            ref = float(np.dot(w, xa.astype(np.float64)))
            mag = float(np.sum(np.abs(w * xa)))
            fast = lib.ember_dot(ty, n, row.ctypes.data, act.ctypes.data)
            lib.ember_force_portable(1)
            slow = lib.ember_dot(ty, n, row.ctypes.data, act.ctypes.data)
            lib.ember_force_portable(0)
            # Q8_1's half-rounded s term differs from d*sum(q) by up to 2^-11 relative.
            rel = max(abs(fast - ref), abs(slow - ref)) / mag
            worst = max(worst, rel)
            if r == 0:
                print(f"{os.path.basename(path)} {t.name} {t.tensor_type.name} n={n}: "
                      f"ref={ref:.6f} avx2={fast:.6f} portable={slow:.6f} "
                      f"float-x={float(np.dot(w, x)):.6f} |err|/sum|wx|={rel:.2e}")
print("worst relative error", worst)
