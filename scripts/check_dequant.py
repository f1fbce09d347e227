#!/usr/bin/env python3
"""Independent check of Ember's block layouts: dequantizes real GGUF tensors with both the
`gguf` Python package and Ember's C kernels (built as a shared library) and compares.

    python3 scripts/check_dequant.py ~/.cache/ember/models/*.gguf
"""
import ctypes, os, sys
import numpy as np
import gguf

import kernel_library

lib = kernel_library.load("ember_kernels_check")
lib.ember_dequantize_row.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]

worst = 0
for path in sys.argv[1:]:
    reader = gguf.GGUFReader(path)
    seen = set()
    for t in reader.tensors:
        ty = int(t.tensor_type)
        if ty in seen:
            continue
        seen.add(ty)
        raw = np.ascontiguousarray(t.data).view(np.uint8).reshape(-1)
        ref = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32).reshape(-1)
        n = ref.size
        out = np.empty(n, dtype=np.float32)
        lib.ember_dequantize_row(ty, raw.ctypes.data, out.ctypes.data, n)
        diff = float(np.max(np.abs(out - ref)))
        worst = max(worst, diff)
        print(f"{os.path.basename(path)} {t.name} {t.tensor_type.name}: n={n} max|diff|={diff:g}")
# Types absent from the models: quantize random data with Ember, dequantize with both.
lib.ember_quantize_row.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
lib.ember_row_bytes.restype = ctypes.c_size_t
lib.ember_row_bytes.argtypes = [ctypes.c_int, ctypes.c_int64]
rng = np.random.default_rng(1)
for qt in [gguf.GGMLQuantizationType.F16, gguf.GGMLQuantizationType.BF16,
           gguf.GGMLQuantizationType.Q4_0, gguf.GGMLQuantizationType.Q4_1,
           gguf.GGMLQuantizationType.Q5_0, gguf.GGMLQuantizationType.Q5_1,
           gguf.GGMLQuantizationType.Q8_0, gguf.GGMLQuantizationType.Q4_K,
           gguf.GGMLQuantizationType.Q5_K, gguf.GGMLQuantizationType.Q6_K]:
    n = 4096
    x = (rng.standard_normal(n) * 0.3 + 0.05).astype(np.float32)
    raw = np.zeros(lib.ember_row_bytes(int(qt), n), dtype=np.uint8)
    lib.ember_quantize_row(int(qt), x.ctypes.data, raw.ctypes.data, n)
    ref = gguf.quants.dequantize(raw, qt).astype(np.float32).reshape(-1)
    out = np.empty(n, dtype=np.float32)
    lib.ember_dequantize_row(int(qt), raw.ctypes.data, out.ctypes.data, n)
    diff = float(np.max(np.abs(out - ref)))
    worst = max(worst, diff)
    print(f"synthetic {qt.name}: n={n} max|diff|={diff:g} quant err={float(np.max(np.abs(out - x))):g}")
print("worst", worst)
sys.exit(0 if worst == 0 else 1)
