"""``fvloss compare RUN [RUN ...]``: trained runs side by side on one pair protocol.

With ``--pairs FILE --root DIR`` every run is measured on the same pairs: its per-pair scores
come from ``RUN/verify/<pairs-stem>.scores.npz`` when that file was made on this very pair set
(same images, labels and folds: :func:`fvloss.eval.report.pairs_digest`), with the same ``--flip``
and after the run's weights were last written; otherwise the run is scored now and the verify
outputs are written into its folder, so a rerun is cheap. The tool writes

* ``OUT/compare.md`` (also printed): one table of the runs (AUC, k-fold accuracy +- std,
  TAR@FAR=1e-3, EER, epochs, training time, images/s), a table of AUC differences with paired
  bootstrap confidence intervals, the pair file and the exact command line;
* where the runs were identified (``fvloss identify``, a study's ``[identify]``, the
  per-epoch ``val_identify``): rank-1 and TPIR columns, and the rank-1 differences with a
  paired bootstrap over the probes (:func:`fvloss.eval.bootstrap.paired_bootstrap_hits`);
* ``OUT/roc.png``: the runs' ROC curves overlaid, AUCs in the legend;
* ``OUT/compare.json``: the same numbers for scripts.

Without ``--pairs`` the table comes from each run's ``metrics.json`` (its last epoch on pairs
drawn from its own validation identities): no ROC overlay and no bootstrap, since those need
per-pair scores on one shared pair set.

Any protocol works (``--protocol cfp-fp`` with a CFP folder, a ``.bin``), and an ``.onnx``
model can stand in for a run (its scores are cached in ``<model>-verify/``). The bootstrap is
:func:`fvloss.eval.bootstrap.paired_bootstrap`.
"""

from __future__ import annotations

import argparse
import math
import os
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..eval.bootstrap import (
    MAX_ALL_PAIRS,
    BootstrapResult,
    Diff,
    choose_comparisons,
    paired_bootstrap,
    paired_bootstrap_hits,
)
from ..eval.groups import Group, group_runs, mean_std, pool_scores
from ..eval.metrics import VerificationResult, far_key, metric_key, verify_scores
from ..eval.plots import plot_roc, reject_figure, score_histograms_figure
from ..eval.protocols import PairFileError, PairSet, read_pairs
from ..eval.report import (
    RunMetrics,
    RunScores,
    load_scores,
    pairs_digest,
    weights_file,
    write_outputs,
)
from ..experiment import load_experiment
from ..imageio import ImageReadError
from ..jsonio import read_json, write_json
from ..losses import LOSSES
from ..study import StudySpec, WorkerStopped, prepare, run_worker, tuning_study
from .parser import Parser, fail
from .train import parse_flags
from .verify import (
    add_model_options,
    add_pair_options,
    default_out_dir,
    load_embedder,
    protocol_meta,
    score_protocol,
)

__all__ = ["TABLE_FAR", "identification_summary", "main", "probe_hits", "run_grid"]

PROG = "fvloss compare"

TABLE_FAR = 1e-3


def _score_run(model: Path, pairs: PairSet, args: argparse.Namespace) -> RunScores:
    """Score ``pairs`` with a run's (or ONNX model's) embedder and write its verify outputs
    (``RUN/verify/<name>.*``) exactly as ``fvloss verify`` does."""
    embedder = load_embedder(model, args)
    result, scores, kept, seconds = score_protocol(embedder, pairs, args, args.flip)
    meta = {**protocol_meta(model, pairs, args, args.flip, seconds), "by": "fvloss compare"}
    label = model.name if model.is_dir() else model.stem
    write_outputs(result, default_out_dir(model), pairs.name, meta, label, scores, kept)
    return RunScores(
        scores, kept.same, kept.folds, pairs_digest(kept), f"scored now ({seconds:.1f} s)"
    )


# ----------------------------------------------------------------------------- one table row


@dataclass
class _Row:
    path: Path
    label: str
    metrics: dict[str, Any]
    config: dict[str, Any]
    result: VerificationResult | None = None
    scores: RunScores | None = None

    @property
    def loss(self) -> str:
        return str(self.metrics.get("loss") or self.config.get("loss") or "?")

    def numbers(self) -> dict[str, Any]:
        """The table's numbers (None where unknown) and the reason for a missing TAR."""
        m = self.metrics
        out: dict[str, Any] = {
            "epochs": m.get("epochs", self.config.get("epochs")),
            "train_time_s": m.get("train_time_s"),
            "images_per_s": m.get("images_per_s"),
            **identification_summary(self.path),
        }
        key = metric_key(TABLE_FAR)
        if self.result is not None:
            r = self.result
            tar = r.tar_at_far.get(TABLE_FAR)
            out |= {
                "auc": r.auc,
                "acc": r.acc_mean,
                "acc_std": r.acc_std,
                "n_folds": r.n_folds,
                key: tar.tar if tar else None,
                "tar_reason": tar.reason if tar else "not computed",
                "eer": r.eer,
            }
            return out
        final = m.get("final") or {}
        tar = _finite(final.get(key))
        reason = None
        if tar is None:
            n = self.config.get("val_pairs")
            reason = (
                f"not resolvable on the run's {n} validation pairs (about {n // 2} different; "
                f"FAR {far_key(TABLE_FAR)} needs at least {math.ceil(1 / TABLE_FAR)})"
                if isinstance(n, int) and n // 2 < math.ceil(1 / TABLE_FAR)
                else "not in metrics.json"
                if not final
                else "NaN in metrics.json"
            )
        out |= {
            "auc": _finite(final.get("auc")),
            "acc": _finite(final.get("acc")),
            "acc_std": None,  # metrics.json keeps the k-fold mean only
            "n_folds": 10,
            key: tar,
            "tar_reason": reason,
            "eer": _finite(final.get("eer")),
        }
        return out


def _identify_doc(run: Path) -> dict[str, Any]:
    """The run's (or ONNX model's) ``verify/identify.json``; {} when absent."""
    return read_json(default_out_dir(run) / "identify.json", default={})


def identification_summary(run: Path) -> dict[str, Any]:
    """Rank-1 and TPIR@FPIR=1e-1 from the run's ``verify/identify.json`` (``fvloss identify``
    or the per-epoch ``val_identify``), with the set they were measured on; {} when absent."""
    doc = _identify_doc(run)
    if not doc:
        return {}
    return {"rank1": _finite((doc.get("cmc") or [None])[0]),
            "tpir": _finite((doc.get("tpir") or {}).get("0.1")), "id_set": doc.get("set")}  # fmt: skip


def _finite(v: Any) -> float | None:
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _read_metrics(path: Path) -> dict[str, Any]:
    """A run's ``metrics.json`` in today's layout (:class:`RunMetrics`); ``{}`` when absent."""
    if not path.is_dir():
        return {}
    try:
        m = RunMetrics.read(path)
    except ValueError:
        return {}
    return m.to_dict() if m is not None else {}


def _read_config(path: Path) -> dict[str, Any]:
    return read_json(path / "config.json", default={}) if path.is_dir() else {}


def _labels(runs: Sequence[Path], metrics: Sequence[dict], configs: Sequence[dict]) -> list[str]:
    """``name`` (else ``loss``) from metrics.json/config.json, else the folder name; where two
    runs would share a label (two softmax runs) the folder names tell them apart."""
    base = [
        str(m.get("name") or c.get("name") or m.get("loss") or c.get("loss") or p.name)
        for p, m, c in zip(runs, metrics, configs)
    ]
    labels = [b if base.count(b) == 1 else p.name for b, p in zip(base, runs)]
    seen: dict[str, int] = {}
    for k, lab in enumerate(labels):  # the same folder name under two parents
        if labels.count(lab) > 1:
            seen[lab] = seen.get(lab, 0) + 1
            labels[k] = f"{lab} #{seen[lab]}"
    return labels


# ----------------------------------------------------------------------------- Markdown


def _md(text: str) -> str:
    return str(text).replace("|", "\\|")


def _f4(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.4f}"


def _table(rows: Sequence[_Row], notes: list[str]) -> list[str]:
    """The runs table; reasons for n/a cells are appended to ``notes`` as footnotes."""
    nums = [r.numbers() for r in rows]
    k = nums[0]["n_folds"] if nums else 10
    far = far_key(TABLE_FAR)
    ident = any(n.get("rank1") is not None for n in nums)  # 1:N columns when measured
    lines = [
        f"| run | loss | AUC | {k}-fold acc | TAR@FAR={far} | EER | "
        + ("rank-1 | TPIR@FPIR=1e-1 | " if ident else "")
        + "epochs | training (min) | images/s |",
        "|:--|:--|--:|--:|--:|--:|" + ("--:|--:|" if ident else "") + "--:|--:|--:|",
    ]
    sets = sorted({n["id_set"] for n in nums if n.get("id_set")})
    if sets:
        notes.append(f"rank-1 and TPIR from each run's verify/identify.json: {'; '.join(sets)}")
    for row, n in zip(rows, nums):
        acc = _f4(n["acc"])
        if n["acc"] is not None:
            acc += f" ± {n['acc_std']:.4f}" if n["acc_std"] is not None else " ± n/a"
        tar = n[metric_key(TABLE_FAR)]
        if tar is None:
            reason = n["tar_reason"] or "unknown"
            if reason not in notes:
                notes.append(reason)
            tar_cell = f"n/a [{notes.index(reason) + 1}]"
        else:
            tar_cell = f"{tar:.4f}"
        t = n["train_time_s"]
        ips = n["images_per_s"]
        cells = [
            _md(row.label),
            _md(row.loss),
            _f4(n["auc"]),
            acc,
            tar_cell,
            _f4(n["eer"]),
            *([_f4(n.get("rank1")), _f4(n.get("tpir"))] if ident else []),
            "n/a" if n["epochs"] is None else str(n["epochs"]),
            "n/a" if t is None else f"{t / 60:.1f}" if t >= 60 else f"{t / 60:.2f}",
            "n/a" if ips is None else f"{ips:.0f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _p_text(d: Diff, n_boot: int) -> str:
    # 0 of B resamples is not p = 0: the bootstrap cannot resolve below 1/B.
    return f"< {1 / n_boot:.4f}" if d.n_le_0 == 0 else f"{d.p_le_0:.4f}"


def _diff_rows(boot: BootstrapResult, labels: Sequence[str], fmt) -> list[str]:
    """One table row per comparison: A − B, the difference and its interval (``fmt``), the
    one-sided p-value and the reading."""
    rows = []
    for d in boot.diffs:
        a, b = _md(labels[d.a]), _md(labels[d.b])
        reading = {1: f"{a} better", -1: f"{b} better", 0: "no clear difference"}[d.verdict]
        rows.append(f"| {a} − {b} | {fmt(d.diff)} | [{fmt(d.ci_low)}, {fmt(d.ci_high)}] "
                    f"| {_p_text(d, boot.n_boot)} | {reading} |")  # fmt: skip
    return rows


def _comparisons_doc(boot: BootstrapResult, labels: Sequence[str]) -> list[dict[str, Any]]:
    """The comparisons for ``compare.json``: labels, difference, interval, p, the better one."""
    return [
        {"a": labels[d.a], "b": labels[d.b], "diff": d.diff, "ci": [d.ci_low, d.ci_high],
         "p_le_0": d.p_le_0, "better": {1: labels[d.a], -1: labels[d.b], 0: None}[d.verdict]}
        for d in boot.diffs
    ]  # fmt: skip


def _bootstrap_lines(boot: BootstrapResult, labels: Sequence[str], all_pairs: bool) -> list[str]:
    pct = f"{100 * boot.level:g}%"
    how = (
        "every pair of runs, the higher observed AUC first"
        if all_pairs
        else f"each run against the baseline `{_md(labels[0])}` (more than {MAX_ALL_PAIRS} runs)"
    )
    lines = [
        f"## AUC differences (paired bootstrap, {boot.n_boot} resamples, seed {boot.seed})",
        "",
        "Each resample draws the pairs with replacement (same and different pairs separately, "
        "as the protocol fixes their numbers) and scores every run on it. ΔAUC = A − B on the "
        f"pairs as they are; {pct} percentile interval of the resampled differences; "
        "P(Δ* ≤ 0) = share of resamples where A is not better (one-sided bootstrap p-value). "
        f"Comparisons: {how}.",
        "",
        f"| A − B | ΔAUC | {pct} CI | P(Δ* ≤ 0) | reading |",
        "|:--|--:|:--:|--:|:--|",
    ]
    lines += _diff_rows(boot, labels, lambda x: f"{x:+.4f}")
    lines += [
        "",
        "Pairs that share an image are not independent; resampling pairs treats them as if they "
        "were, so these intervals are, if anything, a little narrow.",
    ]
    return lines


# ----------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    p = Parser(
        examples=[
            "fvloss compare runs/celeba64-softmax runs/celeba64-arcface --pairs ../shared/data/lfw-view1/pairsDevTest.txt --root data/lfw-view1-aligned",
            "fvloss compare --grid softmax,arcface --seeds 42,43 --out runs/grid -- --config recipes/celeba64.toml",
        ],
        prog="fvloss compare",
        description="Put trained runs side by side: one Markdown table (AUC, k-fold accuracy, "
        "TAR@FAR, EER, training time), their ROC curves overlaid, and paired bootstrap "
        "confidence intervals on the AUC differences. Writes OUT/compare.md, roc.png and "
        "compare.json.",
    )
    p.add_argument("runs", nargs="*", type=Path, metavar="RUN", help="run folders")
    p.add_argument(
        "--grid",
        metavar="LOSS,LOSS,...",
        help="train these losses (x --seeds) first, into OUT/<loss>-seed<seed>, then compare "
        "them; settings after `--` go to every run (e.g. -- --config recipes/celeba64.toml); "
        "finished runs are kept, interrupted ones resumed",
    )
    p.add_argument(
        "--seeds", default="42", metavar="S,S,...", help="seeds of each --grid loss (default 42)"
    )
    p.add_argument(
        "--pairs",
        type=Path,
        help="pair file scored by every run; without it: each run's metrics.json (table only)",
    )
    add_pair_options(p)
    p.add_argument("--out", type=Path, help="output folder (default: runs/compare-<pairs-stem>)")
    p.add_argument(
        "--bootstrap", type=int, default=2000, metavar="B", help="resamples (0: no bootstrap)"
    )
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument("--labels", help="comma-separated run labels, in the order of the runs")
    p.add_argument(
        "--rescore", action="store_true", help="score every run again, ignoring cached scores"
    )
    add_model_options(p)
    return p


def _log(message: str) -> None:
    print(f"[compare] {message}", file=sys.stderr, flush=True)  # stdout is the Markdown


def main(argv: list[str] | None = None) -> int:
    """``fvloss compare``: 0 on success, 2 for bad input, 1 for unreadable images."""
    argv = list(sys.argv[1:] if argv is None else argv)
    train_args: list[str] = []
    if "--" in argv:  # the grid's training settings
        cut = argv.index("--")
        argv, train_args = argv[:cut], argv[cut + 1 :]
    args = _parser().parse_args(argv)
    command = shlex.join(["fvloss", "compare", *argv, *(["--", *train_args] if train_args else [])])
    if args.grid:
        made = run_grid(args, train_args)
        if isinstance(made, int):
            return made
        args.runs = [*args.runs, *made]
    elif train_args:
        return fail(PROG, "settings after `--` are for --grid's training runs", 2)
    if not args.runs:
        return fail(PROG, "give run folders, or --grid LOSSES to train them", 2)
    for run in args.runs:
        if not (run.is_dir() or (run.is_file() and run.suffix.lower() == ".onnx")):
            return fail(PROG, f"run folder not found: {run} (a run folder or an .onnx model)", 2)
    if args.bootstrap < 0:
        return fail(PROG, "--bootstrap must be >= 0", 2)
    metrics = [_read_metrics(r) for r in args.runs]
    configs = [_read_config(r) for r in args.runs]
    if args.labels is None:
        labels = _labels(args.runs, metrics, configs)
    else:
        labels = [s.strip() for s in args.labels.split(",")]
        if len(labels) != len(args.runs) or len(set(labels)) != len(labels) or "" in labels:
            n = len(args.runs)
            return fail(PROG, f"--labels needs {n} distinct names, got {args.labels!r}", 2)
    rows = [_Row(p, lab, m, c) for p, lab, m, c in zip(args.runs, labels, metrics, configs)]
    pairs = None
    if args.pairs is not None:
        try:
            pairs = read_pairs(args.pairs, args.root, args.format, args.skip_missing)
        except (PairFileError, ValueError) as e:
            return fail(PROG, str(e), 2)
    report = f"compare-{pairs.name if pairs else 'metrics'}"
    # a grid's runs live in OUT, each comparison of them in OUT/compare-<pairs>
    out = (
        (args.out or Path("runs") / "grid") / report
        if args.grid
        else args.out or Path("runs") / report
    )
    groups = group_runs(labels, configs)

    boot: BootstrapResult | None = None
    if args.pairs is None:
        title = f"# fvloss compare: {len(rows)} runs, their own validation numbers"
        body = _metrics_report(rows)
        doc: dict[str, Any] = {"mode": "metrics.json", "pairs": None, "bootstrap": None}
    else:
        what = f"`{args.pairs.name}`" + (
            f" ({pairs.name})" if pairs.name != args.pairs.stem else ""
        )
        title = f"# fvloss compare: {len(rows)} runs on {what}"
        made = _pairs_report(rows, pairs, args, out)
        if isinstance(made, int):
            return made
        body, doc, boot = made
    if any(len(g.members) > 1 for g in groups):
        seeds_lines, doc["groups"] = _seeds_report(rows, groups, pairs, args, out)
        body = [*body, "", *seeds_lines]
    rank1_lines, doc["rank1_bootstrap"] = _rank1_report(rows, groups, args)
    body = [*body, *rank1_lines]

    md = [title, "", *body, "", "Runs:", ""]
    for r in rows:
        where = f" — scores: {r.scores.source}" if r.scores else ""
        md.append(f"- `{_md(r.label)}`: `{r.path}`{where}")
    md += ["", f"Command (in `{os.getcwd()}`):", "", "```", command, "```", ""]
    text = "\n".join(md)

    doc = {"command": command, "cwd": os.getcwd(), **doc}
    doc["runs"] = [
        {
            "label": r.label,
            "run": str(r.path),
            "loss": r.loss,
            "scores": r.scores.source if r.scores else "metrics.json",
            **r.numbers(),
            **({"auc_ci": list(boot.auc_ci(k))} if boot is not None else {}),
        }
        for k, r in enumerate(rows)
    ]
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.md").write_text(text)
    names = ["compare.md", *(["roc.png"] if args.pairs else []), "compare.json"]
    if args.pairs and (out / "roc_seeds.png").exists() and "groups" in doc:
        names.insert(2, "roc_seeds.png")
    doc["outputs"] = [str(out / n) for n in names]
    write_json(out / "compare.json", doc)
    print(text)
    _log(f"wrote {', '.join(doc['outputs'])}")
    return 0


def _footnotes(notes: Sequence[str]) -> list[str]:
    return ["", *(f"[{k}] {n}" for k, n in enumerate(notes, 1))] if notes else []


def _metrics_report(rows: Sequence[_Row]) -> list[str]:
    """Table and notes from each run's ``metrics.json`` (no shared pairs)."""
    notes: list[str] = []
    lines = [*_table(rows, notes), *_footnotes(notes), ""]
    lines.append(
        "Numbers from each run's `metrics.json`: its last epoch, on pairs drawn from its own "
        "held-out validation identities (the k-fold std is not stored there). No ROC overlay and "
        "no bootstrap: they need per-pair scores of every run on one shared pair set; pass "
        "`--pairs FILE --root DIR`."
    )
    keys = ("data", "seed", "valid_pct", "val_pairs")
    setups = {tuple(str(r.config.get(k)) for k in keys) for r in rows}
    if len(setups) > 1:
        differ = [k for i, k in enumerate(keys) if len({s[i] for s in setups}) > 1]
        lines += [
            "",
            f"**Warning:** these runs differ in {', '.join(differ)}, so they were validated on "
            "different pairs: their numbers do not compare directly.",
        ]
    return lines


def _reject_lines(rows: Sequence[_Row], pairs: PairSet, out: Path) -> list[str]:
    """Error versus reject, overlaid, for the runs that ``fvloss quality`` measured on these
    pairs (``verify/<pairs>.quality.json``); nothing when none did."""
    docs = {}
    for r in rows:
        d = read_json(default_out_dir(r.path) / f"{pairs.name}.quality.json", default={})
        if d.get("n_pairs") == len(pairs) and "reject" in d:  # these pairs, as scored here
            docs[r.label] = d
    if not docs:
        return []
    whats = sorted({d["reject"]["what"].split(" (")[0] for d in docs.values()})
    curves = {k: (d["reject"]["rejected"], d["reject"]["error"]) for k, d in docs.items()}
    reject_figure(curves, "; ".join(whats)).savefig(out / "reject.png")
    share = [0.0, 0.1, 0.3]
    lines = ["## Error versus reject (`fvloss quality`)", "",
             f"{'; '.join(whats)}, with the pairs whose lower quality is lowest rejected first "
             f"(each run's own threshold and quality score, from its "
             f"`verify/{pairs.name}.quality.json`); curves: `reject.png`.", "",
             "| run | quality | " + " | ".join(f"{100 * x:.0f} % rejected" for x in share)
             + " | area |", "|:--|:--|" + "--:|" * (len(share) + 1)]  # fmt: skip
    for label, d in docs.items():
        rej, err = d["reject"]["rejected"], d["reject"]["error"]
        cells = [_f4(err[rej.index(x)]) if x in rej else "n/a" for x in share]
        lines.append(f"| {_md(label)} | {d.get('quality', '?')} | {' | '.join(cells)} | "
                     f"{_f4(d.get('reject_area'))} |")  # fmt: skip
    missing = [r.label for r in rows if r.label not in docs]
    if missing:
        lines += ["", f"Not measured: {', '.join(map(_md, missing))}."]
    return [*lines, ""]


def _pairs_report(
    rows: Sequence[_Row], pairs: PairSet, args: argparse.Namespace, out: Path
) -> tuple[list[str], dict[str, Any], BootstrapResult | None] | int:
    """Score (or reuse) every run on the pairs; table, ROC figure, bootstrap. Or an exit code."""
    code = _collect_scores(rows, pairs, args)
    if code:
        return code
    first = rows[0].scores
    if any(r.scores.digest != first.digest for r in rows):
        return fail(
            PROG, "the runs were scored on different pairs (different unreadable images?)", 2
        )
    for r in rows:
        s = r.scores
        r.result = verify_scores(s.scores, s.same, s.folds, args.folds)
    res = rows[0].result
    notes: list[str] = []
    lines = [*_table(rows, notes), *_footnotes(notes), ""]
    root = args.root or args.pairs.parent
    skipped = pairs.n_skipped + len(pairs) - res.n_pairs  # at reading + unreadable at scoring
    lines.append(
        f"Pairs: `{args.pairs}` ({pairs.format}, images under `{root}`): {res.n_pairs} pairs "
        f"({res.n_same} same, {res.n_different} different"
        + (f"; {skipped} of the file's pairs skipped" if skipped else "")
        + f"), {res.n_folds} folds {'from the file' if res.folds_from == 'file' else res.folds_from}"
        + f"; flip TTA {'on' if args.flip else 'off'}."
    )
    roc = plot_roc(
        {r.label: r.result for r in rows},
        out / "roc.png",
        title=f"{pairs.name}: {res.n_pairs} pairs",
    )
    hist = out / "scores.png"  # each run's same / different scores and its threshold
    score_histograms_figure(
        {r.label: (r.scores.scores, r.scores.same, r.result.threshold) for r in rows}
    ).savefig(hist)
    lines += ["", f"ROC curves: `{roc.name}`; score histograms: `{hist.name}`.", ""]
    lines += _reject_lines(rows, pairs, out)
    labels = [r.label for r in rows]
    boot = None
    if len(rows) < 2:
        lines.append("No bootstrap: it compares two or more runs.")
    elif args.bootstrap == 0:
        lines.append("No bootstrap (`--bootstrap 0`).")
    else:
        t0 = time.perf_counter()
        boot = paired_bootstrap(
            [r.scores.scores for r in rows], first.same, n_boot=args.bootstrap, seed=args.seed
        )
        _log(f"bootstrap: {args.bootstrap} resamples in {time.perf_counter() - t0:.2f} s")
        lines += _bootstrap_lines(boot, labels, len(rows) <= MAX_ALL_PAIRS)
    doc: dict[str, Any] = {
        "mode": "pairs",
        "pairs": {
            "file": str(args.pairs),
            "root": str(root),
            "format": pairs.format,
            "n_pairs": res.n_pairs,
            "n_same": res.n_same,
            "n_different": res.n_different,
            "n_skipped": skipped,
            "folds_from": res.folds_from,
            "sha1": first.digest,
            "flip": args.flip,
        },
        "bootstrap": None,
    }
    if boot is not None:
        doc["bootstrap"] = {
            "n_boot": boot.n_boot,
            "seed": boot.seed,
            "level": boot.level,
            "scheme": "paired; same and different pairs resampled separately",
            "comparisons": _comparisons_doc(boot, labels),
        }
    return lines, doc, boot


def _collect_scores(rows: Sequence[_Row], pairs: PairSet, args: argparse.Namespace) -> int:
    """Fill ``row.scores`` from each run's cached scores or by scoring it; 0 or an exit code."""
    digest = pairs_digest(pairs)
    stem = pairs.name
    for r in rows:
        weights = weights_file(r.path) if r.path.is_dir() else r.path
        cached, why = (
            (None, "--rescore")
            if args.rescore
            else load_scores(
                default_out_dir(r.path) / f"{stem}.scores.npz",
                digest,
                args.flip,
                weights.stat().st_mtime if weights else None,
            )
        )
        if cached is not None:
            r.scores = cached
            _log(f"{r.label}: {cached.source}")
            continue
        if weights is None or (r.path.is_dir() and not (r.path / "config.json").is_file()):
            return fail(PROG, f"{r.path}: {why}, and no weights/config.json to score it with", 2)
        _log(f"{r.label}: scoring {len(pairs)} pairs ({why})")
        try:
            r.scores = _score_run(r.path, pairs, args)
        except ImageReadError as e:
            return fail(PROG, f"{e} (use --skip-missing to drop such pairs)", 1)
        except (ValueError, OSError) as e:
            return fail(PROG, str(e), 2)
    return 0


# ----------------------------------------------------------------------------- seeds


def _pm(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "n/a"
    return f"{mean:.4f} ± {std:.4f}" if std is not None else f"{mean:.4f} ± n/a"


def _seeds_report(
    rows: Sequence[_Row],
    groups: Sequence[Group],
    pairs: PairSet | None,
    args: argparse.Namespace,
    out: Path,
) -> tuple[list[str], list[dict[str, Any]]]:
    """Mean +- sample std of each configuration over its seeds; with shared pairs, the groups'
    pooled ROC curves and a paired bootstrap of the pooled AUCs."""
    key = metric_key(TABLE_FAR)
    far = far_key(TABLE_FAR)
    lines = [
        "## Over seeds (one line per configuration: mean ± sample std over its runs)",
        "",
        f"| configuration | loss | seeds | AUC | k-fold acc | TAR@FAR={far} | EER | training (min) |",
        "|:--|:--|:--|--:|--:|--:|--:|--:|",
    ]
    doc = []
    for g in groups:
        nums = [rows[i].numbers() for i in g.members]
        stats = {m: mean_std([n[m] for n in nums]) for m in ("auc", "acc", key, "eer")}
        t = mean_std([n["train_time_s"] for n in nums])[0]
        lines.append(
            f"| {_md(g.label)} | {_md(rows[g.members[0]].loss)} | "
            f"{', '.join(str(s) for s in g.seeds)} | "
            + " | ".join(_pm(*stats[m][:2]) for m in ("auc", "acc", key, "eer"))
            + f" | {'n/a' if t is None else f'{t / 60:.1f}'} |"
        )
        doc.append(
            {"label": g.label, "runs": [rows[i].label for i in g.members], "seeds": g.seeds,
             **{m: {"mean": v[0], "std": v[1], "n": v[2]} for m, v in stats.items()}}
        )  # fmt: skip
    if pairs is None or any(r.scores is None for r in rows):
        return lines, doc
    n = min(len(g.members) for g in groups)
    same = rows[0].scores.same
    pooled = [pool_scores([rows[i].scores.scores for i in g.members], same, n)[0] for g in groups]
    same_n = np.tile(same, n)
    results = {g.label: verify_scores(s, same_n, None, args.folds) for g, s in zip(groups, pooled)}
    roc = plot_roc(results, out / "roc_seeds.png", title=f"{pairs.name}: {n} seed(s) pooled")
    lines += [
        "",
        f"Pooled: each configuration's first {n} seed(s), {len(same)} pairs each "
        f"({n * len(same)} pooled pairs); pooled ROC curves: `{roc.name}`.",
    ]
    for d, r in zip(doc, results.values()):
        d["pooled_auc"] = r.auc
    if len(groups) < 2 or args.bootstrap == 0:
        return lines, doc
    labels = [g.label for g in groups]
    comps = choose_comparisons([r.auc for r in results.values()])
    boot = paired_bootstrap(pooled, same_n, comps, n_boot=args.bootstrap, seed=args.seed)
    lines += ["", *_bootstrap_lines(boot, labels, len(groups) <= MAX_ALL_PAIRS)]
    lines[lines.index(next(x for x in lines if x.startswith("## AUC differences")))] = (
        f"### Pooled AUC differences between configurations (paired bootstrap, {boot.n_boot} "
        f"resamples, seed {boot.seed})"
    )
    return lines, doc


# ----------------------------------------------------------------------------- rank-1


def probe_hits(run: Path) -> tuple[str, np.ndarray] | None:
    """(probe key, 1 where the mated probe's identity came first) from the run's
    ``verify/identify.json``; None when it holds no per-probe ranks (an older file)."""
    return _hits(_identify_doc(run))


def _hits(doc: dict[str, Any]) -> tuple[str, np.ndarray] | None:
    ranks, mated, key = doc.get("probe_rank"), doc.get("probe_mated"), doc.get("probe_key")
    if not key or ranks is None or mated is None or len(ranks) != len(mated):
        return None
    return key, np.array([r == 1 for r, m in zip(ranks, mated) if m], dtype=np.float64)


def _rank1_report(
    rows: Sequence[_Row], groups: Sequence[Group], args: argparse.Namespace
) -> tuple[list[str], dict[str, Any] | None]:
    """Paired bootstrap over the probes of the rank-1 differences, when every run's
    ``identify.json`` holds per-probe ranks of the same probes; a one-line reason when only
    some can be paired; nothing when no run was identified."""
    docs = [_identify_doc(r.path) for r in rows]
    found = [_hits(d) for d in docs]
    if len(rows) < 2 or not any(docs) or args.bootstrap == 0:
        return [], None
    if any(f is None for f in found) or len({f[0] for f in found}) > 1:
        why = (
            "not every run has per-probe ranks in its `verify/identify.json` (run "
            "`fvloss identify` again on those without)"
            if any(f is None for f in found)
            else "the runs were identified on different probes (another set, or skipped images)"
        )
        return ["", f"No rank-1 bootstrap: {why}."], None
    pooled = any(len(g.members) > 1 for g in groups)
    units = groups if pooled else [Group(r.label, [k], [None]) for k, r in enumerate(rows)]
    if len(units) < 2:  # the seeds of one configuration: nothing to compare
        return [], None
    hits = [np.stack([found[i][1] for i in g.members]) for g in units]
    labels = [g.label for g in units]
    boot = paired_bootstrap_hits(hits, n_boot=args.bootstrap, seed=args.seed)
    pct = f"{100 * boot.level:g}%"
    how = (
        "every pair, the higher observed rank-1 first"
        if len(units) <= MAX_ALL_PAIRS
        else f"each against the first, `{_md(labels[0])}` (more than {MAX_ALL_PAIRS})"
    )
    lines = [
        "",
        f"## Rank-1 differences (paired bootstrap over the probes, {boot.n_boot} resamples, "
        f"seed {boot.seed})",
        "",
        f"{hits[0].shape[1]} mated probes, the same in every run's `verify/identify.json`; each "
        "resample draws probes with replacement and scores every "
        + ("configuration (its seeds' hits averaged per probe)" if pooled else "run")
        + f" on them. Δ = A − B in rank-1 points; {pct} percentile interval. Comparisons: {how}.",
        "",
        f"| A − B | Δ rank-1 | {pct} CI | P(Δ* ≤ 0) | reading |",
        "|:--|--:|:--:|--:|:--|",
    ]
    lines += _diff_rows(boot, labels, lambda x: f"{100 * x:+.2f}")
    doc = {
        "n_boot": boot.n_boot, "seed": boot.seed, "level": boot.level,
        "n_probes": int(hits[0].shape[1]), "pooled_seeds": pooled,
        "rank1": dict(zip(labels, boot.observed.tolist())),
        "comparisons": _comparisons_doc(boot, labels),
    }  # fmt: skip
    return lines, doc


# ----------------------------------------------------------------------------- grid


def run_grid(args: argparse.Namespace, train_args: list[str]) -> list[Path] | int:
    """Train every ``--grid`` loss for every ``--seeds`` seed as a study with Optuna's grid
    sampler (:mod:`fvloss.study`: the one engine), stored in ``OUT/study.db``, each run in
    ``OUT/trials/<loss>-seed<seed>``: a finished run is kept, an interrupted one resumed from
    its checkpoint, ``fvloss study run`` workers elsewhere could share it. Returns the run
    folders (seed-major), or an exit code."""
    losses = [s.strip() for s in args.grid.split(",") if s.strip()]
    unknown = [x for x in losses if x not in LOSSES]
    if unknown:
        return fail(PROG, f"--grid: unknown losses {unknown}; known: {sorted(LOSSES)}", 2)
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        return fail(PROG, f"--seeds: integers separated by commas, got {args.seeds!r}", 2)
    if "--loss" in train_args or "--seed" in train_args or "--run-dir" in train_args:
        return fail(PROG, "--grid sets --loss, --seed and --run-dir of its runs itself", 2)
    if not seeds or len(set(seeds)) != len(seeds) or len(set(losses)) != len(losses):
        return fail(PROG, "--grid and --seeds: distinct values, at least one of each", 2)
    out = (args.out or Path("runs") / "grid").resolve()
    try:
        config, settings = parse_flags(train_args, prog="fvloss compare --grid")
    except SystemExit as e:
        return int(e.code or 2)
    scored = "pairs" in settings or (config and "pairs" in load_experiment(config))
    spec = StudySpec(
        path=None, name=out.name, out=str(out.parent), losses=tuple(losses), trials=None,
        epochs=None, base=Path(config) if config else None,
        metric="pairs_auc" if scored else "auc", sampler="grid", pruner="none",
        settings=settings, space={"": {"seed": ("grid", *seeds)}},
    )  # fmt: skip
    _log(f"grid: {len(losses)} loss(es) x {len(seeds)} seed(s) as a study in {out}")
    try:
        prepare(spec)
        run_worker(spec)
    except WorkerStopped as e:  # the running trial checkpointed: the same command continues
        _log(str(e))
        return 128 + e.signum
    except (OSError, ValueError) as e:
        return fail(PROG, str(e), 2)
    runs, failed = {}, []
    for loss in losses:
        for t in tuning_study(spec, loss).get_trials(deepcopy=False):
            d = Path(t.user_attrs.get("run_dir", "?"))
            if t.state.name == "COMPLETE":
                runs[(seeds.index(t.params["seed"]), losses.index(loss))] = d
            elif t.state.name == "FAIL" and "error" in t.user_attrs:
                failed.append(f"{d} ({t.user_attrs['error']})")
    if failed:
        _log(f"grid: {len(failed)} run(s) failed and are left out: {'; '.join(failed)}")
    return [runs[k] for k in sorted(runs)]


if __name__ == "__main__":
    sys.exit(main())
