"""Turn the raw records of ``benchmarks/results/<method>.json`` into the markdown tables of
``benchmarks/RESULTS.md`` (mean ± std over seeds, per method and dataset, with the command).

    python benchmarks/summarize.py cludi            # print the table for one results file
    python benchmarks/summarize.py cludi --since 2026-11-25

Only quality records (those with ``acc``/``nmi``/``ari``) are tabulated; other records (e.g.
throughput) are listed as they are.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict

import numpy as np

from _common import RESULTS


def _fmt(values, scale=100.0, digits=1):
    v = np.asarray(values, dtype=float) * scale
    if len(v) == 1:
        return f"{v[0]:.{digits}f}"
    return f"{v.mean():.{digits}f} ± {v.std():.{digits}f}"


def table(name: str, since: str | None = None) -> str:
    recs = json.loads((RESULTS / f"{name}.json").read_text())
    if since:
        recs = [r for r in recs if r.get("date", "") >= since]
    groups = defaultdict(list)
    other = []
    for r in recs:
        if {"acc", "nmi", "ari"} <= r.keys():  # same data, method and settings: one row
            key = (r["dataset"], r["method"], r.get("n_steps"),
                   json.dumps(r.get("params") or {}, sort_keys=True),
                   r["command"].split(" --seeds")[0])
            groups[key].append(r)
        else:
            other.append(r)
    lines = ["| dataset | method | steps | seeds | ACC | NMI | ARI | fit s | predict s | peak MB | "
             "command |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for (ds, meth, *_), rs in groups.items():
        rs = list({r.get("seed"): r for r in rs}.values())  # a rerun of a seed replaces it
        cmd = "` + `".join(dict.fromkeys(r["command"] for r in rs))
        pred = [r["predict_seconds"] for r in rs if r.get("predict_seconds") is not None]
        lines.append(
            f"| {ds} | {meth} | {rs[0].get('n_steps') or '–'} | {len(rs)} | "
            f"{_fmt([r['acc'] for r in rs])} | "
            f"{_fmt([r['nmi'] for r in rs])} | {_fmt([r['ari'] for r in rs])} | "
            f"{_fmt([r['fit_seconds'] for r in rs], 1.0, 0)} | "
            f"{_fmt(pred, 1.0, 1) if pred else '–'} | "
            f"{max(r['peak_mem_mb'] for r in rs):.0f} | `{cmd}` |")
    for r in other:
        if r.get("method") == "cmax":
            curve = ", ".join(f"{row['C']}: {row['r_C']:.3f}" for row in r["table"])
            lines.append(f"\n- C_max on {r['dataset']} (N = {r['n']}, α = {r['alpha']}): "
                         f"**C_max = {r['c_max']}** (converged: {r['converged']}, "
                         f"{r['seconds']:.0f} s); r_C by C: {curve}; clusterer params "
                         f"{r.get('params') or 'defaults'}; `{r['command']}` ({r['date']})")
            continue
        keys = {k: v for k, v in r.items() if k not in ("command", "date")}
        lines.append(f"\n- `{r['command']}` ({r.get('date', '')}): "
                     + ", ".join(f"{k} = {round(v, 3) if isinstance(v, float) else v}"
                                 for k, v in keys.items()))
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("name", help="results file name without .json (cludi, temi, …)")
    ap.add_argument("--since", default=None, help="only records dated on/after YYYY-MM-DD")
    args = ap.parse_args()
    print(table(args.name, args.since))


if __name__ == "__main__":
    main()
