"""Ember's C kernels built as a shared library for the check scripts (ctypes)."""
import ctypes, os, subprocess, tempfile


def load(name):
    """Compiles Sources/CEmberKernels into a temporary lib<name>.so and loads it."""
    src = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "Sources", "CEmberKernels")
    lib_path = os.path.join(tempfile.gettempdir(), f"lib{name}.so")
    files = [os.path.join(src, f) for f in os.listdir(src) if f.endswith(".c")]
    subprocess.check_call(["cc", "-O2", "-shared", "-fPIC", "-I", os.path.join(src, "include"),
                           "-o", lib_path] + files)
    return ctypes.CDLL(lib_path)
