"""Embedding pairs with a model, the VerifyPairs fastai callback, and ``fvloss verify``."""

from __future__ import annotations

import json
import math
import types
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from fvloss.callbacks.verify import VerifyPairs
from fvloss.cli.verify import main
from fvloss.eval.metrics import verify_scores
from fvloss.eval.protocols import PairSet
from fvloss.eval.report import write_outputs
from fvloss.eval.score import embed_images, evaluate_pairs, score_pairs
from fvloss.imageio import ImageReadError

# Four identities, each a colour direction; images vary a little and are left-right asymmetric
# so that the mirror image embeds differently.
COLOURS = [(200, 40, 40), (40, 200, 40), (40, 40, 200), (200, 200, 40)]
PER_ID = 4


def transform(rgb: np.ndarray) -> torch.Tensor:
    """Module-level so that DataLoader workers can use it."""
    x = cv2.resize(rgb, (16, 16), interpolation=cv2.INTER_AREA)
    return torch.from_numpy(x).permute(2, 0, 1).float() / 255.0 - 0.5


def make_faces(root: Path) -> list[Path]:
    """PNG images ``root/id{k}_{i}.png``; returns them grouped by identity."""
    rng = np.random.default_rng(0)
    paths = []
    for k, colour in enumerate(COLOURS):
        for i in range(1, PER_ID + 1):
            img = np.empty((24, 20, 3), np.float64)
            img[:] = colour
            img += rng.normal(0, 12, img.shape)
            img[:, :6] *= np.linspace(0.3, 1.0, 24)[:, None, None]  # asymmetric
            path = root / f"id{k}_{i}.png"
            root.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(path), np.clip(img, 0, 255).astype(np.uint8)[..., ::-1])
            paths.append(path)
    return paths


def all_pairs(paths: list[Path]) -> PairSet:
    triples = []
    for a in range(len(paths)):
        for b in range(a + 1, len(paths)):
            triples.append((paths[a], paths[b], a // PER_ID == b // PER_ID))
    return PairSet.from_pairs(triples, source="made-up-pairs.txt")


class MeanColour(nn.Module):
    """Embeds an image as its mean colour plus a learnable offset (zero)."""

    def __init__(self):
        super().__init__()
        self.offset = nn.Parameter(torch.zeros(3))
        self.calls: list[tuple[int, bool, torch.device, torch.dtype]] = []

    def forward(self, x):
        self.calls.append((len(x), self.training, x.device, x.dtype))
        return x.mean(dim=(2, 3)) + 0.5 + self.offset


class TinyNet(nn.Module):
    """Logits in training mode, embeddings in eval mode (what fvloss models do)."""

    def __init__(self, dim: int = 8, n_classes: int = len(COLOURS)):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten()
        )
        self.embed = nn.Linear(32, dim)
        self.head = nn.Linear(dim, n_classes)

    def forward(self, x):
        e = self.embed(self.body(x))
        return self.head(e) if self.training else e


@pytest.fixture()
def faces(tmp_path) -> list[Path]:
    return make_faces(tmp_path / "faces")


# ----------------------------------------------------------------------------- embedding


def test_each_image_embedded_once_in_batches(faces):
    pairs = all_pairs(faces)  # 120 pairs over 16 images
    model = MeanColour()
    scores, kept = score_pairs(model, pairs, transform, batch_size=6)
    assert [c[0] for c in model.calls] == [6, 6, 4]
    assert all(not training for _, training, _, _ in model.calls)
    assert kept is pairs and scores.shape == (120,)


def test_embeddings_match_direct_forward_and_flip(faces):
    model = TinyNet().eval()
    x = torch.stack([transform(cv2.imread(str(p))[..., ::-1].copy()) for p in faces])
    with torch.no_grad():
        plain, mirrored = model(x).numpy(), model(x.flip(-1)).numpy()
    np.testing.assert_allclose(
        embed_images(model, faces, transform, batch_size=5), plain, atol=1e-5
    )
    flipped = embed_images(model, faces, transform, batch_size=5, flip=True)
    np.testing.assert_allclose(flipped, plain + mirrored, atol=1e-5)
    assert not np.allclose(plain, mirrored, atol=1e-3)  # the flip really changes something


def test_workers_give_the_same_embeddings(faces):
    model = TinyNet()
    a = embed_images(model, faces, transform, batch_size=4)
    b = embed_images(model, faces, transform, batch_size=4, num_workers=1)
    np.testing.assert_array_equal(a, b)


def test_mode_restored_and_inputs_follow_model(faces):
    model = MeanColour().double().train()
    embed_images(model, faces[:3], transform, device="cpu")
    assert model.training  # restored
    assert model.calls == [(3, False, torch.device("cpu"), torch.float64)]


def test_wrong_model_output_is_explained(faces):
    with pytest.raises(TypeError, match=r"embeddings \(B, D\); got \(3, 3, 16, 16\)"):
        embed_images(nn.Identity(), faces[:3], transform)


def test_unreadable_image_raises_or_is_counted(faces):
    faces[5].write_bytes(b"not an image")
    pairs = all_pairs(faces)
    with pytest.raises(ImageReadError, match=faces[5].name):
        score_pairs(MeanColour(), pairs, transform)
    scores, kept = score_pairs(MeanColour(), pairs, transform, skip_missing=True)
    n_with_5 = len(faces) - 1
    assert len(kept) == len(scores) == len(pairs) - n_with_5
    assert kept.n_skipped == n_with_5
    assert "made-up-pairs.txt, line" in kept.skipped[0] and faces[5].name in kept.skipped[0]
    r = evaluate_pairs(MeanColour(), pairs, transform, skip_missing=True)
    assert r.n_skipped == n_with_5 and r.n_pairs == len(kept)


def test_evaluate_pairs_end_to_end(faces):
    pairs = all_pairs(faces)
    r = evaluate_pairs(MeanColour(), pairs, transform, n_folds=4)
    assert r.n_pairs == 120 and r.n_same == 4 * 6
    assert r.auc == 1.0 and r.acc_mean == 1.0 and r.n_folds == 4
    # the same numbers as scoring by hand
    emb = embed_images(MeanColour(), pairs.paths, transform).astype(np.float64)
    e = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    s = (e[pairs.index[:, 0]] * e[pairs.index[:, 1]]).sum(1)
    assert r.threshold == pytest.approx(verify_scores(s, pairs.same, n_folds=4).threshold, abs=1e-9)


def test_image_cache_skips_decoding(faces, monkeypatch):
    pairs, cache = all_pairs(faces), {}
    a, _ = score_pairs(MeanColour(), pairs, transform, cache=cache)
    assert len(cache) == len(faces)
    monkeypatch.setattr("fvloss.eval.score.read_rgb", lambda p: pytest.fail("decoded again"))
    b, _ = score_pairs(MeanColour(), pairs, transform, cache=cache)
    np.testing.assert_array_equal(a, b)


def test_write_outputs(faces, tmp_path):
    r = evaluate_pairs(MeanColour(), all_pairs(faces), transform, n_folds=4)
    j, p = write_outputs(r, tmp_path / "out", "dev", meta={"flip": True})
    doc = json.loads(j.read_text())
    assert doc["meta"] == {"flip": True} and doc["auc"] == 1.0
    assert p.read_bytes()[:4] == b"\x89PNG"


# ----------------------------------------------------------------------------- callback


def make_learner(faces, metrics=()):
    from fastai.data.core import DataLoaders
    from fastai.data.load import DataLoader
    from fastai.learner import Learner

    items = [
        (transform(cv2.imread(str(p))[..., ::-1].copy()), torch.tensor(k // PER_ID))
        for k, p in enumerate(faces)
    ]
    torch.manual_seed(0)
    dls = DataLoaders(
        DataLoader(items, bs=4, shuffle=True), DataLoader(items[::3], bs=4), device="cpu"
    )
    return Learner(dls, TinyNet(), loss_func=nn.CrossEntropyLoss(), metrics=list(metrics))


def test_callback_puts_metrics_in_recorder(faces, capsys):
    from fastai.callback.tracker import TrackerCallback
    from fastai.metrics import accuracy

    pairs = all_pairs(faces)
    learn = make_learner(faces, metrics=[accuracy])
    cb = VerifyPairs(pairs, transform, every=2)
    tracker = TrackerCallback(monitor="auc")
    learn.fit(3, 1e-2, cbs=[cb, tracker])

    names = learn.recorder.metric_names
    assert names == [
        "epoch", "train_loss", "valid_loss", "accuracy", "auc", "acc", "tar@1e-3", "eer",
        "time",
    ]  # fmt: skip
    printed = capsys.readouterr().out
    assert "tar@1e-3" in printed  # the progress table shows the columns
    # numbers that cannot be computed (epoch 0 not scored; TAR@1e-3 on 96 different pairs)
    # print as n/a, not nan
    assert "n/a" in printed and "nan" not in printed
    values = [dict(zip(names[1:-1], v)) for v in learn.recorder.values]
    assert math.isnan(values[0]["auc"])  # every=2: epoch 0 not evaluated
    assert [e for e, _ in cb.history] == [1, 2]  # ... epoch 1, and always the last one
    for epoch, scalars in cb.history:
        assert values[epoch]["auc"] == scalars["auc"] and 0 <= scalars["auc"] <= 1
        assert values[epoch]["acc"] == scalars["acc"] and values[epoch]["eer"] == scalars["eer"]
        assert math.isnan(values[epoch]["tar@1e-3"])  # 96 different pairs cannot resolve it
    # the last epoch's numbers are those of evaluating the final model now
    again = cb.evaluate(learn.model)
    assert again.auc == cb.last.auc == cb.history[-1][1]["auc"]
    best = max(cb.history, key=lambda h: h[1]["auc"])
    assert (cb.best_epoch, cb.best) == (best[0], best[1]["auc"]) and cb.best_result is not None
    assert tracker.best == cb.best  # fastai trackers can monitor the columns
    # learn.metrics is back to what the user gave; the model is left in eval after validation
    assert [m.name for m in learn.metrics] == ["accuracy"]


def test_callback_only_evaluates_inside_fit(faces):
    import fastai.callback.schedule  # noqa: F401  (adds Learner.lr_find)

    learn = make_learner(faces)
    cb = VerifyPairs(all_pairs(faces), transform)
    learn.add_cb(cb)
    calls = []
    original = cb._scores
    cb._scores = lambda model, **kw: calls.append(1) or original(model, **kw)
    learn.fit(1, 1e-2)
    assert len(calls) == 1 and cb.best_epoch == 0
    out = learn.validate()
    assert len(calls) == 1 and all(math.isnan(v) for v in out[1:])  # validate(): no evaluation
    learn.get_preds()
    assert len(calls) == 1
    learn.lr_find(num_it=6, show_plot=False)  # cancels validation: nothing to evaluate
    assert len(calls) == 1
    assert len(learn.metrics) == 0
    with pytest.raises(ValueError, match="unknown columns"):
        VerifyPairs(all_pairs(faces), transform, columns=["auc", "tar@far=1e-2"])


def test_callback_survives_nan_embeddings(faces):
    learn = make_learner(faces)
    cb = VerifyPairs(all_pairs(faces), transform, prefix="dev_")
    with torch.no_grad():
        learn.model.embed.bias.fill_(math.nan)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        learn.fit(1, 0.0, cbs=cb)
    assert any("not finite" in str(w.message) for w in caught)
    assert "dev_auc" in learn.recorder.metric_names
    assert math.isnan(learn.recorder.values[-1][2]) and cb.best_epoch is None


# ----------------------------------------------------------------------------- CLI


@pytest.fixture()
def fake_runs(monkeypatch):
    """A stand-in for fvloss.runs.load_run, so the CLI is tested without a trained run."""
    loaded = []

    def load_run(run_dir, device=None):
        loaded.append((Path(run_dir), device))
        return types.SimpleNamespace(model=MeanColour(), eval_transform=transform, config={})

    monkeypatch.setattr("fvloss.eval.load.load_run", load_run)
    return loaded


def write_assignment_pairs(faces, path: Path) -> Path:
    lines = []
    for k in range(len(COLOURS)):
        lines.append(f"id{k} 1 2")
        lines.append(f"id{k} 3 id{(k + 1) % len(COLOURS)} 4")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_cli_writes_json_and_png(faces, tmp_path, fake_runs, capsys):
    run = tmp_path / "run1"
    run.mkdir()
    pairs = write_assignment_pairs(faces, tmp_path / "dev.txt")
    code = main(["--run", str(run), "--pairs", str(pairs), "--root", str(faces[0].parent)])
    assert code == 0
    assert fake_runs == [(run, None)]
    doc = json.loads((run / "verify" / "dev.json").read_text())
    assert doc["n_pairs"] == 8 and doc["auc"] == 1.0
    assert doc["meta"]["format"] == "assignment" and doc["meta"]["flip"] is False
    assert (run / "verify" / "dev.png").is_file()
    # the score histogram and the hardest pairs' images beside the ROC
    for fig in ("dev.hist.png", "dev.worst.png"):
        assert (run / "verify" / fig).read_bytes()[:4] == b"\x89PNG", fig
    out = capsys.readouterr().out
    assert "ROC AUC" in out and "1.0000" in out and "dev.json" in out


def test_cli_skip_missing_and_out(faces, tmp_path, fake_runs, capsys):
    run = tmp_path / "run1"
    run.mkdir()
    pairs = write_assignment_pairs(faces, tmp_path / "dev.txt")
    with pairs.open("a") as f:
        f.write("id0 1 9\nid0 1 id1\n")
    args = ["--run", str(run), "--pairs", str(pairs), "--root", str(faces[0].parent)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "dev.txt, line 9: image not found" in err
    code = main(
        [*args, "--skip-missing", "--flip", "--out", str(tmp_path / "o"), "--device", "cpu"]
    )
    assert code == 0 and fake_runs[-1] == (run, "cpu")
    doc = json.loads((tmp_path / "o" / "dev.json").read_text())
    assert doc["n_skipped"] == 2 and doc["n_pairs"] == 8 and doc["meta"]["flip"] is True
    assert "skipped: dev.txt, line 9" in capsys.readouterr().out


def test_cli_bad_input_needs_no_run_loader(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    assert main(["--run", str(run), "--pairs", str(tmp_path / "nope.txt")]) == 2
    assert "nope.txt" in capsys.readouterr().err
    assert main(["--run", str(tmp_path / "absent"), "--pairs", "x"]) == 2
    assert "run folder not found" in capsys.readouterr().err


def test_verify_cli_refuses_non_finite_embeddings(faces, tmp_path, monkeypatch, capsys):
    """A diverged model's NaN embeddings are reported, not scored."""

    class NaNNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(()))

        def forward(self, x):
            return x.mean(dim=(2, 3)) * math.nan + self.w

    def load_run(run_dir, device=None):
        return types.SimpleNamespace(model=NaNNet(), eval_transform=transform, config={})

    monkeypatch.setattr("fvloss.eval.load.load_run", load_run)
    pairs = write_assignment_pairs(faces, tmp_path / "pairs.txt")
    run = tmp_path / "run"
    run.mkdir()
    rc = main(["--run", str(run), "--pairs", str(pairs), "--root", str(faces[0].parent)])
    assert rc == 1
    assert "pair scores are not finite" in capsys.readouterr().err
