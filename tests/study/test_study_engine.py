"""fvloss.study.engine: the budget trained once, failures recorded, pruning, grids, finals,
and trials stopped by a signal or a killed worker resumed from their checkpoints."""

from __future__ import annotations

import dataclasses
import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna")

from study_common import TINY_SETTINGS, write_study  # noqa: E402

from fvloss.callbacks.checkpoint import RunInterrupted  # noqa: E402
from fvloss.data.synthetic import SyntheticSpec, make_synthetic  # noqa: E402
from fvloss.study import (  # noqa: E402
    ReportToTrial,
    WorkerStopped,
    finals_study,
    load_study,
    prepare,
    run_worker,
    status,
    tuning_study,
)

REPO = Path(__file__).resolve().parents[2]


class FakeRun:
    """Stands in for fvloss.train.run: records each run's settings, scores it by how far its
    lr is from 1e-3 (so the best trial is known), and can fail or be stopped."""

    def __init__(self, fail: str = "", stop_once: bool = False):
        self.calls: list = []
        self.fail, self.stop_once = fail, stop_once

    def __call__(self, cfg, source, cbs=()):
        self.calls.append(cfg)
        run_dir = Path(cfg.run_dir or cfg.resume)
        run_dir.mkdir(parents=True, exist_ok=True)
        if cfg.loss == self.fail:
            raise ValueError("diverged at step 3")
        (run_dir / "config.json").write_text(json.dumps({"loss": cfg.loss, "lr": cfg.lr}))
        if self.stop_once:
            self.stop_once = False
            raise RunInterrupted(signal.SIGTERM, "at step 2", run_dir / "checkpoints" / "last.pth")
        lr = cfg.lr or 1e-3
        return {"final": {"auc": 1.0 - abs(math.log10(lr) + 3) / 10}}


@pytest.fixture
def fake(monkeypatch):
    def install(**kw) -> FakeRun:
        f = FakeRun(**kw)
        monkeypatch.setattr("fvloss.study.engine.run", f)
        return f

    return install


def test_the_budget_is_trained_once_then_finals_of_the_best_and_the_defaults(tmp_path, fake):
    run = fake()
    p = write_study(tmp_path, head="trials = 3\n", tail="[finals]\nseeds = [1, 2]\n")
    p.write_text(p.read_text().replace("trials = 2\n", ""))
    spec = load_study(p)
    scored = []
    assert run_worker(spec, after_final=scored.append) == {"softmax": 7, "arcface": 7}
    for loss in spec.losses:
        tuning = tuning_study(spec, loss)
        assert [t.state.name for t in tuning.trials] == ["COMPLETE"] * 3
        best = tuning.best_trial
        finals = finals_study(spec, loss).trials
        got = sorted((t.user_attrs["kind"], t.user_attrs["seed"]) for t in finals)
        assert got == [("default", 1), ("default", 2), ("tuned", 1), ("tuned", 2)]
        for t in finals:
            cfg = next(c for c in run.calls if c.run_dir == t.user_attrs["run_dir"])
            assert cfg.seed == t.user_attrs["seed"] and cfg.name == f"{loss}-{t.user_attrs['kind']}"
            if t.user_attrs["kind"] == "tuned":
                assert cfg.lr == best.params["lr"] and t.user_attrs["from_trial"] == best.number
                if loss == "arcface":
                    assert cfg.loss_settings["arcface"]["m"] == best.params["arcface.m"]
            else:
                assert cfg.lr is None and not cfg.loss_settings  # the experiment's own
    assert sorted(d.name for d in scored) == sorted(
        f"{loss}-{k}-seed{s}" for loss in spec.losses for k in ("tuned", "default") for s in (1, 2)
    )
    assert run_worker(spec) == {"softmax": 0, "arcface": 0}  # nothing left: nothing retrained
    text = status(spec)
    assert "| softmax | 3 | 0 | 0 | 0 |" in text and "| arcface | 4 | 0 | 0 | 0 |" in text


def test_a_failing_trial_is_recorded_with_its_reason_and_never_counted(tmp_path, fake, capsys):
    fake(fail="arcface")
    spec = load_study(write_study(tmp_path))
    assert run_worker(spec) == {"softmax": 2, "arcface": 0}
    trials = tuning_study(spec, "arcface").trials
    assert [t.state.name for t in trials] == ["FAIL", "FAIL"]  # as many as the budget: stop
    assert trials[0].user_attrs["error"] == "ValueError: diverged at step 3"
    assert "arcface trial 0 failed: diverged" in capsys.readouterr().err


def test_a_pruned_trial_counts_against_the_budget(tmp_path, monkeypatch):
    def pruned(spec, job):
        raise optuna.TrialPruned("pruned after epoch 0")

    monkeypatch.setattr("fvloss.study.engine._train", pruned)
    spec = load_study(write_study(tmp_path))
    run_worker(spec)
    assert [t.state.name for t in tuning_study(spec, "softmax").trials] == ["PRUNED"] * 2


@pytest.mark.parametrize("sampler", ["tpe", "random"])
def test_every_trial_gets_its_own_settings_and_a_rerun_the_same_ones(tmp_path, fake, sampler):
    # Workers re-create the study for each trial: a sampler seeded the same way each time
    # suggested one point for every trial (the first real study tuned nothing).
    run = fake()
    p = write_study(tmp_path, head=f'trials = 3\nsampler = "{sampler}"\nlosses = ["arcface"]\n')
    p.write_text(
        p.read_text().replace("trials = 2\n", "").replace('losses = ["softmax", "arcface"]\n', "")
    )
    run_worker(load_study(p))
    first = [(c.lr, c.loss_settings["arcface"]["m"]) for c in run.calls]
    assert len(set(first)) == 3
    again = fake()
    (tmp_path / "again").mkdir()
    p2 = write_study(
        tmp_path / "again", head=f'trials = 3\nsampler = "{sampler}"\nlosses = ["arcface"]\n'
    )
    p2.write_text(
        p2.read_text().replace("trials = 2\n", "").replace('losses = ["softmax", "arcface"]\n', "")
    )
    run_worker(load_study(p2))
    assert [(c.lr, c.loss_settings["arcface"]["m"]) for c in again.calls] == first  # same seed


def test_the_median_pruner_starts_after_half_a_small_budget(tmp_path):
    # Optuna's own 5 start-up trials would leave a budget of 4 without pruning: here 2 finish,
    # then a third trial far below their median after its first epoch is pruned.
    spec = dataclasses.replace(load_study(write_study(tmp_path)), trials=4)
    prepare(spec)
    study = tuning_study(spec, "softmax")
    for value in (0.8, 0.9):
        t = study.ask()
        t.report(value, 0)
        study.tell(t, value)
    t = study.ask()
    t.report(0.1, 0)
    assert t.should_prune()


def test_a_grid_trains_each_point_once_named_after_its_values(tmp_path, fake):
    run = fake()
    p = tmp_path / "grid.toml"
    p.write_text(f'losses = ["softmax", "arcface"]\nsampler = "grid"\nout = "{tmp_path}"\n'
                 "[space]\nseed = [1, 2]\n[space.arcface]\nm = [0.4, 0.5]\n")  # fmt: skip
    spec = load_study(p)
    assert run_worker(spec) == {"softmax": 2, "arcface": 4}
    names = sorted(Path(c.run_dir).name for c in run.calls)
    assert names == ["arcface-m0.4-seed1", "arcface-m0.4-seed2", "arcface-m0.5-seed1",
                     "arcface-m0.5-seed2", "softmax-seed1", "softmax-seed2"]  # fmt: skip
    from fvloss.experiment import resolve

    own = resolve({"loss": "softmax"})[0].epochs  # no epochs in the file: the experiment's
    for c in run.calls:
        assert Path(c.run_dir).name.endswith(f"seed{c.seed}") and c.epochs == own


def test_sigterm_fails_the_trial_queues_its_retry_and_the_retry_resumes(tmp_path, fake):
    run = fake(stop_once=True)
    spec = load_study(write_study(tmp_path))
    with pytest.raises(WorkerStopped) as e:
        run_worker(spec)
    assert e.value.signum == signal.SIGTERM and "checkpoint written" in str(e.value)
    trials = tuning_study(spec, "softmax").trials
    assert [t.state.name for t in trials] == ["FAIL", "WAITING"]
    assert trials[1].user_attrs["run_dir"] == trials[0].user_attrs["run_dir"]
    assert trials[1].params == trials[0].params
    run_worker(spec)
    resumed = run.calls[1]
    assert resumed.resume == trials[0].user_attrs["run_dir"]  # the same folder, resumed
    states = [t.state.name for t in tuning_study(spec, "softmax").trials]
    assert states == ["FAIL", "COMPLETE", "COMPLETE"]  # the retry, then the second trial


@pytest.mark.slow
def test_report_to_trial_prunes_a_real_run_and_says_so_in_its_folder(tmp_path):
    from fvloss.experiment import resolve
    from fvloss.train import run

    class Always(optuna.pruners.BasePruner):
        def prune(self, study, trial) -> bool:
            return True

    data = make_synthetic(SyntheticSpec(6, 4, 32, 0), tmp_path / "syn", quiet=True)
    study = optuna.create_study(direction="maximize", pruner=Always())
    trial = study.ask()
    d = tmp_path / "run"
    settings = {k: v for k, v in (line.split(" = ") for line in TINY_SETTINGS.splitlines())}
    flags = {k: json.loads(v.replace("1e-3", "0.001")) for k, v in settings.items()}
    cfg, source = resolve({"loss": "softmax"}, {}, {**flags, "data": str(data), "epochs": 2,
                                                    "run_dir": str(d), "progress": False})  # fmt: skip
    with pytest.raises(optuna.TrialPruned, match="pruned after epoch 0"):
        run(cfg, source, cbs=[ReportToTrial(trial, "auc", d)])
    assert json.loads((d / "pruned.json").read_text())["epoch"] == 0
    assert (d / "checkpoints" / "last.pth").is_file()  # the epoch it was judged on is saved


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 240) -> None:
    t0 = time.time()
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.time() - t0 < timeout, f"{path} did not appear"
        time.sleep(0.05)


@pytest.mark.slow
def test_a_killed_worker_s_trial_resumes_from_its_checkpoint_to_the_same_weights(tmp_path):
    """SIGTERM, then SIGKILL, mid-trial: the heartbeat fails the trial, its retry resumes the
    run folder, and the weights equal those of the same trial never interrupted."""
    import torch

    data = make_synthetic(SyntheticSpec(8, 6, 32, 0), tmp_path / "syn", quiet=True)
    p = write_study(tmp_path, data, head='heartbeat = 1\nsampler = "random"\npruner = "none"\n')
    # one thread in every process (workers and this one): equal sums need equal reductions
    p.write_text(p.read_text().replace("[settings]\n", "[settings]\nthreads = 1\n"))
    p.write_text(p.read_text().replace('["softmax", "arcface"]', '["softmax"]')
                 .replace("trials = 2", "trials = 1").replace("epochs = 1", "epochs = 4"))  # fmt: skip
    spec = load_study(p)
    run_dir = spec.folder / "trials" / "softmax-0000"
    ckpt = run_dir / "checkpoints" / "last.json"
    cmd = [sys.executable, "-m", "fvloss.cli", "study", "run", str(p)]
    for how in (signal.SIGTERM, signal.SIGKILL):
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)  # fmt: skip
        if how == signal.SIGKILL:  # the retry resumed: wait for its next epoch's checkpoint
            mtime = ckpt.stat().st_mtime
            while ckpt.stat().st_mtime == mtime:
                assert proc.poll() is None, proc.communicate()[1][-3000:]
                time.sleep(0.05)
        _wait_for(ckpt, proc)
        proc.send_signal(how)
        proc.communicate(timeout=120)
        assert proc.returncode == (143 if how == signal.SIGTERM else -9)
        assert not (run_dir / "metrics.json").exists(), "the trial ended before the signal"
    time.sleep(2.5)  # the heartbeat's grace period (2 x 1 s) passes
    run_worker(spec)
    trials = tuning_study(spec, "softmax").trials
    assert [t.state.name for t in trials] == ["FAIL", "FAIL", "COMPLETE"]
    assert {t.user_attrs["run_dir"] for t in trials} == {str(run_dir)}
    trained = json.loads((run_dir / "metrics.json").read_text())["time_breakdown"]["per_epoch"]
    assert trained[0]["epoch"] >= 1  # the last retry resumed: it did not train from epoch 0
    assert sorted(trials[2].intermediate_values) == [0, 1, 2, 3]  # resumed epochs replayed

    ref = tmp_path / "ref"  # the same trial (same sampler seed: same lr), never interrupted
    ref.mkdir()
    q = ref / "study.toml"
    q.write_text(p.read_text().replace(str(tmp_path / "studies"), str(ref)))
    ref_spec = load_study(q)
    run_worker(ref_spec)
    ref_trial = tuning_study(ref_spec, "softmax").trials[0]
    assert ref_trial.params == trials[0].params
    a = torch.load(run_dir / "model.pth", weights_only=True)
    b = torch.load(Path(ref_trial.user_attrs["run_dir"]) / "model.pth", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert trials[2].value == ref_trial.value
