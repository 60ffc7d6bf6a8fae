"""`diffclust demo` for seeds 0–4 in fp32 and bf16: CLUDI (the demo's settings) and k-means on
scikit-learn's digits, the same input. bf16 stands in for a CPU with AMX / AVX-512 BF16, fp32 for
one without. Appends records to results/demo.json and prints the table.

    python benchmarks/demo.py [--seeds 0 1 2 3 4] [--precisions fp32 bf16]
"""

from __future__ import annotations

import argparse
import tempfile

from _common import append_results, record

from diffclust.demo import DEMO_PARAMS, run_demo


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    a = ap.parse_args()
    recs = []
    for precision in a.precisions:
        for seed in a.seeds:
            with tempfile.TemporaryDirectory() as d:
                res = run_demo(seed=seed, precision=precision, out=f"{d}/run", report=False,
                               verbose=False)
            for name, r in res["rows"].items():
                method = "cludi" if name == "CLUDI" else "kmeans"
                recs.append(record(method, "digits", 1797, 10, seed, r, r["seconds"],
                                   precision=precision, params=DEMO_PARAMS if
                                   method == "cludi" else {}))
            km, cl = res["rows"]["k-means"], res["rows"]["CLUDI"]
            wins = all(cl[k] > km[k] for k in ("acc", "nmi", "ari"))
            print(f"{precision} seed {seed}: CLUDI {100 * cl['acc']:.1f}/{100 * cl['nmi']:.1f}/"
                  f"{100 * cl['ari']:.1f} ({cl['seconds']:.0f}s)  k-means {100 * km['acc']:.1f}/"
                  f"{100 * km['nmi']:.1f}/{100 * km['ari']:.1f}  wins on all three: {wins}",
                  flush=True)
    append_results("demo", recs)


if __name__ == "__main__":
    main()
