"""fvloss.study: a study file checked, the search spaces from the registry, and workers that
share one SQLite study training every trial exactly once."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna")

from fvloss.cli import study as study_cli  # noqa: E402
from fvloss.data.synthetic import SyntheticSpec, make_synthetic  # noqa: E402
from fvloss.losses import LOSSES  # noqa: E402
from fvloss.study import load_study, space_for  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def write_study(tmp_path: Path, data: Path | None = None, extra: str = "") -> Path:
    settings = (
        f'[settings]\ndata = "{data}"\nimg_size = 32\narch = "resnet18"\nemb_dim = 16\nbs = 16\n'
        "val_pairs = 100\nworkers = 0\nlog = [\"none\"]\nguard = false\n"
        if data else ""
    )  # fmt: skip
    p = tmp_path / "study.toml"
    p.write_text(
        f'name = "tiny"\nlosses = ["softmax", "arcface"]\ntrials = 2\nepochs = 1\n'
        f'out = "{tmp_path / "studies"}"\n{extra}\n{settings}\n[space]\nlr = [1e-4, 3e-3, "log"]\n'
    )
    return p


def test_every_loss_declares_its_search_space():
    for name, spec in LOSSES.items():
        for k, (low, high, log) in spec.search.items():
            assert k in spec.settings and low < high and (low > 0 or not log), (name, k)
    assert set(LOSSES["arcface"].search) == {"s", "m"} and set(LOSSES["center"].search) == {
        "lam",
        "alpha",
    }


def test_space_shared_then_the_losss_own_then_the_files(tmp_path):
    p = write_study(tmp_path, extra="")
    p.write_text(p.read_text() + "\n[space.arcface]\nm = [0.3, 0.4]\n")
    spec = load_study(p)
    space = space_for(spec, "arcface")
    assert space["lr"] == (1e-4, 3e-3, True) and space["arcface.m"] == (0.3, 0.4, False)
    assert space["arcface.s"] == LOSSES["arcface"].search["s"]
    assert space_for(spec, "softmax") == {"lr": (1e-4, 3e-3, True)}


@pytest.mark.parametrize(
    "extra, message",
    [
        ("trails = 3", r"unknown keys \['trails'\]"),
        ('losses2 = ["x"]', "unknown keys"),
        ("[space.cosface]\nm = [0.1, 0.2]", r"\[space.cosface\] is not one of the study's losses"),
        ("[space.arcface]\nmargin = [0.1, 0.2]", "'margin' is not a setting of arcface"),
        ("[space.arcface]\nm = [0.5, 0.2]", r"expected \[low, high\]"),
        ('sampler = "cmaes"', "sampler must be one of"),
    ],
)
def test_a_bad_study_file_is_one_clear_error(tmp_path, extra, message, capsys):
    p = write_study(tmp_path)
    text = p.read_text()
    head, _, tail = text.partition("\n[space]")
    if extra.startswith("["):
        p.write_text(text + "\n" + extra + "\n")
    else:
        p.write_text(extra + "\n" + text)
    with pytest.raises(ValueError, match=message):
        load_study(p)
    assert study_cli.main(["status", str(p)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fvloss study: ") and "Traceback" not in err


@pytest.mark.slow
def test_two_workers_share_a_sqlite_study_and_train_each_trial_once(tmp_path):
    data = make_synthetic(SyntheticSpec(8, 6, 32, 0), tmp_path / "syn", quiet=True)
    p = write_study(tmp_path, data)
    r = subprocess.run([sys.executable, "-m", "fvloss.cli", "study", "run", str(p), "--jobs", "2"],
                       cwd=REPO, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    spec = load_study(p)
    for loss in spec.losses:
        study = optuna.load_study(study_name=f"tiny-{loss}", storage=spec.storage_url)
        trials = study.get_trials()
        assert len(trials) == 2 and all(t.state.name in ("COMPLETE", "PRUNED") for t in trials)
        runs = [Path(t.user_attrs["run_dir"]) for t in trials]
        assert len(set(runs)) == 2 and all((d / "config.json").is_file() for d in runs)
    folders = sorted(d.name for d in (spec.folder / "trials").iterdir())
    assert folders == ["arcface-0000", "arcface-0001", "softmax-0000", "softmax-0001"]
    assert "| arcface | " in r.stdout  # the status table
