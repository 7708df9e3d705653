"""Recipe smoke tests: a whole run on a tiny synthetic set on the CPU, its run folder, loading it
back, evaluating it on a pair file, and resuming it."""

from __future__ import annotations

import csv
import json
import math
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fvloss.cli import verify as verify_cli
from fvloss.data.synthetic import SyntheticSpec, make_synthetic
from fvloss.model import EmbeddingNet
from fvloss.recipes import arcface, center, softmax
from fvloss.runs import load_run

EMB = 16


@pytest.fixture(scope="module")
def syn(tmp_path_factory) -> Path:
    return make_synthetic(SyntheticSpec(8, 6, 32, 0), tmp_path_factory.mktemp("syn"), quiet=True)


def argv(data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--data", str(data), "--img-size", "32", "--arch", "resnet18", "--emb-dim", str(EMB),
        "--bs", "16", "--epochs", "1", "--lr-find-iters", "5", "--val-pairs", "100",
        "--progress", "false", "--workers", "0", "--out", str(out), *extra,
    ]  # fmt: skip


def only_run_dir(out: Path) -> Path:
    (run_dir,) = [p for p in out.iterdir() if p.is_dir()]
    return run_dir


def read_json(p: Path):
    return json.loads(p.read_text())


def check_run_folder(run_dir: Path, loss: str, lr_find: bool) -> dict:
    names = {p.name for p in run_dir.iterdir()}
    assert {"config.json", "metrics.json", "model.pth", "checkpoints", "data_report.json"} <= names
    assert ("lr_find.png" in names) == lr_find
    if lr_find:
        assert (run_dir / "lr_find.png").read_bytes()[:4] == b"\x89PNG"
    assert (run_dir / "checkpoints" / "last.pth").is_file()
    assert read_json(run_dir / "checkpoints" / "last.json")["epoch"] == 1
    cfg = read_json(run_dir / "config.json")
    assert (cfg["loss"], cfg["arch"], cfg["emb_dim"], cfg["img_size"]) == (
        loss,
        "resnet18",
        EMB,
        32,
    )
    metrics = read_json(run_dir / "metrics.json")
    assert metrics["loss"] == loss and metrics["epochs"] == 1
    assert metrics["lr"] == pytest.approx(cfg["lr"]) and cfg["lr"] > 0
    assert len(metrics["history"]) == 1 and metrics["history"][0]["epoch"] == 0
    final = metrics["final"]
    assert final == metrics["history"][-1]
    assert 0.0 <= final["auc"] <= 1.0 and math.isfinite(final["train_loss"])
    assert {"acc", "eer"} <= final.keys() and "valid_loss" not in final
    assert metrics["data_report"]["n_identities"] == 8
    return metrics


@pytest.fixture(scope="module")
def arcface_run(syn, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs")
    assert arcface.main(argv(syn, out)) == 0
    return only_run_dir(out)


@pytest.mark.slow
def test_arcface_recipe_with_lr_find(arcface_run):
    assert arcface_run.name.startswith("arcface-")
    check_run_folder(arcface_run, "arcface", lr_find=True)


@pytest.mark.parametrize(("recipe", "loss"), [(softmax, "softmax"), (center, "center")])
def test_recipe_with_fixed_lr(syn, tmp_path, recipe, loss):
    assert recipe.main(argv(syn, tmp_path, "--lr", "1e-3")) == 0
    run_dir = only_run_dir(tmp_path)
    metrics = check_run_folder(run_dir, loss, lr_find=False)
    assert metrics["lr"] == 1e-3
    if loss == "center":
        state = torch.load(run_dir / "model.pth", weights_only=True)
        assert state["center_loss_centers"].shape == (6, EMB)
        assert torch.count_nonzero(state["center_loss_centers"]) > 0


@pytest.mark.slow
def test_load_run_gives_the_trained_embedder(arcface_run, syn):
    run = load_run(arcface_run, device="cpu")
    assert isinstance(run.model, EmbeddingNet) and not run.model.training
    assert run.config["loss"] == "arcface" and run.metrics["final"]["auc"] >= 0
    state = torch.load(arcface_run / "model.pth", weights_only=True)
    for k, v in run.model.state_dict().items():
        assert torch.equal(v, state[f"embedder.{k}"]), k
    from fvloss.imageio import read_rgb

    x = run.eval_transform(read_rgb(syn / "id0000" / "id0000_000.png"))
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    with torch.no_grad():
        assert run.model(x[None]).shape == (1, EMB)


@pytest.mark.slow
def test_load_run_of_an_unfinished_run(arcface_run, tmp_path):
    # a run killed mid-training has checkpoints/last.pth (weights + optimizer) but no model.pth
    unfinished = tmp_path / "unfinished"
    shutil.copytree(arcface_run, unfinished)
    (unfinished / "model.pth").unlink()
    run = load_run(unfinished, device="cpu")
    final = torch.load(arcface_run / "model.pth", weights_only=True)
    for k, v in run.model.state_dict().items():
        assert torch.equal(v, final[f"embedder.{k}"]), k  # the same weights after 1 epoch
    assert run.metrics["final"]["auc"] >= 0
    (unfinished / "checkpoints" / "last.pth").unlink()
    with pytest.raises(FileNotFoundError, match="no weights"):
        load_run(unfinished)
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_run(tmp_path)


def write_pairs(syn: Path, path: Path) -> Path:
    rows = [["path1", "path2", "same"]]
    for i in range(8):
        rows.append([f"id{i:04d}/id{i:04d}_000.png", f"id{i:04d}/id{i:04d}_001.png", "1"])
        j = (i + 1) % 8
        rows.append([f"id{i:04d}/id{i:04d}_002.png", f"id{j:04d}/id{j:04d}_003.png", "0"])
    with path.open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    return path


def test_evaluate_cli_on_the_run(arcface_run, syn, tmp_path, capsys):
    pairs = write_pairs(syn, tmp_path / "mypairs.csv")
    rc = verify_cli.main(
        ["--run", str(arcface_run), "--pairs", str(pairs), "--root", str(syn), "--device", "cpu"]
    )
    assert rc == 0, capsys.readouterr().err
    out = arcface_run / "verify"
    doc = read_json(out / "mypairs.json")
    assert (out / "mypairs.png").read_bytes()[:4] == b"\x89PNG"
    assert 0.0 <= doc["auc"] <= 1.0
    assert doc["meta"]["run"] == str(arcface_run)


@pytest.fixture(scope="module")
def softmax_run(syn, tmp_path_factory) -> Path:
    """A finished 1-epoch softmax run; tests that resume it work on a copy."""
    out = tmp_path_factory.mktemp("softmax_runs")
    assert softmax.main(argv(syn, out, "--lr", "1e-3")) == 0
    return only_run_dir(out)


def copy_run(run_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run_dir, tmp_path / run_dir.name))


@pytest.mark.slow
def test_resume_continues_from_the_last_epoch(softmax_run, tmp_path):
    run_dir = copy_run(softmax_run, tmp_path)
    first = read_json(run_dir / "metrics.json")
    weights1 = torch.load(run_dir / "model.pth", weights_only=True)
    trained_before = read_json(run_dir / "checkpoints" / "last.json")["train_s"]
    assert softmax.main(["--resume", str(run_dir), "--epochs", "2", "--progress", "false"]) == 0
    assert [p.name for p in tmp_path.iterdir()] == [run_dir.name]  # no new run folder
    metrics = read_json(run_dir / "metrics.json")
    assert read_json(run_dir / "config.json")["epochs"] == 2
    assert read_json(run_dir / "checkpoints" / "last.json")["epoch"] == 2
    weights2 = torch.load(run_dir / "model.pth", weights_only=True)
    assert not torch.equal(weights1["head.fc.weight"], weights2["head.fc.weight"])
    # the resumed epoch is numbered 1 and has its metrics; the skipped epoch 0 adds no row of
    # its own (it may appear as the first run's row, carried over from the checkpoint)
    history = metrics["history"]
    assert [h["epoch"] for h in history] in ([1], [0, 1])
    assert all("auc" in h and "train_loss" in h for h in history)
    if len(history) == 2:
        assert history[0] == first["history"][0]
    assert history[-1]["auc"] >= 0 and history[-1] != first["history"][0]
    assert metrics["final"] == history[-1]
    assert metrics["lr"] == first["lr"] == 1e-3
    # the training time adds up over both processes (the first one's is in its checkpoint)
    assert 0 < trained_before <= first["train_time_s"] + 0.1
    step_s = metrics["time_breakdown"]["seconds"]["step"]  # of the resumed epoch alone
    assert metrics["train_time_s"] >= trained_before + step_s - 0.1  # (rounded to 0.1 s)


@pytest.mark.parametrize("extra", [[], ["--epochs", "1"]], ids=["no-epochs-flag", "same-epochs"])
def test_resume_of_a_finished_run_trains_nothing(softmax_run, tmp_path, extra):
    # the run asked for 1 epoch and finished it: resuming it must not train (without --epochs,
    # the run's own epochs hold, not the synthetic set's default) and must not fail
    run_dir = copy_run(softmax_run, tmp_path)
    weights1 = torch.load(run_dir / "model.pth", weights_only=True)
    first = read_json(run_dir / "metrics.json")
    assert softmax.main(["--resume", str(run_dir), "--progress", "false", *extra]) == 0
    assert read_json(run_dir / "config.json")["epochs"] == 1
    assert read_json(run_dir / "checkpoints" / "last.json")["epoch"] == 1
    weights2 = torch.load(run_dir / "model.pth", weights_only=True)
    for k in weights1:
        assert torch.equal(weights1[k], weights2[k]), k
    assert read_json(run_dir / "metrics.json")["history"] == first["history"]


def test_metrics_json_is_strict_json(arcface_run):
    # tar@1e-3 is NaN with few pairs: metrics.json must still parse with a strict parser
    text = (arcface_run / "metrics.json").read_text()
    json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    assert np.isfinite(read_json(arcface_run / "metrics.json")["final"]["auc"])


def test_an_explicit_run_dir_that_holds_a_run_is_not_overwritten(syn, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert softmax.main(argv(syn, tmp_path, "--lr", "1e-3", "--run-dir", str(run_dir))) == 0
    before = (run_dir / "model.pth").read_bytes()
    assert softmax.main(argv(syn, tmp_path, "--lr", "1e-3", "--run-dir", str(run_dir))) == 2
    err = capsys.readouterr().err
    assert str(run_dir) in err and "--resume" in err and "Traceback" not in err
    assert (run_dir / "model.pth").read_bytes() == before


def test_bad_input_is_one_line_naming_the_problem(tmp_path, capsys):
    out = tmp_path / "runs"
    args = ["--data", str(tmp_path / "nowhere"), "--progress", "false", "--out", str(out)]
    assert softmax.main(args) == 2
    err = capsys.readouterr().err
    assert "nowhere" in err and "not found" in err
    assert list(out.iterdir()) == []  # a run that wrote nothing leaves no empty folder


def cfp_from_synthetic(syn: Path, root: Path) -> Path:
    """A CFP-shaped folder (official ``Protocol/`` layout, 2 folds) over the synthetic faces:
    images 0-3 of each identity play "frontal", 4-5 "profile"."""
    ids = sorted(p.name for p in syn.iterdir() if p.is_dir())
    lists: dict[str, list[str]] = {"F": [], "P": []}
    number: dict[tuple[str, int], int] = {}
    for name in ids:
        for j, img in enumerate(sorted((syn / name).iterdir())):
            key = "F" if j < 4 else "P"
            lists[key].append(f"{len(lists[key]) + 1} ../Data/Images/{name}/{img.name}")
            number[(name, j)] = len(lists[key])
    proto = root / "Protocol"
    proto.mkdir(parents=True)
    for key in "FP":
        (proto / f"Pair_list_{key}.txt").write_text("\n".join(lists[key]) + "\n")
    for split, second in (("FP", 4), ("FF", 1)):
        for g in range(2):
            d = proto / "Split" / split / f"{g + 1:02d}"
            d.mkdir(parents=True)
            mine = ids[4 * g : 4 * g + 4]
            same = [f"{number[(n, 0)]},{number[(n, second)]}" for n in mine]
            diff = [
                f"{number[(n, 0)]},{number[(m, second)]}" for n, m in zip(mine, mine[1:] + mine[:1])
            ]
            (d / "same.txt").write_text("\n".join(same) + "\n")
            (d / "diff.txt").write_text("\n".join(diff) + "\n")
    return root


@pytest.mark.slow
def test_protocols_scored_during_training(syn, tmp_path):
    """CFP-FP (any protocol) and insightface .bin sets are scored while training, into the
    progress table, metrics.json and RUN/verify, under one set of column names."""
    from fvloss.eval.bins import pack_bin
    from fvloss.eval.protocols import read_pairs

    cfp = cfp_from_synthetic(syn, tmp_path / "cfp")
    pack_bin(read_pairs(write_pairs(syn, tmp_path / "mini.csv"), syn), tmp_path / "mini.bin")
    out = tmp_path / "runs"
    extra = ["--pairs", str(cfp), "--pairs-format", "cfp-fp", "--pairs-root", str(syn)]
    extra += ["--val-bins", str(tmp_path / "mini.bin"), "--lr", "1e-3"]
    assert softmax.main(argv(syn, out, *extra)) == 0
    run_dir = only_run_dir(out)
    m = read_json(run_dir / "metrics.json")
    final = m["final"]
    for prefix in ("", "pairs_", "mini_"):
        assert {f"{prefix}{k}" for k in ("auc", "acc", "tar@1e-3", "eer")} <= set(final)
    assert set(m["evals"]) == {"cfp-fp", "mini"}
    assert m["evals"]["cfp-fp"]["auc"] == final["pairs_auc"]
    assert m["evals"]["mini"]["auc"] == final["mini_auc"]
    doc = read_json(run_dir / "verify" / "cfp-fp.json")
    assert doc["folds_from"] == "file" and doc["n_folds"] == 2 and doc["n_pairs"] == 16
    assert read_json(run_dir / "verify" / "mini.json")["n_pairs"] == 16


@pytest.mark.slow
def test_same_seed_same_run_bit_for_bit(syn, tmp_path):
    """Same settings and seed, fixed threads, a CPU: identical weights and metrics, though the
    run draws augmentation (flip + jitter), shuffling, the split and the validation pairs."""
    import torch

    cfg = tmp_path / "jitter.toml"
    cfg.write_text('extra_aug = [{transform = "Affine", rotate = [-15, 15], p = 0.5}]\n')
    runs = []
    for k in range(2):
        out = tmp_path / f"r{k}"
        extra = ["--config", str(cfg), "--lr", "1e-3", "--precision", "fp32", "--threads", "1"]
        assert center.main(argv(syn, out, *extra)) == 0
        runs.append(only_run_dir(out))
    a, b = (torch.load(r / "model.pth", weights_only=True) for r in runs)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ma, mb = (read_json(r / "metrics.json") for r in runs)
    assert ma["history"] == mb["history"] and ma["final"]["auc"] == mb["final"]["auc"]
    # another seed is another run
    out = tmp_path / "r2"
    extra = ["--config", str(cfg), "--lr", "1e-3", "--precision", "fp32", "--threads", "1"]
    assert center.main(argv(syn, out, *extra, "--seed", "7")) == 0
    c = torch.load(only_run_dir(out) / "model.pth", weights_only=True)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_a_diverging_run_is_stopped_and_says_where(syn, tmp_path, capsys):
    """--lr 1e6 used to train on to a loss of 1e13 and exit 0 with a model.pth."""
    out = tmp_path / "runs"
    extra = ["--lr", "1e6", "--epochs", "3", "--guard-warmup", "2", "--guard-patience", "2"]
    rc = softmax.main(argv(syn, out, *extra))
    err = capsys.readouterr().err
    assert rc == 3, err
    assert (
        "training diverged at epoch" in err
        and "step" in err
        and "lower learning rate" in err
        and "occured" not in err
    )
    run_dir = only_run_dir(out)
    assert not (run_dir / "model.pth").exists() and not (run_dir / "metrics.json").exists()
    last = run_dir / "checkpoints" / "last.pth"
    if last.exists():  # any checkpoint kept is a good one: finite weights
        import torch

        state = torch.load(last, weights_only=False)["model"]
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def test_the_guard_leaves_a_healthy_run_alone(softmax_run):
    assert read_json(softmax_run / "config.json")["guard"] is True
    assert (softmax_run / "model.pth").is_file()


def test_a_second_process_in_the_same_run_folder_is_refused(syn, tmp_path, capsys):
    from fvloss.runlock import RunLock

    run_dir = tmp_path / "busy"
    with RunLock(run_dir):  # another process training there (a second descriptor conflicts)
        rc = softmax.main(argv(syn, tmp_path, "--lr", "1e-3", "--run-dir", str(run_dir)))
        err = capsys.readouterr().err
        assert rc == 2 and "another process (pid" in err and "is training in this run" in err
        assert not (run_dir / "config.json").exists()
    # released: the folder can be used (and the lock of a finished run is released too)
    assert softmax.main(argv(syn, tmp_path, "--lr", "1e-3", "--run-dir", str(run_dir))) == 0
    with RunLock(run_dir):
        pass


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # the foreign one
def test_truncated_or_foreign_checkpoints_are_clear_errors(softmax_run, tmp_path, capsys):
    import shutil

    for damage in ("truncate", "foreign"):
        run = tmp_path / damage
        shutil.copytree(softmax_run, run)
        last = run / "checkpoints" / "last.pth"
        if damage == "truncate":
            last.write_bytes(last.read_bytes()[:1000])
        else:  # a pickle that would run code: weights_only refuses it, nothing runs
            import pickle

            class Evil:
                def __reduce__(self):
                    return (print, ("executed!",))

            last.write_bytes(pickle.dumps({"model": Evil()}))
        rc = softmax.main(["--resume", str(run), "--epochs", "2", "--progress", "false"])
        err = capsys.readouterr()
        assert rc == 2 and "cannot resume from this checkpoint" in err.err
        assert str(last) in err.err and "executed!" not in err.out
        (run / "model.pth").write_bytes(b"not torch")
        with pytest.raises(ValueError, match="not a readable weights file"):
            load_run(run)


@pytest.mark.slow
def test_a_resumed_run_prints_and_keeps_the_restored_epochs(softmax_run, tmp_path, capsys):
    import shutil

    run = tmp_path / "again"
    shutil.copytree(softmax_run, run)
    first = read_json(run / "checkpoints" / "last.json")["values"]
    for epochs in (2, 3):  # resume twice: the first epoch's values must survive both
        assert (
            softmax.main(["--resume", str(run), "--epochs", str(epochs), "--progress", "false"])
            == 0
        )
    table = [line.split() for line in capsys.readouterr().out.splitlines() if line.strip()]
    restored = [row for row in table if row[-1] == "restored"]
    assert [row[0] for row in restored] == ["0", "0", "1"]  # resume 1: epoch 0; resume 2: 0, 1
    assert float(restored[0][1]) == pytest.approx(first[0][0], abs=1e-6)  # its train_loss
    values = read_json(run / "checkpoints" / "last.json")["values"]
    assert len(values) == 3 and values[0] == first[0] and "None" not in values[0]
    assert len(read_json(run / "metrics.json")["history"]) == 3


def test_resume_on_other_identities_is_refused(softmax_run, syn, tmp_path, capsys):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(syn, data)
    run = tmp_path / "run"
    shutil.copytree(softmax_run, run)
    cfg = read_json(run / "config.json")
    (run / "config.json").write_text(json.dumps({**cfg, "data": str(data)}))
    assert read_json(run / "identities.json")["train"]  # recorded by the first run
    shutil.rmtree(data / sorted(p.name for p in data.iterdir())[0])  # one identity gone
    rc = softmax.main(["--resume", str(run), "--epochs", "2", "--progress", "false"])
    err = capsys.readouterr().err
    assert rc == 2 and "identities differ from the run's" in err and "1 missing" in err


def test_a_checkpoint_is_one_file(softmax_run, tmp_path):
    """Weights, optimizer and record in one .pth (one atomic rename): a last.json that does not
    match (a kill between two renames, before) cannot mislead a resume."""
    import shutil

    import torch

    run = tmp_path / "run"
    shutil.copytree(softmax_run, run)
    state = torch.load(run / "checkpoints" / "last.pth", weights_only=False)
    assert set(state) == {"model", "opt", "meta", "train_state"} and state["meta"]["epoch"] == 1
    (run / "checkpoints" / "last.json").write_text('{"epoch": 99, "lr": 1.0, "values": []}')
    assert softmax.main(["--resume", str(run), "--epochs", "2", "--progress", "false"]) == 0
    assert len(read_json(run / "metrics.json")["history"]) == 2  # resumed at epoch 1, not 99
    assert read_json(run / "checkpoints" / "last.json")["epoch"] == 2


# ----------------------------------------------------------------------------- recipe modules


def test_every_registered_loss_has_its_recipe_module():
    """``fvloss.recipes.<loss>`` comes from the registry: no file per loss to keep in step."""
    import importlib

    from fvloss.losses import LOSSES

    for name in LOSSES:
        mod = importlib.import_module(f"fvloss.recipes.{name}")
        assert callable(mod.main) and f"python -m fvloss.recipes.{name}" in mod.__doc__
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("fvloss.recipes.tripletface")
    # the package holds only recipe modules: the runner is fvloss.train, the config fvloss.config
    assert sorted(
        p.name for p in Path(importlib.import_module("fvloss.recipes").__file__).parent.glob("*.py")
    ) == ["__init__.py"]


def test_a_loss_registered_later_gets_a_recipe_module(monkeypatch):
    import importlib

    from fvloss.heads import CosFaceHead
    from fvloss.losses import LOSSES, register_loss

    monkeypatch.setitem(LOSSES, "mycos", LOSSES["cosface"])  # restored after the test
    register_loss("mycos", CosFaceHead, summary="a user's loss")
    mod = importlib.import_module("fvloss.recipes.mycos")
    assert "a user's loss" in mod.__doc__
    monkeypatch.delitem(sys.modules, "fvloss.recipes.mycos")


@pytest.mark.slow
def test_recipe_module_runs_with_python_dash_m():
    import subprocess

    p = subprocess.run([sys.executable, "-m", "fvloss.recipes.adaface", "--help"],
                       capture_output=True, text=True, timeout=120)  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert "python -m fvloss.recipes.adaface" in p.stdout and "--adaface-h" in p.stdout


# -- the papers' way: SGD, poly with warm-up, clipping, accumulation, --init, --dry-run -------
@pytest.mark.slow
def test_papers_settings_train_from_init_and_resume(softmax_run, syn, tmp_path):
    """torch's SGD with a poly schedule, lr scaled from a reference batch, clipping, two
    batches a step, fine-tuned from another run's embedder (--init), then resumed."""
    out = tmp_path / "runs"
    extra = ["--lr", "0.4", "--lr-batch", "128", "--opt", "sgd", "--nesterov", "--wd", "5e-4",
             "--wd-exclude", "norm", "--schedule", "poly", "--warmup-steps", "2", "--clip", "5",
             "--accum", "2", "--init", str(softmax_run), "--epochs", "2"]  # fmt: skip
    assert arcface.main(argv(syn, out, *extra)) == 0
    run_dir = only_run_dir(out)
    cfg = read_json(run_dir / "config.json")
    assert cfg["lr"] == pytest.approx(0.4 * 16 * 2 / 128)  # bs 16, accum 2, for 128
    assert (cfg["opt"], cfg["schedule"], cfg["wd_exclude"], cfg["accum"]) == (
        "sgd",
        "poly",
        ["norm"],
        2,
    )
    # the embedder started from the softmax run's (its body; the 16-d neck fits too)
    assert arcface.main(["--resume", str(run_dir), "--epochs", "3", "--progress", "false"]) == 0
    assert read_json(run_dir / "checkpoints" / "last.json")["epoch"] == 3


def test_init_copies_the_embedder(softmax_run, syn, tmp_path, capsys):
    from fvloss.cli.train import resolve_config
    from fvloss.data import face_dls
    from fvloss.train import make_learner

    cfg, _ = resolve_config(argv(syn, tmp_path, "--lr", "1e-3", "--init", str(softmax_run)))
    dls = face_dls(syn, img_size=32, bs=16, num_workers=0)
    learn, _ = make_learner(cfg, dls, tmp_path)
    source = torch.load(softmax_run / "model.pth", weights_only=True)
    for k, v in learn.model.embedder.state_dict().items():
        assert torch.equal(v, source[f"embedder.{k}"]), k
    assert "init: " in capsys.readouterr().out


PAPERS = sorted((Path(__file__).parents[1] / "recipes" / "papers").glob("*.toml"))


@pytest.mark.parametrize(
    "recipe", [p for p in PAPERS if p.name != "base.toml"], ids=lambda p: p.stem
)
def test_every_paper_recipe_resolves_and_prints_its_schedule(recipe, capsys):
    from fvloss.cli.train import main

    assert main(["--config", str(recipe), "--dry-run", "--world", "8"]) == 0
    out = capsys.readouterr().out
    cfg, _ = __import__("fvloss.cli.train", fromlist=["x"]).resolve_config(
        ["--config", str(recipe)]
    )
    assert cfg.source and cfg.published and cfg.expect_images and cfg.opt == "sgd"
    assert f"batch: {cfg.bs} per process x 8" in out and "| last step" in out
    assert "steps:" in out and "images seen:" in out


def test_paper_recipes_cover_the_issue_list():
    names = {p.stem for p in PAPERS}
    assert {"base", "arcface_ir50_ms1mv2", "arcface_ir100_ms1mv2", "glint360k_r100_pfc",
            "cosface_ir50_ms1mv2", "adaface_ir101_ms1mv2", "adaface_ir100_webface4m",
            "magface_ir100_ms1mv2", "curricularface_ir100_ms1mv2", "arcface_ir50_casia"} <= names  # fmt: skip


def test_dry_run_without_the_data_size_is_a_clear_error(tmp_path, capsys):
    assert arcface.main(["--data", str(tmp_path), "--lr", "0.1", "--dry-run"]) == 2
    assert "--dry-run needs the data set's size" in capsys.readouterr().err
