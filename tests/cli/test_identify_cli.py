"""``fvloss identify`` end to end on the synthetic set, with a small random-weight run: the
command's numbers equal the library's on the same embeddings; open set, distractors from an
embedding store, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fvloss.cli.embed import main as embed_main
from fvloss.cli.identify import main as identify_main
from fvloss.data.synthetic import SyntheticSpec, make_synthetic
from fvloss.eval.identify import identify, probe_key
from fvloss.eval.idsets import from_folder
from fvloss.eval.score import embed_images
from fvloss.model import EmbeddingNet, FaceNet
from fvloss.runs import load_run

EMB = 16


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("identify") / "run"
    root.mkdir()
    torch.manual_seed(0)
    net = FaceNet(EmbeddingNet("resnet18", EMB), torch.nn.Linear(EMB, 3))
    torch.save(net.state_dict(), root / "model.pth")
    cfg = {"arch": "resnet18", "emb_dim": EMB, "img_size": 32, "mean": 0.5, "std": 0.5}
    cfg |= {"dropout": 0.0, "loss": "arcface"}
    (root / "config.json").write_text(json.dumps(cfg))
    return root


def test_identify_matches_the_library_and_writes_its_json(
    run_dir, tiny_synthetic, tmp_path, capsys
):
    out = tmp_path / "out"
    args = ["--run", str(run_dir), "--data", str(tiny_synthetic), "--max-rank", "5"]
    assert identify_main([*args, "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "gallery 6 images of 6 identities; 18 probes (18 mated, 0 non-mated)" in text
    assert "rank1=" in text and "rank5=" in text
    doc = json.loads((out / "identify.json").read_text())
    # the same numbers from the library on embeddings computed directly
    s = from_folder(tiny_synthetic, 1, 0.0, 0)
    run = load_run(run_dir, device="cpu")
    emb = embed_images(run.model, s.gallery + s.probes, run.eval_transform)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    want = identify(emb[:6], s.gallery_labels, emb[6:], s.probe_labels, max_rank=5)
    assert doc["cmc"] == pytest.approx(want.cmc, abs=1e-9)
    assert doc["n_mated"] == 18 and len(doc["cmc"]) == 5
    # each probe's rank, keyed by the probes, for compare's paired rank-1 bootstrap
    assert doc["probe_rank"] == [int(r) if np.isfinite(r) else None for r in want.probes.rank]
    assert doc["probe_key"] == probe_key(s.probes, s.probe_labels)

    # open set: half the identities not enrolled, their 12 images non-mated probes
    assert identify_main([*args, "--unenrolled", "0.5", "--fpir", "0.1", "--out", str(out)]) == 0
    doc = json.loads((out / "identify.json").read_text())
    assert (doc["n_mated"], doc["n_nonmated"]) == (9, 12)
    assert doc["tpir"]["0.1"] is not None and len(doc["curve"]["fpir"]) > 1


def test_distractors_from_an_embedding_store(run_dir, tiny_synthetic, tmp_path, capsys):
    others = make_synthetic(SyntheticSpec(5, 4, 32, 7), tmp_path / "others", quiet=True)
    store = tmp_path / "store"
    assert embed_main([str(others), "--model", str(run_dir), "--out", str(store)]) == 0
    args = ["--run", str(run_dir), "--data", str(tiny_synthetic), "--distractors", str(store)]
    assert identify_main([*args, "--sizes", "0", "5", "20", "--out", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "distractors   rank-1" in text
    scaling = json.loads((tmp_path / "identify.json").read_text())["scaling"]
    assert [p["distractors"] for p in scaling] == [0, 5, 20]
    r1 = [p["cmc"][0] for p in scaling]
    assert r1[0] >= r1[1] >= r1[2]  # more distractors never help
    assert identify_main([*args, "--sizes", "21"]) == 2
    assert "distractor sizes must lie in 0..20" in capsys.readouterr().err


def test_bad_input_one_line_and_exit_2(run_dir, tiny_synthetic, tmp_path, capsys):
    assert identify_main(["--run", str(run_dir), "--data", str(tmp_path / "absent")]) == 2
    assert "identity folder not found" in capsys.readouterr().err
    wide = tmp_path / "wide"
    wide.mkdir()
    np.save(wide / "embeddings.npy", np.ones((3, EMB + 1), np.float32))
    (wide / "paths.txt").write_text("a\nb\nc\n")
    (wide / "meta.json").write_text("{}")
    args = ["--run", str(run_dir), "--data", str(tiny_synthetic), "--distractors", str(wide)]
    assert identify_main(args) == 2
    assert "distractors are 17-d but probes are 16-d" in capsys.readouterr().err


def test_ijb_1n_from_its_meta_files(run_dir, tmp_path, capsys):
    from test_ijb import noise_images

    from fvloss.align.warp import ARCFACE_TEMPLATE
    from fvloss.eval.ijb import write_ijb_layout
    from fvloss.eval.ijb_1n import write_1n_lists

    lm = ARCFACE_TEMPLATE * (48 / 112)
    items = [(p, t, t, lm, 0.9) for p, t in zip(noise_images(tmp_path / "src", 4), (1, 2, 3, 4))]
    root = write_ijb_layout(tmp_path / "IJBC", items, [])
    write_1n_lists(root, "IJBC", {"G1": {1: 10}, "G2": {2: 20}, "probe": {3: 10, 4: 20}})
    args = ["--run", str(run_dir), "--ijb", str(root), "--max-rank", "2", "--out", str(tmp_path)]
    assert identify_main([*args, "--ijb-gallery", "both"]) == 0
    assert (
        "IJBC 1:N, gallery both: G1+G2 2, dropped_G1+G2 0, probe 2, dropped_probe 0"
        in capsys.readouterr().out
    )
    doc = json.loads((tmp_path / "identify.json").read_text())
    assert (doc["n_gallery"], doc["n_mated"], doc["n_nonmated"]) == (2, 2, 0)
    assert doc["cmc"][-1] == 1.0  # two identities: everyone within rank 2
    both = doc["probe_key"]
    assert identify_main(args) == 0  # G1: the probe of subject 20 is non-mated
    doc = json.loads((tmp_path / "identify.json").read_text())
    assert (doc["n_mated"], doc["n_nonmated"]) == (1, 1)
    assert doc["probe_mated"] == [True, False] and doc["probe_key"] != both  # not paired


def test_rank1_per_group_from_an_attribute_file(run_dir, tiny_synthetic, tmp_path, capsys):
    ids = sorted(d.name for d in tiny_synthetic.iterdir() if d.is_dir())
    groups = tmp_path / "groups.csv"
    groups.write_text(
        "".join(f"{name},{'even' if i % 2 == 0 else 'odd'}\n" for i, name in enumerate(ids))
    )
    args = ["--run", str(run_dir), "--data", str(tiny_synthetic), "--groups", str(groups)]
    assert identify_main([*args, "--out", str(tmp_path)]) == 0
    assert "gap (" in capsys.readouterr().out
    doc = json.loads((tmp_path / "identify.json").read_text())
    g = doc["groups"]
    assert g["metric"] == "rank1" and g["counts"] == {"even": 9, "odd": 9}
    assert np.mean(list(g["values"].values())) == pytest.approx(doc["cmc"][0])  # equal-sized groups
