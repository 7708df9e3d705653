"""``fvloss study``: workers pinned to GPUs, two workers sharing a SQLite study through tuning
and finals, then ``fvloss study report`` on the finished study."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna")

from study_common import write_pairs, write_study  # noqa: E402

from fvloss.cli import study as study_cli  # noqa: E402
from fvloss.data.synthetic import SyntheticSpec, make_synthetic  # noqa: E402
from fvloss.study import finals_study, load_study, tuning_study  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def test_workers_get_one_gpu_each_by_default():
    envs = study_cli.worker_envs(None, ["0", "1", "2"], {"PATH": "/bin"})
    assert [e["CUDA_VISIBLE_DEVICES"] for e in envs] == ["0", "1", "2"]
    assert all(e["PATH"] == "/bin" for e in envs)
    shared = study_cli.worker_envs(4, ["3", "5"], {})  # more workers than GPUs: they share
    assert [e["CUDA_VISIBLE_DEVICES"] for e in shared] == ["3", "5", "3", "5"]
    assert study_cli.worker_envs(None, [], {"A": "1"}) == [{"A": "1"}]  # no GPU: one worker
    assert len(study_cli.worker_envs(2, [], {})) == 2
    assert study_cli._visible_gpus({"CUDA_VISIBLE_DEVICES": "2,7"}) == ["2", "7"]
    assert study_cli._visible_gpus({"CUDA_VISIBLE_DEVICES": ""}) == []


def test_workers_on_one_machine_split_its_cpus():
    assert study_cli.cpu_shares(2, [0, 1]) == [[0], [1]]
    assert study_cli.cpu_shares(3, range(8)) == [[0, 1, 2], [3, 4], [5, 6, 7]]
    assert study_cli.cpu_shares(8, range(16)) == [[2 * k, 2 * k + 1] for k in range(8)]
    shares = study_cli.cpu_shares(5, [4, 9])  # more workers than CPUs: they share, round robin
    assert shares == [[4], [9], [4], [9], [4]]


def test_bad_options_are_one_line(tmp_path, capsys):
    p = write_study(tmp_path)
    assert study_cli.main(["run", str(p), "--jobs", "0"]) == 2
    assert capsys.readouterr().err.strip() == "fvloss study: --jobs must be >= 1, got 0"
    assert study_cli.main(["status", str(tmp_path / "nope.toml")]) == 2
    assert "nope.toml: study file not found" in capsys.readouterr().err
    for action in ("status", "report"):  # a study never run: one line, not sqlite's traceback
        assert study_cli.main([action, str(p)]) == 2
        assert "has not started" in capsys.readouterr().err


@pytest.mark.slow
def test_two_workers_share_a_sqlite_study_through_the_finals_then_the_report(tmp_path):
    data = make_synthetic(SyntheticSpec(8, 6, 32, 0), tmp_path / "syn", quiet=True)
    pairs = write_pairs(data, tmp_path / "test.csv", 8)
    p = write_study(tmp_path, data, head="trials = 1\nheartbeat = 2\n", tail=(
        f'[[test]]\nname = "syn"\npairs = "{pairs}"\nroot = "{data}"\n[finals]\nseeds = [1, 2]\n'
        f'[identify]\ndata = "{data}"\ngallery_per_id = 2\nindex = "numpy"\n'
    ))  # fmt: skip
    p.write_text(p.read_text().replace("trials = 2\n", ""))
    r = subprocess.run([sys.executable, "-m", "fvloss.cli", "study", "run", str(p), "--jobs", "2"],
                       cwd=REPO, capture_output=True, text=True, timeout=900)  # fmt: skip
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    spec = load_study(p)
    for loss in spec.losses:
        trials = tuning_study(spec, loss).get_trials()
        assert len(trials) == 1 and all(t.state.name in ("COMPLETE", "PRUNED") for t in trials)
        finals = finals_study(spec, loss).get_trials()
        assert sorted(t.state.name for t in finals) == ["COMPLETE"] * 4
        assert len({t.user_attrs["worker"] for t in trials + finals}) >= 1
        for t in finals:  # every final scored on the test protocol by the worker
            assert (Path(t.user_attrs["run_dir"]) / "verify" / "test.scores.npz").is_file()
            assert (Path(t.user_attrs["run_dir"]) / "verify" / "identify.json").is_file()
    folders = sorted(d.name for d in (spec.folder / "trials").iterdir())
    assert folders == ["arcface-0000", "softmax-0000"]
    workers = {t.user_attrs["worker"] for loss in spec.losses for t in
               finals_study(spec, loss).get_trials()}  # fmt: skip
    assert len(workers) == 2  # both took finals
    assert "| arcface | " in r.stdout and "running: 0 trial(s)" in r.stdout

    assert study_cli.main(["report", str(p), "--bootstrap", "200"]) == 0
    out = spec.folder / "report"
    md = (out / "report.md").read_text()
    assert "| loss | default AUC | tuned AUC | tuned − default (pooled) | 95% CI |" in md
    assert "Not separated" in md and "## Chosen settings" in md and "## Machine time" in md
    assert "## Identification" in md and "| softmax-tuned | 2/2 | " in md
    assert "Tuned losses by rank-1 %: " in md and "Tuned − default, in points" in md
    assert "| rank-1 | TPIR@FPIR=1e-1 |" in (out / "compare-syn" / "compare.md").read_text()
    doc = json.loads((out / "report.json").read_text())
    assert all(len(v["rank1"]) == 2 for v in doc["identify"]["configs"].values())
    assert len(doc["identify"]["comparisons"]) == 1  # arcface vs softmax, tuned
    got = doc["protocols"][0]["configs"]
    assert set(got) == {"softmax-default", "softmax-tuned", "arcface-default", "arcface-tuned"}
    for name, c in got.items():  # each run's AUC from its own cached scores
        loss, kind = name.split("-")
        runs = sorted(spec.folder.glob(f"finals/{loss}-{kind}-seed*"))
        assert c["aucs"] == pytest.approx(
            [json.loads((d / "verify" / "test.json").read_text())["auc"] for d in runs]
        )
    assert (out / "compare-syn" / "roc_seeds.png").is_file()
    assert (out / "softmax-history.png").read_bytes()[:4] == b"\x89PNG"
