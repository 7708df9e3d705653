"""The per-epoch identification callback: columns in the history, its result equal to the
library's on the same model, the run's identify.json; and the shared base it stands on."""

from __future__ import annotations

import json

import pytest

from fvloss.callbacks.epoch_eval import EpochEvaluation
from fvloss.callbacks.identify import IdentifyEvery, identify_columns
from fvloss.data.transforms import EvalTransform
from fvloss.eval.idsets import from_folder


def test_columns_and_bad_settings(tiny_synthetic):
    s = from_folder(tiny_synthetic, 1)
    assert identify_columns(5, (0.1,)) == ["rank1", "rank5", "tpir@1e-1"]
    with pytest.raises(ValueError, match="unknown columns \\['rank3'\\]"):
        IdentifyEvery(s, EvalTransform(32, 0.5, 0.5), columns=["rank3"])
    with pytest.raises(ValueError, match="every must be >= 1"):
        EpochEvaluation(every=0)


@pytest.mark.slow
def test_a_run_with_val_identify_shows_id_columns_and_writes_identify_json(
    tiny_synthetic, tmp_path
):
    from fvloss.experiment import resolve
    from fvloss.train import run

    d = tmp_path / "run"
    flags = {"data": str(tiny_synthetic), "img_size": 32, "arch": "resnet18", "emb_dim": 16,
             "bs": 16, "val_pairs": 100, "workers": 0, "log": ["none"], "guard": False, "lr": 1e-3,
             "epochs": 2, "run_dir": str(d), "progress": False, "val_identify": str(tiny_synthetic),
             "val_identify_every": 2}  # fmt: skip
    cfg, source = resolve({"loss": "softmax"}, {}, flags)
    run(cfg, source)
    metrics = json.loads((d / "metrics.json").read_text())
    hist = metrics["history"]
    assert hist[0]["id_rank1"] is None  # epoch 0 not due (every 2): n/a
    assert 0 <= hist[1]["id_rank1"] <= hist[1]["id_rank5"] <= 1
    doc = json.loads((d / "verify" / "identify.json").read_text())
    assert doc["n_mated"] == 18 and doc["cmc"][0] == pytest.approx(hist[1]["id_rank1"])
    assert metrics["evals"]["identify"]["rank1"] == pytest.approx(doc["cmc"][0])
    # the callback's number is the library's on the saved model
    from fvloss.runs import load_run

    r = load_run(d, device="cpu")
    cb = IdentifyEvery(from_folder(tiny_synthetic, 1, seed=cfg.seed), r.eval_transform)
    assert cb.evaluate(r.model).cmc[0] == pytest.approx(doc["cmc"][0])
