"""``fvloss import-weights``: an arcface_torch-layout file becomes a run folder that verify,
embed, export and compare take like a trained run's."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

# the arcface_torch layout built from fvloss's own modules (tests/test_insightface_weights.py)
from test_insightface_weights import ARCH, arcface_layout, randomize

from fvloss.cli import main as fvloss
from fvloss.cli.import_weights import main
from fvloss.model import EmbeddingNet
from fvloss.runs import load_run


@pytest.fixture(scope="module")
def net() -> EmbeddingNet:
    torch.manual_seed(0)
    return randomize(EmbeddingNet(ARCH, 512, img_size=112))


@pytest.fixture(scope="module")
def arc_file(net, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("insightface") / "backbone.pth"
    torch.save(arcface_layout(net), path)
    return path


@pytest.fixture(scope="module")
def run(arc_file, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "r18"
    assert main([f"insightface:{arc_file}", "--arch", ARCH, "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def faces(tiny_synthetic, tmp_path_factory) -> Path:
    """8 faces (4 identities x 2) of the tiny synthetic set: an iresnet18 at 112 px embeds one
    in about 0.1 s on one slow core."""
    root = tmp_path_factory.mktemp("faces")
    for d in sorted(p for p in tiny_synthetic.iterdir() if p.is_dir())[:4]:
        (root / d.name).mkdir()
        for img in sorted(d.glob("*.png"))[:2]:
            shutil.copy(img, root / d.name / img.name)
    return root


@pytest.fixture(scope="module")
def pairs(faces) -> Path:
    """A csv pair file over :func:`faces`: 4 same and 4 different pairs."""
    imgs = [sorted(d.glob("*.png")) for d in sorted(faces.iterdir())]
    rows = [(imgs[i][0], imgs[i][1], 1) for i in range(4)]
    rows += [(imgs[i][0], imgs[(i + 1) % 4][1], 0) for i in range(4)]
    path = faces.parent / "pairs.csv"
    path.write_text(
        "".join(f"{a.relative_to(faces)},{b.relative_to(faces)},{s}\n" for a, b, s in rows)
    )
    return path


def test_run_folder_contents(run, arc_file, net, capsys):
    names = {"config.json", "model.pth", "metrics.json", "import.json"}
    assert names <= {p.name for p in run.iterdir()} <= names | {"verify"}  # verify's outputs
    cfg = json.loads((run / "config.json").read_text())
    assert (cfg["arch"], cfg["emb_dim"], cfg["img_size"], cfg["mean"], cfg["std"]) == (
        ARCH, 512, 112, 0.5, 0.5,
    )  # fmt: skip
    assert (
        cfg["data"] == f"insightface:{arc_file.resolve()}"
        and cfg["name"] == "insightface-iresnet18"
    )
    record = json.loads((run / "import.json").read_text())
    assert record["tensors"] == len(net.state_dict()) and len(record["sha256"]) == 64
    weights = torch.load(run / "model.pth", weights_only=True)
    assert all(k.startswith("embedder.") for k in weights)
    # the run loads as a trained run does, and embeds as the fvloss network it came from
    loaded = load_run(run, device="cpu")
    assert loaded.metrics["epochs"] == 0 and loaded.metrics["history"] == []
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), net(x), rtol=0, atol=1e-5)


def test_verify_and_compare_on_the_run(run, pairs, faces, capsys):
    common = ["--root", str(faces), "--folds", "2", "--device", "cpu"]
    assert fvloss(["verify", "--run", str(run), "--pairs", str(pairs), *common]) == 0
    result = json.loads((run / "verify" / "pairs.json").read_text())
    assert result["n_pairs"] == 8 and result["n_skipped"] == 0
    # compare reuses the scores verify left in RUN/verify, and labels the run by its name
    out = run.parent / "compare"
    assert fvloss(["compare", str(run), "--pairs", str(pairs), "--out", str(out), *common]) == 0
    assert "insightface-iresnet18" in (out / "compare.md").read_text()
    assert "cached" in capsys.readouterr().err


def test_embed_on_the_run(run, faces, tmp_path, capsys):
    npz = tmp_path / "emb.npz"
    assert (
        fvloss(["embed", "--model", str(run), str(faces), "--out", str(npz), "--device", "cpu"])
        == 0
    )
    with np.load(npz) as z:
        assert z["embeddings"].shape == (8, 512) and np.isfinite(z["embeddings"]).all()


@pytest.mark.slow
def test_export_on_the_run(run, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    onnx = tmp_path / "r18.onnx"
    assert fvloss(["export", str(run), "--onnx", str(onnx)]) == 0
    assert onnx.stat().st_size > 40e6 and "check:" in capsys.readouterr().out


def test_bad_input(arc_file, run, tmp_path, capsys):
    def err(*argv: str) -> str:
        assert main(list(argv)) == 2
        return capsys.readouterr().err

    assert "unknown source; known: insightface:PATH" in err(
        f"timm:{arc_file}", "--arch", ARCH, "--out", str(tmp_path / "a")
    )
    assert "unknown source" in err(str(arc_file), "--arch", ARCH, "--out", str(tmp_path / "a"))
    assert f"{run}: exists and is not an empty folder" in err(
        f"insightface:{arc_file}", "--arch", ARCH, "--out", str(run)
    )
    msg = err(f"insightface:{arc_file}", "--arch", "iresnet34", "--out", str(tmp_path / "b"))
    assert "missing key 'layer1.2.bn1.weight'" in msg and "looks like iresnet18" in msg
    assert "scale=2" in err(
        f"insightface:{arc_file}", "--arch", "mobilefacenet", "--out", str(tmp_path / "c")
    )
    assert "no such file" in err(
        "insightface:nope.pth", "--arch", ARCH, "--out", str(tmp_path / "d")
    )
    assert not any((tmp_path / n).exists() for n in "abcd")  # nothing written on a refusal


def test_writes_into_an_empty_folder(arc_file, tmp_path, capsys):
    out = tmp_path / "empty"
    out.mkdir()
    assert (
        main([f"insightface:{arc_file}", "--arch", ARCH, "--out", str(out), "--name", "r18"]) == 0
    )
    assert json.loads((out / "config.json").read_text())["name"] == "r18"
    assert [p.name for p in tmp_path.iterdir()] == ["empty"]  # no temporary folder left
