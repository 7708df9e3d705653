"""CFP 1:N identification of trained runs, grouped over seeds, beside their CFP-FP AUC.

    python bench/identify_runs.py RUN [RUN ...] [--cfp ../shared/data/cfp]
        [--root data/cfp-aligned] [--bootstrap 1000] [--save --tag NAME]

For each run: CFP's frontal photos enrolled and its profile photos as probes (closed set:
rank-1, rank-5), and the same with half the people (seed 0) left out of the gallery (open set:
TPIR at FPIR = 1e-1), from one embedding pass; the CFP-FP AUC is read from the run's
``verify/cfp-fp.json`` when it has one (a study's finals do). Runs whose folder names differ
only in ``-seed<k>`` form one row: mean +- std over seeds. The ranking by rank-1 is stated only
where a paired bootstrap over the probes (resampled alike for every row) puts the 95 % interval
of the difference to the best row above zero.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import emit, finish, machine_header, md_table, shared_dir  # noqa: E402
from fvloss.eval.bootstrap import paired_bootstrap_hits  # noqa: E402
from fvloss.eval.identify import identify  # noqa: E402
from fvloss.eval.idsets import from_cfp  # noqa: E402
from fvloss.eval.load import as_embedder  # noqa: E402
from fvloss.eval.score import _embed, _PathLoader  # noqa: E402


def one_run(run: Path, closed, opened, paths: list[Path], device: str, index: str) -> dict:
    emb, _ = _embed(
        as_embedder(run, device=device), _PathLoader(paths), [str(p) for p in paths], 256
    )
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    row = {p: i for i, p in enumerate(paths)}
    take = lambda ps: emb[[row[p] for p in ps]]  # noqa: E731
    c = identify(
        take(closed.gallery),
        closed.gallery_labels,
        take(closed.probes),
        closed.probe_labels,
        max_rank=5,
        index=index,
    )
    o = identify(take(opened.gallery), opened.gallery_labels, take(opened.probes), opened.probe_labels,
                 open_set=True, max_rank=5, fpirs=(0.1,), index=index)  # fmt: skip
    auc = None
    f = run / "verify" / "cfp-fp.json"
    if f.is_file():
        auc = json.loads(f.read_text()).get("auc")
    return {
        "hits": c.probes.rank == 1,
        "rank1": c.rank(1),
        "rank5": c.rank(5),
        "tpir": o.tpir[0.1],
        "auc": auc,
    }


def fmt(xs: list[float | None], pct: bool = True) -> str:
    xs = [x for x in xs if x is not None]
    if not xs:
        return "-"
    k = 100 if pct else 1
    m, s = k * np.mean(xs), k * (np.std(xs, ddof=1) if len(xs) > 1 else 0.0)
    return f"{m:.2f} ± {s:.2f}" if pct else f"{m:.4f} ± {s:.4f}"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", type=Path, nargs="+")
    p.add_argument("--cfp", type=Path, default=shared_dir() / "data" / "cfp")
    p.add_argument("--root", type=Path, default=Path("data/cfp-aligned"))
    p.add_argument("--bootstrap", type=int, default=1000)
    p.add_argument("--save", action="store_true")
    p.add_argument("--tag", default="")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--index", default="flat", help="search index (numpy: no FAISS needed)")
    args = p.parse_args(argv)
    if not args.root.is_dir() or not args.cfp.is_dir():
        sys.exit(f"bench/identify_runs.py: {args.cfp} or {args.root} not found (align CFP first)")
    t_start = time.time()
    out: list[str] = []
    emit(out, "## CFP frontal -> profile identification of trained runs (bench/identify_runs.py)",
         "", machine_header(), "")  # fmt: skip
    closed = from_cfp(args.cfp, args.root)
    opened = from_cfp(args.cfp, args.root, unenrolled=0.5, seed=0)
    paths = sorted(set(closed.gallery + closed.probes))
    emit(out, f"- closed set: {closed.summary().splitlines()[0]}",
         f"- open set: {opened.summary().splitlines()[0]}", "")  # fmt: skip
    groups: dict[str, list[dict]] = {}
    for run in sorted(args.runs):
        r = one_run(run, closed, opened, paths, args.device, args.index)
        groups.setdefault(re.sub(r"-seed\d+$", "", run.name), []).append(r)
        print(f"  {run.name}: rank-1 {100 * r['rank1']:.2f}%  TPIR@1e-1 {r['tpir']}", flush=True)
    names = list(groups)
    hits = [np.stack([r["hits"] for r in groups[g]]) for g in names]
    rates = [h.mean() for h in hits]
    best = int(np.argmax(rates))
    boot = paired_bootstrap_hits(hits, [(best, k) for k in range(len(names)) if k != best],
                                 n_boot=args.bootstrap)  # fmt: skip
    ci = {d.b: (d.ci_low, d.ci_high) for d in boot.diffs}
    rows = []
    for k in sorted(range(len(names)), key=lambda k: -rates[k]):
        g, rs = names[k], groups[names[k]]
        lo, hi = ci.get(k, (0.0, 0.0))
        verdict = "best" if k == best else ("below best" if lo > 0 else "not separated")
        rows.append([g, len(rs), fmt([r["rank1"] for r in rs]), fmt([r["rank5"] for r in rs]),
                     fmt([r["tpir"] for r in rs]), fmt([r["auc"] for r in rs], pct=False),
                     "-" if k == best else f"{100 * lo:+.2f} .. {100 * hi:+.2f}", verdict])  # fmt: skip
    emit(out, md_table(["runs", "seeds", "rank-1 %", "rank-5 %", "TPIR@FPIR=1e-1 %", "CFP-FP AUC",
                        "best - this, rank-1 (95 % CI)", "ranking"], rows), "")  # fmt: skip
    finish(out, t_start, args.save, "identify_runs", args.tag)


if __name__ == "__main__":
    main()
