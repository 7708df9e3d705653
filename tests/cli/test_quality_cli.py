"""``fvloss quality`` on the synthetic set with a small random-weight run: the curve equals the
library's on the same scores and norms; the degradation table; a quality file; bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from study_common import write_pairs
from test_identify_cli import run_dir  # noqa: F401 (a fixture)

from fvloss.cli.compare import main as compare_main
from fvloss.cli.quality import main as quality_main
from fvloss.eval.protocols import read_pairs
from fvloss.eval.quality import reject_curve_verification
from fvloss.eval.score import embed_images
from fvloss.runs import load_run


def test_quality_curve_table_and_figure(run_dir, tiny_synthetic, tmp_path, capsys):  # noqa: F811
    pairs_csv = write_pairs(tiny_synthetic, tmp_path / "pairs.csv", 6)
    out = tmp_path / "q"
    args = [str(run_dir), "--pairs", str(pairs_csv), "--root", str(tiny_synthetic), "--fmr", "0.2"]
    assert (
        quality_main([*args, "--degrade", "4", "--kinds", "blur", "noise", "--out", str(out)]) == 0
    )
    text = capsys.readouterr().out
    assert "rho blur" in text and "rej 10%" in text
    doc = json.loads((out / "quality.json").read_text())["models"][0]
    assert [d["kind"] for d in doc["degradation"]] == ["blur", "noise"]
    assert (out / "quality.png").stat().st_size > 0
    # the same curve from the library on embeddings computed directly
    pairs = read_pairs(pairs_csv, tiny_synthetic)
    run = load_run(run_dir, device="cpu")
    raw = embed_images(run.model, pairs.paths, run.eval_transform)
    n = np.linalg.norm(raw, axis=1)
    e = raw / n[:, None]
    a, b = pairs.index.T
    want = reject_curve_verification((e[a] * e[b]).sum(1), pairs.same, np.minimum(n[a], n[b]), 0.2)
    assert doc["reject"]["error"] == pytest.approx(want.error)

    # the degradation levels as built-in groups: AUC per level and the gap
    assert quality_main([*args, "--levels", "blur", "--out", str(out)]) == 0
    assert "by blur level (the second image degraded)" in capsys.readouterr().out
    levels = json.loads((out / "quality.json").read_text())["models"][0]["levels"]
    assert list(levels["values"]) == ["blur 0", "blur 1", "blur 2", "blur 3", "blur 4"]
    assert levels["values"]["blur 0"] == pytest.approx(doc["auc"])  # level 0: the clean pairs

    # a quality file instead of the norm; a path it lacks is named
    qf = tmp_path / "q.csv"
    rel = [p.relative_to(tiny_synthetic).as_posix() for p in pairs.paths]
    qf.write_text("path,score\n" + "".join(f"{r},{i}\n" for i, r in enumerate(rel)))
    assert quality_main([*args, "--quality-file", str(qf), "--out", str(out)]) == 0
    assert json.loads((out / "quality.json").read_text())["models"][0]["quality"] == "file"
    qf.write_text("".join(f"{r},{i}\n" for i, r in enumerate(rel[1:])))
    assert quality_main([*args, "--quality-file", str(qf), "--out", str(out)]) == 2
    assert f"no score for {rel[0]}" in capsys.readouterr().err
    assert (
        quality_main([str(run_dir), "--pairs", str(pairs_csv), "--root", str(tiny_synthetic)]) == 2
    )
    assert "cannot resolve FMR 0.01" in capsys.readouterr().err

    # compare overlays the error-vs-reject curves fvloss quality left beside each run's scores
    last = json.loads((run_dir / "verify" / "pairs.quality.json").read_text())
    assert last["quality"] == "file" and last["n_pairs"] == len(pairs)
    cmp = tmp_path / "cmp"
    args = ["--pairs", str(pairs_csv), "--root", str(tiny_synthetic), "--out", str(cmp)]
    assert compare_main([str(run_dir), *args, "--bootstrap", "0"]) == 0
    md = (cmp / "compare.md").read_text()
    assert "## Error versus reject (`fvloss quality`)" in md and "FNMR at FMR=0.2" in md
    assert f"| arcface | file | {last['reject']['error'][0]:.4f} | " in md
    assert (cmp / "reject.png").stat().st_size > 0
