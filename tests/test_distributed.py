"""Cost functions across ranks (gloo, 2 CPU processes): the statistics a loss keeps are those
of the global batch, identical on every rank, equal to one process seeing the whole batch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from distributed_common import free_port, run_ranks

from fvloss import ranks as fvranks
from fvloss.callbacks.center import center_update
from fvloss.heads import AdaFaceHead, CurricularFaceHead

D, C, B = 4, 5, 12


def batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, D, generator=g) * 3, torch.arange(B) % C


def _centers_on_rank(rank: int, world: int) -> torch.Tensor:
    feats, y = batch()
    centers = torch.ones(C, D)
    center_update(centers, feats[rank::world], y[rank::world], alpha=0.5)
    return centers


def _head_state_on_rank(rank: int, world: int, kind: str) -> dict:
    torch.manual_seed(0)
    head = (AdaFaceHead if kind == "adaface" else CurricularFaceHead)(D, C, s=10.0)
    feats, y = batch()
    head(feats[rank::world], y[rank::world])
    return {k: v.clone() for k, v in head.state_dict().items()}


def _each(fn, kinds: list, rank: int, world: int, *args) -> dict:
    """``fn`` once per kind in one set of rank processes (a launch costs ~20 s here)."""
    return {kind: fn(rank, world, *args, kind) for kind in kinds}


def _head_states(rank: int, world: int, kinds: list) -> dict:
    return _each(_head_state_on_rank, kinds, rank, world)


def test_helpers_are_the_identity_on_one_process():
    x = torch.tensor([1.0, 2.0, 4.0])
    assert fvranks.world_size() == 1 and fvranks.rank() == 0
    assert fvranks.global_mean(x).item() == pytest.approx(7 / 3)
    mean, std, n = fvranks.global_mean_std(x)
    assert (mean.item(), n.item()) == (pytest.approx(7 / 3), 3)
    assert torch.equal(std, x.std()) and torch.equal(fvranks.global_mean(x), x.mean())


@pytest.mark.slow
def test_center_update_uses_every_ranks_features():
    feats, y = batch()
    one = torch.ones(C, D)
    center_update(one, feats, y, alpha=0.5)
    ranks = run_ranks(_centers_on_rank, 2)
    assert torch.allclose(ranks[0], ranks[1], atol=0) and torch.allclose(ranks[0], one, atol=1e-6)
    # a rank's own half alone would give other centers: the test can fail
    half = torch.ones(C, D)
    center_update(half, feats[0::2], y[0::2], alpha=0.5)
    assert not torch.allclose(half, one, atol=1e-3)


@pytest.mark.slow
def test_head_ema_statistics_are_the_global_batchs():
    kinds = ["adaface", "curricularface"]
    on_ranks = run_ranks(_head_states, 2, kinds)
    for kind in kinds:
        one, ranks = _head_state_on_rank(0, 1, kind), [r[kind] for r in on_ranks]
        for k in one:
            assert torch.equal(ranks[0][k], ranks[1][k]), (kind, k)
            assert torch.allclose(ranks[0][k], one[k], rtol=1e-6, atol=1e-7), (kind, k)
        moved = "batch_mean" if kind == "adaface" else "t"
        fresh = (AdaFaceHead if kind == "adaface" else CurricularFaceHead)(D, C, s=10.0)
        assert not torch.allclose(one[moved], fresh.state_dict()[moved])  # one step moved it


# ----------------------------------------------------------------------------- DDP training


def _train(
    rank: int, world: int, data: str, loss: str, bs: int, partial_fc=None, sgd=False
) -> dict:
    from fastai.optimizer import SGD, Adam

    from fvloss.callbacks.ddp import FaceDistributed
    from fvloss.data import face_dls
    from fvloss.learner import face_learner

    dls = face_dls(data, img_size=32, bs=bs, seed=3, num_workers=0, preload="off")
    if world > 1:
        dls.train.shard(rank, world)
    torch.manual_seed(0)
    learn = face_learner(dls, loss=loss, arch="resnet18", emb_dim=8, val_pairs=None,
                         partial_fc=partial_fc, opt_func=SGD if sgd else Adam)  # fmt: skip
    learn.remove_cb(learn.progress)
    learn.logger = lambda *a, **k: None
    # BatchNorm frozen (running statistics): a batch's samples are then independent, so a step
    # on 2 x b images equals two ranks' steps on b each (SyncBatchNorm has no CPU kernel)
    learn.model.eval()
    learn.model.train = lambda mode=True: learn.model
    if world > 1:
        learn.add_cb(FaceDistributed(torch.device("cpu")))
    init = {k: v.detach().clone() for k, v in learn.model.state_dict().items()}
    learn.fit(1, 1e-3)
    return {"init": init, **{k: v.detach().clone() for k, v in learn.model.state_dict().items()}}


@pytest.fixture(scope="module")
def ddp_data(tmp_path_factory):
    from fvloss.data.synthetic import SyntheticSpec, make_synthetic

    return str(make_synthetic(SyntheticSpec(6, 6, 32, 0), tmp_path_factory.mktemp("d"), quiet=True))


def _train_losses(rank: int, world: int, data: str, bs: int, losses: list) -> dict:
    return {loss: _train(rank, world, data, loss, bs) for loss in losses}


@pytest.mark.slow
def test_a_ddp_epoch_on_2_ranks_equals_one_process_with_twice_the_batch(ddp_data):
    losses = ["softmax", "center", "arcface"]
    on_ranks = run_ranks(_train_losses, 2, ddp_data, 4, losses)
    for loss in losses:
        one, ranks = _train(0, 1, ddp_data, loss, 8), [r[loss] for r in on_ranks]
        assert ranks[0].keys() == one.keys()
        init = one.pop("init")
        for k, v in one.items():
            assert torch.equal(ranks[0][k], ranks[1][k]), (loss, k)  # every rank: one model
            torch.testing.assert_close(ranks[0][k], v, rtol=1e-5, atol=1e-5, msg=f"{loss} {k}")
        # and training moved the weights (the comparison is not of two untouched models)
        w = "head.fc.weight" if loss != "arcface" else "head.weight"
        assert one[w].shape == init[w].shape and not torch.allclose(one[w], init[w], atol=1e-4)


@pytest.mark.slow
def test_partial_fc_under_ddp_equals_one_process_with_twice_the_batch(ddp_data):
    # r = 1: exact; each rank holds its block of the classes (DDP leaves it out of its
    # averaging), the checkpointed state_dict is the whole matrix on every rank.
    # SGD, not Adam: the ranks sum the embeddings' gradient over their class blocks in another
    # order than one process does, and Adam's first steps (m / sqrt(v), about lr * sign(g))
    # turn that last-bit difference of a near-zero gradient into a whole step: on an Intel
    # Xeon (AMX) 55-365 weights of 37k-147k per conv differed by up to 4e-4 after one epoch.
    # SGD keeps the comparison one of the gradients, which is what DDP must get right.
    one = _train(0, 1, ddp_data, "arcface", 8, 1.0, True)
    ranks = run_ranks(_train, 2, ddp_data, "arcface", 4, 1.0, True)
    init = one.pop("init")
    w = "head.block.weight"
    assert ranks[0][w].shape == one[w].shape == init[w].shape  # (n_classes, emb_dim)
    for k, v in one.items():
        assert torch.equal(ranks[0][k], ranks[1][k]), k
        # measured: 1.5e-8 at most, against SGD steps of 1e-4 to 3e-4 per weight
        torch.testing.assert_close(ranks[0][k], v, rtol=1e-5, atol=1e-6, msg=k)
    assert not torch.allclose(one[w], init[w], atol=1e-4)


def _param_states(opt) -> dict:
    """Per-parameter state: fastai's optimiser's own, or the torch one an OptimWrapper wraps."""
    return opt.opt.state if hasattr(opt, "opt") else opt.state


MOMENTS = {"adam": {"grad_avg", "sqr_avg"}, "sgd": {"momentum_buffer"}}


def _moments(rank: int, world: int, data: str, opt: str = "adam") -> dict:
    """A step of Partial FC under DDP; the checkpoint's state; this rank's optimiser moments
    (fastai's Adam, or torch's SGD through OptimWrapper); and those a fresh learner on this
    world size gets back from the checkpoint."""
    from fvloss.callbacks.checkpoint import model_state, restore_weights
    from fvloss.callbacks.ddp import FaceDistributed
    from fvloss.data import face_dls
    from fvloss.learner import face_learner

    def learner():
        dls = face_dls(data, img_size=32, bs=4, seed=3, num_workers=0, preload="off")
        if world > 1:
            dls.train.shard(rank, world)
        torch.manual_seed(0)
        learn = face_learner(dls, loss="arcface", arch="resnet18", emb_dim=8, val_pairs=None,
                             partial_fc=1.0, opt=opt)  # fmt: skip
        learn.remove_cb(learn.progress)
        learn.logger = lambda *a, **k: None
        if world > 1:
            learn.add_cb(FaceDistributed(torch.device("cpu")))
        return learn

    learn = learner()
    learn.fit(1, 1e-3)
    block = learn.model.head.block.weight
    states = _param_states(learn.opt)
    mine = {k: v.clone() for k, v in states[block].items() if torch.is_tensor(v)}
    weights, state = model_state(learn)
    again = learner()
    again.create_opt()
    restore_weights(again, {"model": weights, "opt": state})
    back = _param_states(again.opt)[again.model.head.block.weight]
    return {"mine": mine, "weights": weights, "opt": state, "back": {k: back[k] for k in mine}}


@pytest.mark.slow
@pytest.mark.parametrize("opt", ["adam", "sgd"])
def test_partial_fc_checkpoints_whole_moments_and_reshards_them(ddp_data, opt):
    from fvloss.callbacks.checkpoint import restore_weights
    from fvloss.data import face_dls
    from fvloss.learner import face_learner

    ranks = run_ranks(_moments, 2, ddp_data, opt)
    for r in ranks:
        assert r["mine"].keys() >= MOMENTS[opt]
        for k, v in r["mine"].items():
            assert torch.equal(r["back"][k], v), k  # 2 -> 2: each rank its own rows again
    n0 = len(ranks[0]["mine"][min(MOMENTS[opt])])
    # 2 -> 1: the whole matrix and its moments, rank 0's rows first
    dls = face_dls(ddp_data, img_size=32, bs=8, seed=3, num_workers=0, preload="off")
    learn = face_learner(dls, loss="arcface", arch="resnet18", emb_dim=8, val_pairs=None,
                         partial_fc=1.0, opt=opt)  # fmt: skip
    learn.create_opt()
    restore_weights(learn, {"model": ranks[0]["weights"], "opt": ranks[0]["opt"]})
    st = _param_states(learn.opt)[learn.model.head.block.weight]
    for k in MOMENTS[opt]:
        whole = torch.cat([ranks[0]["mine"][k], ranks[1]["mine"][k]])
        assert st[k].shape == learn.model.head.block.weight.shape
        assert torch.equal(st[k], whole) and not torch.equal(st[k][:n0], st[k][n0:][:n0]), k


def _lr_find(rank: int, world: int, data: str) -> dict:
    from fvloss.callbacks.ddp import FaceDistributed
    from fvloss.data import face_dls
    from fvloss.learner import face_learner

    dls = face_dls(data, img_size=32, bs=4, seed=3, num_workers=0, preload="off")
    dls.train.shard(rank, world)
    torch.manual_seed(0)
    learn = face_learner(dls, loss="center", arch="resnet18", emb_dim=8, val_pairs=None,
                         partial_fc=None)  # fmt: skip
    learn.remove_cb(learn.progress)
    learn.add_cb(FaceDistributed(torch.device("cpu")))
    before = {k: v.clone() for k, v in learn.model.state_dict().items()}
    lr = learn.lr_find(num_it=8, show_plot=False).valley
    after = learn.model.state_dict()
    return {"lr": lr, "kept": all(torch.equal(before[k], after[k]) for k in before),
            "opt": not any(learn.opt.state[p] for p in learn.model.parameters() if p in learn.opt.state
                           and "grad_avg" in learn.opt.state[p]),
            "losses": len(learn.recorder.losses)}  # fmt: skip


@pytest.mark.slow
def test_lr_find_under_ddp_restores_every_ranks_weights(ddp_data):
    # fastai's LRFinder reloads its file on rank 0 only: the others kept lr_find's weights
    for r in run_ranks(_lr_find, 2, ddp_data):
        assert r["kept"] and r["opt"] and r["losses"] >= 6 and r["lr"] > 0


@pytest.mark.slow
def test_a_recipe_under_torchrun_writes_one_run_folder(ddp_data, tmp_path):
    launch = ["-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", _port()]
    _launched_recipe(ddp_data, tmp_path, launch)


@pytest.mark.slow
def test_a_recipe_under_accelerate_launch_writes_one_run_folder(ddp_data, tmp_path):
    # accelerate's multi-process launcher (torchrun inside); on a CPU machine it runs gloo
    launch = ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--main_process_port", _port()]  # fmt: skip
    _launched_recipe(ddp_data, tmp_path, launch)


def _port() -> str:
    """A free port: tests run side by side (pytest-xdist), and torchrun's default is one."""
    return str(free_port())


def _launched_recipe(ddp_data: str, tmp_path: Path, launch: list[str]) -> None:
    import os
    import subprocess
    import sys

    from test_recipes import cfp_from_synthetic

    out = tmp_path / "runs"
    cfp = cfp_from_synthetic(Path(ddp_data), tmp_path / "cfp")  # a protocol: split over the ranks
    cmd = [sys.executable, *launch,
           "-m", "fvloss.recipes.arcface", "--data", ddp_data, "--img-size", "32",
           "--arch", "resnet18", "--emb-dim", "8", "--bs", "4", "--epochs", "2",
           "--lr-find-iters", "5", "--val-pairs", "60", "--progress", "false", "--out", str(out),
           "--pairs", str(cfp), "--pairs-format", "cfp-fp", "--pairs-root", ddp_data,
           "--stream", "true"]  # fmt: skip
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "OMP_NUM_THREADS": "1"}
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    (run,) = list(out.iterdir())  # one run folder, written by rank 0
    assert (run / "metrics.json").is_file() and (run / "model.pth").is_file()
    assert (run / "verify" / "cfp-fp.json").is_file()
    assert (run / "index" / "codes.npy").is_file()  # --stream: rank 0 packed the index there
    assert "streamed from a packed index" in p.stdout
    assert p.stdout.count("lr_find suggests") == 1  # logs from rank 0 only
    assert "2 processes: batch 4 per process, 8 per step" in p.stdout


def _recipe(args: list[str], nproc: int, timeout: int = 300, loss: str = "softmax"):
    import os
    import subprocess
    import sys

    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
              "--master-port", _port()]  # fmt: skip
    cmd = [*(launch if nproc > 1 else [sys.executable]), "-m", f"fvloss.recipes.{loss}", *args]
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


# A checkpoint holds the whole model whatever wrote it (a sharded head gathered), so the points
# are: DDP saved, one process resumes; sharded ranks saved, unequal blocks on 3 ranks split it
# again (one process saving a sharded head: tests/heads/test_partial_fc.py, in process).
# Each launch costs ~25 s of process start-up here.
@pytest.mark.slow
@pytest.mark.parametrize(("first", "then", "extra"), [
    (2, 1, []), (2, 3, ["--partial-fc", "0.5"]),
])  # fmt: skip
def test_a_run_saved_on_one_world_size_resumes_on_another(ddp_data, tmp_path, first, then, extra):
    import json

    run = tmp_path / "run"
    common = ["--progress", "false"]
    loss = "arcface" if extra else "softmax"  # Partial FC: a margin head
    p = _recipe(["--data", ddp_data, "--img-size", "32", "--arch", "resnet18", "--emb-dim", "8",
                 "--bs", "4", "--epochs", "1", "--lr", "1e-3", "--val-pairs", "60",
                 "--run-dir", str(run), *extra, *common], first, loss=loss)  # fmt: skip
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    meta = json.loads((run / "checkpoints" / "last.json").read_text())
    assert (meta["epoch"], meta["batch"], meta["world_size"]) == (1, 0, first)
    if extra:  # the whole class matrix, whatever wrote it
        n = len(json.loads((run / "identities.json").read_text())["train"])
        from fvloss.callbacks.checkpoint import load_checkpoint

        state = load_checkpoint(run)
        assert state["model"]["head.block.weight"].shape == (n, 8)
    p = _recipe(["--resume", str(run), "--epochs", "2", *common], then, loss=loss)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    assert "resuming" in p.stdout and "restored" in p.stdout
    history = json.loads((run / "metrics.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [0, 1]


def test_a_mid_epoch_checkpoint_resumes_only_on_its_world_size(dls):
    from fvloss.callbacks.checkpoint import ResumeFrom
    from fvloss.learner import face_learner

    learn = face_learner(dls, loss="softmax", arch="resnet18", emb_dim=8, val_pairs=None)
    learn.remove_cb(learn.progress)
    meta = {"epoch": 0, "batch": 1, "n_iter": len(dls.train), "world_size": 2, "values": []}
    with pytest.raises(ValueError, match="written on 2, at batch 1 of epoch 0"):
        learn.fit(1, 1e-3, cbs=[ResumeFrom({"meta": meta, "train_state": None})])


def _validate(rank: int, world: int, data: str, preload: str) -> list:
    from fvloss.data import face_dls
    from fvloss.learner import face_learner

    dls = face_dls(data, img_size=32, bs=3, seed=3, num_workers=0, preload=preload,
                   valid_pct=0.5)  # fmt: skip
    if world > 1:
        dls.valid.shard(rank, world, pad=True)  # 3 identities x 6 images: 18, odd shares of 9
    torch.manual_seed(0)
    learn = face_learner(dls, loss="softmax", arch="resnet18", emb_dim=8, val_pairs=100)
    learn.remove_cb(learn.progress)
    return [float(v) for v in learn.validate()]


def _validate_each(rank: int, world: int, data: str, preloads: list) -> dict:
    return _each(_validate, preloads, rank, world, data)


@pytest.mark.slow
def test_held_out_verification_from_every_ranks_embeddings_equals_one_process(ddp_data):
    preloads = ["off", "on"]  # the per-image loader and the preloaded one
    on_ranks = run_ranks(_validate_each, 2, ddp_data, preloads)
    for preload in preloads:
        one = _validate(0, 1, ddp_data, preload)
        assert len(one) == 4 and 0 < one[0] < 1  # auc, acc, tar@1e-3, eer of 100 pairs
        for r in on_ranks:
            assert r[preload] == pytest.approx(one, rel=1e-6, abs=1e-6, nan_ok=True), preload


def _protocol(rank: int, world: int, faces: list) -> dict:
    from test_eval_embed import MeanColour, all_pairs, transform

    from fvloss.eval.score import score_pairs

    model = MeanColour()
    scores, kept = score_pairs(model, all_pairs(faces), transform, batch_size=3,
                               skip_missing=True, share=(rank, world))  # fmt: skip
    return {"scores": scores, "n": len(kept), "skipped": list(kept.skipped),
            "embedded": sum(n for n, *_ in model.calls)}  # fmt: skip


@pytest.mark.slow
def test_protocol_images_are_split_across_ranks_and_scored_as_on_one(tmp_path):
    from test_eval_embed import make_faces

    faces = make_faces(tmp_path / "faces")
    faces[5].write_bytes(b"not an image")  # a failure on one rank is every rank's
    one = _protocol(0, 1, faces)
    ranks = run_ranks(_protocol, 2, faces)
    assert one["embedded"] == len(faces) - 1 and one["skipped"]
    assert [r["embedded"] for r in ranks] == [8, 7]  # each image by one rank (5 is rank 1's)
    for r in ranks:
        assert r["n"] == one["n"] and r["skipped"] == one["skipped"]
        np.testing.assert_array_equal(r["scores"], one["scores"])


def _guarded(rank: int, world: int) -> str:
    from types import SimpleNamespace

    from fvloss.callbacks.guard import DivergenceGuard, TrainingDiverged

    guard = DivergenceGuard()
    guard.learn = SimpleNamespace(model=torch.nn.Linear(1, 1), epoch=0, training=True, opt=None,
                                  path=Path("."), model_dir="none")  # fmt: skip
    guard.before_fit()
    for loss in (1.0, float("inf") if rank == 1 else 1.0):  # rank 1 alone explodes at step 1
        guard.learn.loss = torch.tensor(loss)
        try:
            guard.after_loss()
        except TrainingDiverged as e:
            return e.reason
        guard.step += 1
    return "went on"


@pytest.mark.slow
def test_a_loss_that_explodes_on_one_rank_stops_every_rank_at_the_same_step():
    reasons = run_ranks(_guarded, 2)
    assert reasons == ["the loss is inf"] * 2  # not one rank stopping, the other waiting
