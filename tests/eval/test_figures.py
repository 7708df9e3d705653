"""The figures a run folder and fvloss verify write: training curves, score histograms with the
threshold, the hardest pairs; matplotlib's object API only (no pyplot state)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_recipes import argv, cfp_from_synthetic, only_run_dir

from fvloss.eval.plots import score_histogram_figure, training_figure, worst_pairs_figure
from fvloss.eval.protocols import PairSet
from fvloss.recipes import arcface

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def faces(tmp_path_factory) -> Path:
    from fvloss.data.synthetic import SyntheticSpec, make_synthetic

    return make_synthetic(SyntheticSpec(6, 6, 32, 0), tmp_path_factory.mktemp("f"), quiet=True)


@pytest.mark.slow
def test_a_run_folder_has_its_curves_histograms_and_hardest_pairs(faces, tmp_path):
    cfp = cfp_from_synthetic(faces, tmp_path / "cfp")
    out = tmp_path / "runs"
    extra = ["--epochs", "2", "--lr", "1e-3", "--pairs", str(cfp), "--pairs-format", "cfp-fp",
             "--pairs-root", str(faces)]  # fmt: skip
    assert arcface.main(argv(faces, out, *extra)) == 0
    run = only_run_dir(out)
    for f in ("training.png", "verify/held-out.hist.png", "verify/held-out.worst.png",
              "verify/cfp-fp.hist.png",
              "verify/cfp-fp.worst.png", "verify/cfp-fp.png"):  # fmt: skip
        assert (run / f).read_bytes()[:8] == PNG, f
    assert (run / "verify" / "cfp-fp.scores.npz").is_file()  # what compare reuses

    # fvloss verify on the run folder draws the same three, plus the run's training curves
    from fvloss.cli import verify as verify_cli

    out = tmp_path / "verify-out"
    assert verify_cli.main(["--run", str(run), "--pairs", str(cfp), "--protocol", "cfp-ff",
                            "--root", str(faces), "--out", str(out)]) == 0  # fmt: skip
    for f in ("training.png", "cfp-ff.png", "cfp-ff.hist.png", "cfp-ff.worst.png"):
        assert (out / f).read_bytes()[:8] == PNG, f


def test_the_hardest_pairs_are_the_highest_different_and_lowest_same(tmp_path):
    import matplotlib.pyplot as plt

    paths = [tmp_path / f"p{i}.png" for i in range(6)]
    triples = [(paths[0], paths[1], True), (paths[2], paths[3], True),
               (paths[0], paths[4], False), (paths[3], paths[5], False)]  # fmt: skip
    pairs = PairSet.from_pairs(triples, source="made-up")
    scores = np.array([0.9, 0.1, 0.2, 0.8])
    before = plt.get_fignums()
    fig = worst_pairs_figure(pairs, scores, lambda i: np.zeros((4, 4, 3), np.uint8), k=1)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title().startswith("false")]
    assert titles == ["false accept 0.800\np3.png", "false reject 0.100\np2.png"]
    fig = worst_pairs_figure(pairs, scores, lambda i: np.zeros((4, 4, 3), np.uint8), k=2,
                             threshold=0.5)  # fmt: skip
    kinds = [ax.get_title().split("\n")[0] for ax in fig.axes if "\n" in ax.get_title()]
    # row by row: each rank's different pair, then its same pair; right-side ones are renamed
    assert kinds == ["false accept 0.800", "false reject 0.100",
                     "hardest different 0.200", "hardest same 0.900"]  # fmt: skip
    score_histogram_figure(scores, pairs.same, 0.5)
    training_figure(
        [{"epoch": 0, "train_loss": 2.0, "auc": 0.6}, {"epoch": 1, "train_loss": 1.5, "auc": 0.7}]
    )
    assert plt.get_fignums() == before  # no pyplot figure was opened by the library


@pytest.mark.parametrize("path", ["per-image", "preloaded", "streamed"])
def test_valid_images_are_the_validation_loaders_images_in_its_order(faces, path):
    """dls.valid_images (what the held-out hardest-pairs figure shows) names and reads image i
    of the validation loader, on each of face_dls's three paths."""
    from fvloss.data import face_dls
    from fvloss.imageio import read_rgb

    kw = {"preloaded": {"preload": "on"}, "streamed": {"stream": True}}.get(
        path, {"preload": "off"}
    )
    dls = face_dls(faces, img_size=32, bs=4, valid_pct=0.34, seed=1, num_workers=0, **kw)
    vocab = dls.train_identities + dls.valid_identities  # label k is identity vocab[k]
    labels = [vocab[int(y)] for _, ys in dls.valid for y in ys]
    images = dls.valid_images
    assert len(images) == len(labels) > 4
    assert [n.parent.name for n in images.names] == labels
    np.testing.assert_array_equal(images[3], read_rgb(images.names[3]))
