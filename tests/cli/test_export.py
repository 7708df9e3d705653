"""ONNX export of a run's embedder (fvloss.export) and the ONNX embedder (fvloss.eval.onnx)."""

from __future__ import annotations

import json
import sys
import warnings

import numpy as np
import pytest
import torch

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from fvloss.cli.export import main  # noqa: E402
from fvloss.eval.embedder import Preprocess, TorchEmbedder  # noqa: E402
from fvloss.eval.load import as_embedder  # noqa: E402
from fvloss.eval.onnx import OnnxEmbedder  # noqa: E402
from fvloss.export import check_onnx, export_onnx  # noqa: E402
from fvloss.model import EmbeddingNet, FaceNet  # noqa: E402

SIZE, EMB, MEAN, STD = 32, 16, 0.4, 0.25  # mean / std off insightface's 0.5: metadata must win


def _make_run(root, seed=0):
    torch.manual_seed(seed)
    emb = EmbeddingNet("resnet18", EMB)
    # BN statistics away from (0, 1): an export in training mode (batch statistics) would differ
    for m in emb.modules():
        if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    root.mkdir(parents=True)
    torch.save(FaceNet(emb, torch.nn.Linear(EMB, 3)).state_dict(), root / "model.pth")
    cfg = {"arch": "resnet18", "emb_dim": EMB, "img_size": SIZE, "mean": MEAN, "std": STD}
    cfg |= {"dropout": 0.0, "loss": "arcface"}
    (root / "config.json").write_text(json.dumps(cfg))
    return root


@pytest.fixture(scope="module")
def tmp(tmp_path_factory):
    return tmp_path_factory.mktemp("export")


@pytest.fixture(scope="module")
def run(tmp):
    from fvloss.runs import load_run

    return load_run(_make_run(tmp / "run"), device="cpu")


@pytest.fixture(scope="module")
def onnx_path(run, tmp):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the export is warning-free
        return export_onnx(run, tmp / "model.onnx")


@pytest.fixture(scope="module")
def face():
    """A real RGB uint8 face image (the project's procedural faces), 64x64: resized to 32."""
    from fvloss.data.synthetic import _identity, render_face

    rng = np.random.default_rng(3)
    return render_face(_identity(rng), rng, size=64)


def _torch(run, x):
    with torch.no_grad():
        return run.model(x).numpy()


def _l2n(a):
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def test_export_graph_and_numerics(run, onnx_path):
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    (inp,), (out,) = sess.get_inputs(), sess.get_outputs()
    assert (inp.name, out.name) == ("input", "embedding")
    assert isinstance(inp.shape[0], str) and inp.shape[1:] == [3, SIZE, SIZE]
    assert isinstance(out.shape[0], str) and out.shape[1] == EMB
    assert onnx.load(str(onnx_path)).opset_import[0].version == 17
    g = torch.Generator().manual_seed(1)
    for b in (1, 3, 8):  # the dynamic batch axis
        x = torch.randn(b, 3, SIZE, SIZE, generator=g)
        got, ref = sess.run(None, {"input": x.numpy()})[0], _torch(run, x)
        assert got.shape == (b, EMB) and got.dtype == np.float32
        assert np.abs(_l2n(got) - _l2n(ref)).max() <= 1e-4
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)
    assert not run.model.training  # the run's model was not touched


def test_check_onnx(run, onnx_path):
    r = check_onnx(run, onnx_path, n=8)
    assert r["ok"] and r["batch_sizes"] == [1, 3, 8] and r["fixed_batch"] is None
    assert r["max_abs_diff_l2"] <= 1e-4 and r["max_abs_diff"] <= 1e-4
    assert r["max_abs"] > 0.05  # the comparison is of non-trivial embeddings


def test_metadata_round_trip(onnx_path):
    meta = {p.key: json.loads(p.value) for p in onnx.load(str(onnx_path)).metadata_props}
    assert meta["img_size"] == SIZE and meta["mean"] == MEAN and meta["std"] == STD
    assert meta["channels"] == "rgb" and meta["arch"] == "resnet18" and meta["emb_dim"] == EMB
    assert meta["loss"] == "arcface" and meta["fvloss_version"]
    e = OnnxEmbedder(onnx_path)
    t = e.transform
    assert isinstance(t, Preprocess) and t.size == (SIZE, SIZE) and t.channels == "rgb"
    np.testing.assert_allclose(t.mean, MEAN)
    np.testing.assert_allclose(t.std, STD)
    assert e.name == "model" and e.metadata["arch"] == "resnet18"
    # explicit arguments win over the metadata
    t2 = OnnxEmbedder(onnx_path, mean=0.5, std=[0.1, 0.2, 0.3], channels="bgr", name="x")
    np.testing.assert_allclose(t2.transform.mean, 0.5)
    np.testing.assert_allclose(t2.transform.std, [0.1, 0.2, 0.3])
    assert t2.transform.channels == "bgr" and t2.name == "x"
    with pytest.raises(ValueError, match="fixed at 32x32"):
        OnnxEmbedder(onnx_path, size=112)


def test_preprocess_matches_eval_transform(run, onnx_path, face):
    ours = OnnxEmbedder(onnx_path).transform(face)
    theirs = run.eval_transform(face)
    assert ours.shape == theirs.shape == (3, SIZE, SIZE) and ours.dtype == torch.float32
    assert (ours - theirs).abs().max() < 1e-5
    e = OnnxEmbedder(onnx_path)
    got = e.embed_batch(ours[None]).numpy()
    np.testing.assert_allclose(got, _torch(run, theirs[None]), rtol=1e-4, atol=1e-4)


def test_explicit_bgr_preprocessing_matches_torch(run, onnx_path, face):
    import albumentations as A

    mean, std = [0.3, 0.45, 0.6], [0.2, 0.25, 0.3]
    e = OnnxEmbedder(onnx_path, size=SIZE, mean=mean, std=std, channels="bgr")
    pipe = A.Compose([A.Resize(SIZE, SIZE), A.Normalize(mean=mean, std=std, max_pixel_value=255)])

    def ref_transform(img):  # an independent BGR pipeline: swap, resize, normalise
        x = pipe(image=np.ascontiguousarray(img[..., ::-1]))["image"]
        return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))

    ref = TorchEmbedder(run.model, ref_transform)
    assert (e.transform(face) - ref_transform(face)).abs().max() < 1e-5
    with ref.running(), e.running():
        a = e.embed_batch(e.transform(face)[None]).numpy()
        b = ref.embed_batch(ref.transform(face)[None]).numpy()
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    rgb = OnnxEmbedder(onnx_path, mean=mean, std=std, channels="rgb")
    c = rgb.embed_batch(rgb.transform(face)[None]).numpy()
    assert np.abs(c - b).max() > 1e-3  # the channel order matters: the test can tell


def test_fixed_batch_of_one(run, tmp):
    path = export_onnx(run, tmp / "fixed.onnx", dynamic_batch=False)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert sess.get_inputs()[0].shape == [1, 3, SIZE, SIZE]
    e = OnnxEmbedder(path)
    assert e.fixed_batch == 1
    x = torch.randn(5, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    got = e.embed_batch(x)
    assert got.shape == (5, EMB) and got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), _torch(run, x), rtol=1e-4, atol=1e-4)
    assert check_onnx(run, path)["ok"]


@pytest.mark.slow
def test_opset18_and_facenet_in_training_mode(run, tmp):
    """opset >= 18 takes torch's torch.export-based exporter; a FaceNet exports its embedder
    in eval mode and keeps its own mode."""
    pytest.importorskip("onnxscript", reason="opset >= 18 export needs onnxscript")
    net = FaceNet(run.model, torch.nn.Linear(EMB, 3)).train()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            path = export_onnx(net, tmp / "op18.onnx", img_size=SIZE, opset=18)
        assert net.training and net.embedder.training
    finally:
        run.model.eval()  # the module-scoped run is shared with the other tests
    assert onnx.load(str(path)).opset_import[0].version == 18
    e = OnnxEmbedder(path)
    assert e.transform.size == (SIZE, SIZE)
    x = torch.randn(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(4))
    np.testing.assert_allclose(e.embed_batch(x).numpy(), _torch(run, x), rtol=1e-4, atol=1e-4)


def test_main_exit_codes(run, tmp, capsys, monkeypatch):
    out = tmp / "cli" / "m.onnx"
    assert main([str(tmp / "missing"), "--onnx", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "missing" in err and "Traceback" not in err
    (tmp / "noweights").mkdir()
    (tmp / "noweights" / "config.json").write_text((run.path / "config.json").read_text())
    assert main([str(tmp / "noweights"), "--onnx", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no weights" in err
    (tmp / "corrupt").mkdir()
    (tmp / "corrupt" / "config.json").write_text((run.path / "config.json").read_text())
    (tmp / "corrupt" / "model.pth").write_bytes(b"not a checkpoint")
    assert main([str(tmp / "corrupt"), "--onnx", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot load the run" in err
    assert main([str(run.path), "--onnx", str(out), "--opset", "99"]) == 2
    assert "out of range" in capsys.readouterr().err and not out.exists()
    assert main([str(run.path), "--onnx", str(tmp / "m.txt")]) == 2
    assert ".onnx" in capsys.readouterr().err

    assert main([str(run.path), "--onnx", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert out.is_file() and "L2-normalised" in stdout and ": ok" in stdout
    assert not [p for p in out.parent.iterdir() if p != out]  # no temporary left

    monkeypatch.setattr("fvloss.export.TOLERANCE", -1.0)  # every check now fails
    out2 = tmp / "cli" / "bad.onnx"
    assert main([str(run.path), "--onnx", str(out2), "--opset", "17"]) == 1
    assert "disagree" in capsys.readouterr().err and not out2.exists()
    assert main([str(run.path), "--onnx", str(out2), "--no-check"]) == 0
    assert out2.is_file()


def test_as_embedder_and_bad_files(onnx_path, tmp, monkeypatch):
    e = as_embedder(onnx_path, size=SIZE, channels="bgr")
    assert isinstance(e, OnnxEmbedder) and e.transform.channels == "bgr"
    bad = tmp / "bad.onnx"
    bad.write_bytes(b"this is not an onnx model\n" * 10)
    with pytest.raises(ValueError, match=r"bad\.onnx: not a loadable ONNX model"):
        OnnxEmbedder(bad)
    with pytest.raises(FileNotFoundError, match=r"nope\.onnx"):
        as_embedder(tmp / "nope.onnx")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if it were not installed
    with pytest.raises(ImportError, match="pip install onnxruntime"):
        OnnxEmbedder(onnx_path)


def test_output_shape_is_checked(tmp):
    conv = torch.nn.Conv2d(3, 4, 3)  # (B, 4, 6, 6): not embeddings
    path = export_onnx(conv, tmp / "conv.onnx", img_size=8)
    e = OnnxEmbedder(path)
    assert e.transform.size == (8, 8) and np.allclose(e.transform.mean, 0.5)  # insightface's
    with pytest.raises(RuntimeError, match=r"must be embeddings \(B, D\)"):
        e.embed_batch(torch.zeros(2, 3, 8, 8))
    with pytest.raises(ValueError, match="takes 8x8 images"):
        e.embed_batch(torch.zeros(2, 3, 16, 16))


# ----------------------------------------------------------------------------- CLIs with ONNX


@pytest.fixture(scope="module")
def faces_and_pairs(tmp):
    """8 procedural faces of 4 identities as PNGs, and a CSV of every pair among them."""
    import cv2

    from fvloss.data.synthetic import _identity, render_face

    rng = np.random.default_rng(0)
    root = tmp / "faces"
    rows = ["path1,path2,same"]
    names = []
    for k in range(4):
        ident = _identity(rng)
        for i in range(2):
            name = f"id{k}/img{i}.png"
            (root / f"id{k}").mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(root / name), render_face(ident, rng, size=48)[..., ::-1])
            names.append(name)
    for a in range(len(names)):
        for b in range(a + 1, len(names)):
            rows.append(f"{names[a]},{names[b]},{int(names[a][:3] == names[b][:3])}")
    (tmp / "pairs.csv").write_text("\n".join(rows) + "\n")
    return root, tmp / "pairs.csv"


@pytest.mark.slow
def test_verify_and_compare_take_an_onnx_model(run, onnx_path, faces_and_pairs, tmp, capsys):
    from fvloss.cli import compare
    from fvloss.cli.verify import main as verify_main

    root, csv = faces_and_pairs
    args = ["--pairs", str(csv), "--root", str(root)]
    assert verify_main(["--model", str(onnx_path), *args, "--out", str(tmp / "v-onnx")]) == 0
    assert verify_main(["--run", str(run.path), *args, "--out", str(tmp / "v-run")]) == 0
    a = json.loads((tmp / "v-onnx" / "pairs.json").read_text())
    b = json.loads((tmp / "v-run" / "pairs.json").read_text())
    assert a["n_pairs"] == b["n_pairs"] == 28
    assert abs(a["auc"] - b["auc"]) < 1e-9 and a["meta"]["model"] == str(onnx_path)
    # compare: the ONNX file stands beside the run; its scores are cached beside the file
    out = tmp / "cmp"
    cmd = [str(run.path), str(onnx_path), *args, "--out", str(out), "--bootstrap", "50"]
    assert compare.main(cmd) == 0
    doc = json.loads((out / "compare.json").read_text())
    assert [r["run"] for r in doc["runs"]] == [str(run.path), str(onnx_path)]
    assert abs(doc["runs"][0]["auc"] - doc["runs"][1]["auc"]) < 1e-9
    assert (tmp / "model-verify" / "pairs.scores.npz").is_file()
    # ONNX preprocessing options are refused for a run, with one line and exit 2
    capsys.readouterr()
    assert verify_main(["--run", str(run.path), *args, "--input-size", "112"]) == 2
    assert "ONNX models only" in capsys.readouterr().err


def test_embed_cli_writes_paths_and_normalised_embeddings(onnx_path, run, faces_and_pairs, tmp):
    from fvloss.cli.embed import main as embed_main
    from fvloss.eval.store import open_store

    root, _ = faces_and_pairs
    (root / "id0" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    assert embed_main([str(root), "--model", str(onnx_path), "--out", str(tmp / "e.npz")]) == 1
    out = tmp / "e.npz"
    assert embed_main([str(root), "--model", str(onnx_path), "--out", str(out), "--skip-bad"]) == 0
    z = np.load(out)
    assert len(z["paths"]) == 8 and z["embeddings"].shape == (8, EMB)
    assert "id0/broken.png" not in z["paths"].tolist() and len(z["skipped"]) == 1
    assert np.allclose(np.linalg.norm(z["embeddings"], axis=1), 1, atol=1e-5)
    # the same rows from the run itself, to ONNX precision
    run_out = tmp / "e-run.npz"
    assert (
        embed_main([str(root), "--model", str(run.path), "--out", str(run_out), "--skip-bad"]) == 0
    )
    zr = np.load(run_out)
    assert zr["paths"].tolist() == z["paths"].tolist()
    assert np.abs(zr["embeddings"] - z["embeddings"]).max() < 1e-4
    # a store folder: the same rows, memory-mapped, with the norms; a failed pass leaves none
    store_dir = tmp / "store"
    assert embed_main([str(root), "--model", str(run.path), "--out", str(store_dir)]) == 1
    assert not store_dir.exists() and not (tmp / "store.partial").exists()
    cmd = [str(root), "--model", str(run.path), "--out", str(store_dir), "--skip-bad"]
    assert embed_main(cmd) == 0
    store = open_store(store_dir)
    assert isinstance(store.embeddings, np.memmap) and store.paths == zr["paths"].tolist()
    assert np.abs(store.embeddings - zr["embeddings"]).max() < 1e-5
    assert store.norms.shape == (8,) and (store.norms > 0).all()
    assert store.skipped == ["id0/broken.png: " + zr["skipped"][0].split(": ", 1)[1]]
    (root / "id0" / "broken.png").unlink()
    assert embed_main([str(tmp / "absent"), "--model", str(run.path), "--out", str(out)]) == 2
