"""fp32 GEMM GFLOP/s of numpy (a @ b.T) at square sizes: the anchor of tune's
BenchmarkGEMMF32 in make bench. Run with /usr/bin/python3 (Debian's numpy) and
LD_LIBRARY_PATH pointing at OpenBLAS (bench/run.go unpacks Debian's
libopenblas0-openmp for the run). Prints one JSON line: {"N512": GFLOP/s, ...}.
"""
import json
import sys
import time

import numpy as np

sizes = [int(s) for s in sys.argv[1:]] or [512, 1024, 2048, 4096]
rng = np.random.default_rng(1)
res = {}
for n in sizes:
    a = rng.standard_normal((n, n), dtype=np.float32)
    w = rng.standard_normal((n, n), dtype=np.float32)
    out = np.empty((n, n), dtype=np.float32)
    np.matmul(a, w.T, out=out)  # warm up (and let OpenBLAS start its threads)
    reps, best = max(1, int(2e9 // (2 * n ** 3))), float("inf")
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(reps):
            np.matmul(a, w.T, out=out)
        best = min(best, (time.perf_counter() - t) / reps)
    res[f"N{n}"] = 2 * n ** 3 / best / 1e9
print(json.dumps(res))
