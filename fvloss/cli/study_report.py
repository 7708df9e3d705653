"""``fvloss study report STUDY.toml``: the finals on every test protocol, side by side.

For each test protocol, ``fvloss compare`` puts the finals' runs side by side (it scores any run
not yet scored, and writes its tables and the pooled ROC curves in
``STUDY/report/compare-<protocol>/``); this module then pools each configuration's seeds (a
loss's best settings, and its defaults) and runs one paired bootstrap over exactly the questions
a study asks: is each loss's tuned setting better than its defaults, and which tuned losses are
better than which. A ranking is stated only where an interval excludes 0.

``report.md`` also holds the chosen settings, each loss's tuning history and parameter
importances (Optuna's matplotlib plots) and the wall and machine time per loss.
"""

from __future__ import annotations

import itertools
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..eval.bootstrap import BootstrapResult, paired_bootstrap, paired_bootstrap_hits
from ..eval.groups import mean_std, pool_scores
from ..eval.metrics import roc_auc
from ..eval.protocols import read_pairs
from ..eval.report import load_scores, pairs_digest
from ..jsonio import write_json
from ..study import finals_study, tuning_study
from ..study.spec import Protocol, StudySpec
from .compare import identification_summary, probe_hits
from .compare import main as compare_main
from .verify import default_out_dir

__all__ = ["write_report"]

KINDS = ("default", "tuned")


@dataclass
class _Config:
    """One loss's finals of one kind (tuned or default), over seeds."""

    loss: str
    kind: str
    runs: list[Path] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.loss}-{self.kind}"


def _finals(spec: StudySpec) -> list[_Config]:
    out = []
    for loss in spec.losses:
        by_kind: dict[str, _Config] = {}
        done = [t for t in finals_study(spec, loss).get_trials(deepcopy=False)
                if t.state.name == "COMPLETE"]  # fmt: skip
        for t in sorted(done, key=lambda t: t.user_attrs["seed"]):
            kind = t.user_attrs["kind"]
            c = by_kind.setdefault(kind, _Config(loss, kind, params=t.user_attrs["params"]))
            c.runs.append(Path(t.user_attrs["run_dir"]))
            c.seeds.append(t.user_attrs["seed"])
        out += [by_kind[k] for k in KINDS if k in by_kind]
    return out


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.2f} h" if seconds >= 360 else f"{seconds / 60:.1f} min"


def _durations(trials) -> tuple[float, float | None, float | None]:
    """Machine seconds (sum of trial durations), first start, last end."""
    spans = [(t.datetime_start.timestamp(), t.datetime_complete.timestamp())
             for t in trials if t.datetime_start and t.datetime_complete]  # fmt: skip
    if not spans:
        return 0.0, None, None
    return sum(b - a for a, b in spans), min(a for a, _ in spans), max(b for _, b in spans)


def _time_lines(spec: StudySpec) -> list[str]:
    lines = ["## Machine time", "",
             "Machine time is the sum of the trials' durations (each on one worker); wall time "
             "runs from the first trial's start to the last one's end.", "",
             "| loss | tuning trials | tuning machine time | finals | finals machine time |",
             "|:--|--:|--:|--:|--:|"]  # fmt: skip
    starts, ends, total = [], [], 0.0
    for loss in spec.losses:
        tune = tuning_study(spec, loss).get_trials(deepcopy=False)
        fin = finals_study(spec, loss).get_trials(deepcopy=False) if spec.final_seeds else []
        (ts, a1, b1), (fs, a2, b2) = _durations(tune), _durations(fin)
        starts += [x for x in (a1, a2) if x]
        ends += [x for x in (b1, b2) if x]
        total += ts + fs
        lines.append(f"| {loss} | {len(tune)} | {_hours(ts)} | {len(fin)} | {_hours(fs)} |")
    if starts:
        lines += ["", f"All: {_hours(total)} of machine time in {_hours(max(ends) - min(starts))} "
                      "of wall time."]  # fmt: skip
    return lines


def _settings_lines(spec: StudySpec, configs: list[_Config]) -> list[str]:
    lines = ["## Chosen settings", "",
             f"Each loss's best tuning trial ({spec.metric} on "
             f"{spec.tune.name if spec.tune else 'held-out identities'}), its settings and its "
             "score; the finals rerun these settings over the seeds.", "",
             f"| loss | best {spec.metric} | trial | settings |", "|:--|--:|--:|:--|"]  # fmt: skip
    for loss in spec.losses:
        trials = tuning_study(spec, loss).get_trials(deepcopy=False)
        done = [t for t in trials if t.state.name == "COMPLETE"]
        best = max(done, key=lambda t: t.value, default=None)
        shown = ", ".join(f"{k} = {v:.4g}" if isinstance(v, float) else f"{k} = {v}"
                          for k, v in (best.params.items() if best else []))  # fmt: skip
        lines.append(f"| {loss} | {f'{best.value:.4f}' if best else '-'} | "
                     f"{best.number if best else '-'} | {shown or 'defaults'} |")  # fmt: skip
    return lines


def _figures(spec: StudySpec, out: Path) -> list[str]:
    """Optuna's tuning history and parameter importances per loss; a figure that cannot be
    drawn (too few finished trials) is named with the reason."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.exceptions import ExperimentalWarning
    from optuna.visualization import matplotlib as ovm

    lines = ["## Tuning history and parameter importances", ""]
    for loss in spec.losses:
        study = tuning_study(spec, loss)
        for what, draw in (("history", ovm.plot_optimization_history),
                           ("importances", ovm.plot_param_importances)):  # fmt: skip
            name = f"{loss}-{what}.png"
            try:
                with warnings.catch_warnings():  # "experimental" since Optuna 2.2: known
                    warnings.simplefilter("ignore", ExperimentalWarning)
                    ax = draw(study)
                fig = (ax[0] if isinstance(ax, np.ndarray) else ax).get_figure()
                fig.savefig(out / name, dpi=90, bbox_inches="tight")
                plt.close(fig)
                lines.append(f"- {loss} {what}: `{name}`")
            except (ValueError, RuntimeError, ZeroDivisionError) as e:
                lines.append(f"- {loss} {what}: not drawn ({e})")
    return lines


def _pm(v: tuple) -> str:
    mean, std, _ = v
    if mean is None:
        return "n/a"
    return f"{mean:.4f} ± {std:.4f}" if std is not None else f"{mean:.4f}"


def _protocol_lines(
    spec: StudySpec, t: Protocol, configs: list[_Config], out: Path, n_boot: int
) -> tuple[list[str], dict[str, Any]]:
    """One test protocol: fvloss compare over every final, then the study's own comparisons."""
    runs = [r for c in configs for r in c.runs]
    labels = [f"{c.label}-seed{s}" for c in configs for s in c.seeds]
    where = out / f"compare-{t.name}"
    code = compare_main([*map(str, runs), *t.argv(), "--out", str(where),
                         "--labels", ",".join(labels), "--bootstrap", "0"])  # fmt: skip
    if code:
        raise ValueError(f"fvloss compare on the test protocol {t.name!r} failed (exit {code})")
    pairs = read_pairs(Path(t.pairs), Path(t.root) if t.root else None, t.protocol, False)
    digest = pairs_digest(pairs)
    per: dict[str, list[np.ndarray]] = {}
    aucs: dict[str, list[float]] = {}
    same = None
    for c in configs:
        for run in c.runs:
            scores, why = load_scores(default_out_dir(run) / f"{pairs.name}.scores.npz", digest)
            if scores is None:
                raise ValueError(f"{run}: no scores on {t.name} ({why})")
            per.setdefault(c.label, []).append(scores.scores)
            same = scores.same
            aucs.setdefault(c.label, []).append(float(roc_auc(scores.scores, scores.same)))
    n = min(len(v) for v in per.values())
    names = [c.label for c in configs]
    pooled = [pool_scores(per[k], same, n)[0] for k in names]
    same_n = np.tile(same, n)
    comps = _comparisons(spec, names)
    boot = paired_bootstrap(pooled, same_n, comps, n_boot=n_boot) if comps and n_boot else None
    pct = f"{100 * boot.level:g}%" if boot else "95%"
    lines = [f"## {t.name}", "",
             f"`{t.pairs}` ({t.protocol}), {len(same)} pairs; mean ± sample std of the AUC over "
             f"the final seeds; pooled: the first {n} seed(s) of each configuration pooled pair "
             f"by pair. Full tables and the pooled ROC curves: `{where.name}/compare.md`, "
             f"`{where.name}/roc_seeds.png`.", "",
             "| loss | default AUC | tuned AUC | tuned − default (pooled) | " + pct + " CI |",
             "|:--|--:|--:|--:|:--:|"]  # fmt: skip
    doc: dict[str, Any] = {"protocol": t.name, "pairs": t.pairs, "n_pairs": len(same),
                           "configs": {}, "comparisons": []}  # fmt: skip
    for k, name in enumerate(names):
        doc["configs"][name] = {"aucs": aucs[name], "mean_std": mean_std(aucs[name])[:2],
                                "pooled_auc": float(boot.observed[k]) if boot else None}  # fmt: skip
    diffs = {(d.a, d.b): d for d in (boot.diffs if boot else [])}
    for loss in spec.losses:
        d_, t_ = f"{loss}-default", f"{loss}-tuned"
        d = diffs.get((names.index(t_), names.index(d_))) if t_ in names and d_ in names else None
        lines.append(
            f"| {loss} | {_pm(mean_std(aucs.get(d_, [])))} | {_pm(mean_std(aucs.get(t_, [])))} | "
            + (f"{d.diff:+.4f} | [{d.ci_low:+.4f}, {d.ci_high:+.4f}] |" if d else "- | - |")
        )
    if boot:
        more, doc["comparisons"] = _ranking_lines(names, boot, "pooled AUC", lambda x: f"{x:.4f}")
        lines += ["", *more]
    return lines, doc


def _comparisons(spec: StudySpec, names: list[str]) -> list[tuple[int, int]]:
    """What the report bootstraps: each loss tuned vs its defaults, and every two tuned losses."""
    comps = []
    for loss in spec.losses:
        if f"{loss}-tuned" in names and f"{loss}-default" in names:
            comps.append((names.index(f"{loss}-tuned"), names.index(f"{loss}-default")))
    tuned = [i for i, k in enumerate(names) if k.endswith("-tuned")]
    return comps + list(itertools.combinations(tuned, 2))


def _ranking_lines(
    names: list[str], boot: BootstrapResult, what: str, fmt: Callable[[float], str]
) -> tuple[list[str], list[dict[str, Any]]]:
    """The tuned losses ordered by ``what``, and which of their differences the bootstrap
    separates (the interval excludes 0) and which it does not."""
    pct = f"{100 * boot.level:g}%"
    diffs = {(d.a, d.b): d for d in boot.diffs}
    order = sorted((i for i, k in enumerate(names) if k.endswith("-tuned")),
                   key=lambda i: -boot.observed[i])  # fmt: skip
    ranked, unclear, doc = [], [], []
    for i, j in itertools.combinations(order, 2):
        d = diffs.get((i, j)) or diffs.get((j, i))
        if d is None:
            continue
        a, b = names[d.a].removesuffix("-tuned"), names[d.b].removesuffix("-tuned")
        doc.append({"a": names[d.a], "b": names[d.b], "diff": d.diff,
                    "ci": [d.ci_low, d.ci_high], "verdict": d.verdict})  # fmt: skip
        if d.verdict:
            win, lose = (a, b) if d.verdict > 0 else (b, a)
            lo, hi = sorted((abs(d.ci_low), abs(d.ci_high)))
            ranked.append(f"{win} > {lose} ({fmt(abs(d.diff))}, {pct} CI [{fmt(lo)}, {fmt(hi)}])")
        else:
            unclear.append(f"{a} vs {b}")
    lines = [f"Tuned losses by {what}: "
             + ", ".join(f"{names[i].removesuffix('-tuned')} {fmt(boot.observed[i])}"
                         for i in order) + ".",
             f"Separated (paired bootstrap, {boot.n_boot} resamples): "
             + ("; ".join(ranked) if ranked else "none") + ".",
             "Not separated (the interval holds 0): "
             + (", ".join(unclear) if unclear else "none") + "."]  # fmt: skip
    return lines, doc


def _pct(values: list[float]) -> str:
    mean, std, _ = mean_std(values)
    if mean is None:
        return "n/a"
    return f"{100 * mean:.2f} ± {100 * std:.2f}" if std is not None else f"{100 * mean:.2f}"


def _identify_lines(
    spec: StudySpec, configs: list[_Config], n_boot: int
) -> tuple[list[str], dict[str, Any]]:
    """The ``[identify]`` protocol: rank-1 and TPIR@FPIR=1e-1 of each configuration over its
    seeds, from each final's ``verify/identify.json``; then the study's comparisons of rank-1
    (paired bootstrap over the probes) where every final holds per-probe ranks."""
    rows, per, sets = [], {}, set()
    doc: dict[str, Any] = {"configs": per, "comparisons": []}
    for c in configs:
        got = [identification_summary(r) for r in c.runs]
        sets |= {g.get("id_set") for g in got if g}
        r1 = [g["rank1"] for g in got if g.get("rank1") is not None]
        tp = [g["tpir"] for g in got if g.get("tpir") is not None]
        per[c.label] = {"rank1": r1, "tpir": tp, "runs_scored": sum(bool(g) for g in got)}
        rows.append(f"| {c.label} | {per[c.label]['runs_scored']}/{len(c.runs)} | "
                    f"{_pct(r1)} | {_pct(tp)} |")  # fmt: skip
    lines = ["## Identification", "",
             f"`fvloss identify {' '.join(spec.identify)}` on each final "
             f"({'; '.join(sorted(s for s in sets if s)) or 'not scored yet'}): mean ± sample std "
             "over the final seeds, in %.", "",
             "| configuration | finals scored | rank-1 % | TPIR@FPIR=1e-1 % |",
             "|:--|--:|--:|--:|", *rows]  # fmt: skip
    found = [[probe_hits(r) for r in c.runs] for c in configs]
    flat = [f for fs in found for f in fs]
    names = [c.label for c in configs]
    comps = _comparisons(spec, names)
    if not (comps and n_boot and flat):
        return lines, doc
    if None in flat or len({f[0] for f in flat}) > 1:
        return [*lines, "", "No rank-1 bootstrap: not every final holds per-probe ranks of the "
                "same probes (`fvloss identify` again on each final writes them)."], doc  # fmt: skip
    hits = [np.stack([f[1] for f in fs]) for fs in found]
    boot = paired_bootstrap_hits(hits, comps, n_boot=n_boot)
    pct = f"{100 * boot.level:g}%"
    per_loss = [
        f"{names[d.a].removesuffix('-tuned')} {100 * d.diff:+.2f} "
        f"[{100 * d.ci_low:+.2f}, {100 * d.ci_high:+.2f}]"
        for d in boot.diffs
        if names[d.b].endswith("-default")
    ]
    more, doc["comparisons"] = _ranking_lines(names, boot, "rank-1 %", lambda x: f"{100 * x:.2f}")
    lines += ["", f"Rank-1 over the {hits[0].shape[1]} mated probes, each configuration's seeds "
              "averaged probe by probe. Tuned − default, in points "
              f"({pct} CI): {'; '.join(per_loss) or '-'}.", *more]  # fmt: skip
    return lines, doc


def write_report(spec: StudySpec, bootstrap: int = 2000) -> Path:
    """``STUDY/report/report.md`` (and ``report.json``, figures); returns its path."""
    out = spec.folder / "report"
    out.mkdir(parents=True, exist_ok=True)
    configs = _finals(spec)
    budget = "its grid" if spec.sampler == "grid" else f"{spec.trials} trials"
    lines = [f"# Study {spec.name}", "",
             f"Losses: {', '.join(spec.losses)}. Each tuned with the same budget: {budget} of "
             f"{spec.epochs} epochs ({spec.sampler} sampler, {spec.pruner} pruner), maximising "
             f"{spec.metric} on {spec.tune.pairs if spec.tune else 'pairs of held-out identities'}. "
             f"Finals: seeds {', '.join(map(str, spec.final_seeds)) or '-'}"
             f"{', best settings and defaults' if spec.final_defaults else ', best settings'}; "
             f"test protocols, never seen in tuning: "
             f"{', '.join(t.name for t in spec.test) or '-'}.", ""]  # fmt: skip
    doc: dict[str, Any] = {"study": spec.name, "written": time.strftime("%Y-%m-%d %H:%M:%S"),
                           "protocols": []}  # fmt: skip
    if not configs:
        lines += ["No finals have finished yet: `fvloss study run` runs them after tuning.", ""]
    for t in spec.test if configs else ():
        more, d = _protocol_lines(spec, t, configs, out, bootstrap)
        lines += [*more, ""]
        doc["protocols"].append(d)
    if spec.identify and configs:
        more, doc["identify"] = _identify_lines(spec, configs, bootstrap)
        lines += [*more, ""]
    lines += [*_settings_lines(spec, configs), "", *_figures(spec, out), "", *_time_lines(spec)]
    lines += ["", f"Study file: `{spec.path}`; storage: `{spec.storage_url}`.", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    write_json(out / "report.json", _finite(doc))
    return path


def _finite(x: Any) -> Any:
    """JSON without NaN (a std of one value is None already)."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x
