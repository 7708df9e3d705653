"""The modules verification lived in before ``fvloss.eval`` keep their names and commands."""

from __future__ import annotations

import subprocess
import sys


def test_old_module_names_still_import():
    from fvloss import evaluate, pairs, verify
    from fvloss.eval import callback, compare, embed, metrics, protocols, report
    from fvloss.recipes import compare as old_compare

    assert verify.verify_scores is metrics.verify_scores
    assert verify.plot_roc.__module__ == "fvloss.eval.plots"
    assert pairs.read_pairs is protocols.read_pairs and pairs.PairSet is protocols.PairSet
    assert evaluate.VerifyPairs is callback.VerifyPairs
    assert evaluate.score_pairs is embed.score_pairs
    assert evaluate.write_outputs is report.write_outputs
    assert old_compare.main is compare.main
    assert old_compare.paired_bootstrap.__module__ == "fvloss.eval.bootstrap"


def test_old_compare_module_runs_as_a_script():
    out = subprocess.run(
        [sys.executable, "-m", "fvloss.recipes.compare", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0 and "fvloss compare" in out.stdout
