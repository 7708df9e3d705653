"""The runner behind every recipe and ``fvloss train``, in phases:

run folder -> data -> learner -> precision -> learning rate -> fit -> outputs.

Each phase is one short function below; :func:`run` calls them in order. The settings come
from one :class:`~fvloss.config.Config` (resolved and checked by :mod:`fvloss.experiment`); a
recipe module (``python -m fvloss.recipes.arcface``) only names its loss.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from fastai.callback.schedule import valley
from fastai.torch_core import set_seed
from matplotlib.figure import Figure

from . import ranks
from .callbacks.checkpoint import (
    Checkpoint,
    ResumeFrom,
    StopSignals,
    load_checkpoint,
    model_state,
    restore_weights,
)
from .callbacks.guard import DivergenceGuard
from .callbacks.identify import IdentifyEvery
from .callbacks.precision import mixed_precision_cb
from .callbacks.tracking import tracking_cbs
from .callbacks.verify import VerifyPairs
from .config import Config
from .data.loaders import face_dls
from .data.synthetic import SyntheticSpec, default_cache_dir, make_synthetic
from .data.transforms import EvalTransform
from .eval.idsets import from_cfp, from_folder
from .eval.plots import score_histogram_figure, training_figure
from .eval.protocols import read_pairs
from .eval.report import RunMetrics, write_outputs, write_pair_figures
from .experiment import check_config, loss_settings, scaled_lr, schedule_of
from .jsonio import read_json, write_json
from .learner import face_learner
from .runlock import RunLock
from .runs import init_weights

__all__ = ["run", "RunResult", "PlainTable", "save_lr_plot"]


class RunResult(dict):
    """What :func:`run` returns (and writes to ``metrics.json``)."""


def _log(msg: str) -> None:
    if ranks.is_main():  # one log for a run on several processes
        print(f"[fvloss] {msg}", flush=True)


def run(cfg: Config, source: dict[str, str] | None = None, cbs: list | None = None) -> RunResult:
    """Train and evaluate one experiment; returns (and saves) its metrics. ``cbs``: callbacks
    added to the Learner (a study's pruning reporter).

    ``source`` says where each setting came from (:func:`fvloss.experiment.resolve`): on
    ``resume``, only an ``epochs`` given in a file or a flag overrides the run's own. The run
    folder is locked (:class:`~fvloss.runlock.RunLock`) while it trains: a second process on the
    same folder is refused."""
    locks: list[RunLock] = []
    try:
        return _phases(cfg, source or {}, locks, cbs or [])
    finally:
        ranks.teardown()  # a run launched on several processes leaves its group
        for lock in locks:
            _release(lock)


def _phases(cfg: Config, source: dict[str, str], locks: list[RunLock], cbs: list) -> RunResult:
    t_start = time.time()
    if ranks.launched():  # torchrun / accelerate launch with several processes
        ranks.setup(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    cfg, run_dir = run_folder(cfg, source, locks)
    dls, data = load_data(cfg, run_dir)
    learn, pair_cbs = make_learner(cfg, dls, run_dir)
    learn.add_cbs(cbs)
    precision = set_precision(cfg, learn)
    resumed = resume_state(cfg, learn, run_dir)
    if resumed is not None and resumed.done:
        return RunResult(read_json(run_dir / "metrics.json"))
    if ranks.launched():  # DDP through fastai's DistributedTrainer (accelerate), lr_find included
        # accelerate: an optional extra (fvloss[distributed]), imported only when launched so
        from .callbacks.ddp import FaceDistributed

        learn.add_cb(FaceDistributed(dls.device))
    lr = resumed.lr if resumed is not None else learning_rate(cfg, learn, run_dir)
    _record_settings(cfg, learn, dls, run_dir, data, lr)
    fit_s = fit(cfg, learn, lr, resumed)
    return outputs(cfg, learn, pair_cbs, resumed, run_dir, lr, precision, fit_s, t_start)


# -- run folder ---------------------------------------------------------------------------------
def run_folder(cfg: Config, source: dict[str, str], locks: list[RunLock]) -> tuple[Config, Path]:
    """The run's folder, created and locked on rank 0, and the config to train with: on resume,
    the run's own saved settings (only ``epochs`` may be extended)."""
    if cfg.resume:
        run_dir = Path(cfg.resume)
        saved = json.loads((run_dir / "config.json").read_text())
        extend = {"epochs": cfg.epochs} if source.get("epochs") in ("config", "flags") else {}
        cfg = Config.from_saved(
            {**saved, "resume": str(run_dir), "run_dir": str(run_dir), **extend}
        )
    else:  # rank 0 names it (a time stamp), every rank uses that one
        run_dir = Path(ranks.on_main(lambda: str(_new_run_dir(cfg))))
    check_config(cfg)  # before anything is read or written
    if ranks.is_main():  # the run folder is rank 0's
        run_dir.mkdir(parents=True, exist_ok=True)
        locks.append(RunLock(run_dir).acquire())  # before anything is written into it
    return cfg, run_dir


def _new_run_dir(cfg: Config) -> Path:
    if cfg.run_dir:
        d = Path(cfg.run_dir)
        if (d / "config.json").exists():  # never train over a finished or resumable run
            raise FileExistsError(
                f"{d}: already holds a run; continue it with --resume {d}, or pick another --run-dir"
            )
        return d
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path(cfg.out) / f"{cfg.name or cfg.loss}-{stamp}"
    d, k = base, 1
    while d.exists():  # never write into another run's folder
        d, k = Path(f"{base}-{k}"), k + 1
    return d


def _release(lock: RunLock) -> None:
    """Unlock; a run that stopped before writing anything leaves no empty folder."""
    run_dir = lock.path.parent
    try:
        empty = [p.name for p in run_dir.iterdir()] == [".lock"]
    except OSError:
        empty = False
    if empty:
        lock.path.unlink(missing_ok=True)  # while still held: no one else takes it
    lock.release()
    if empty:
        try:
            run_dir.rmdir()
        except OSError:
            pass


# -- data ---------------------------------------------------------------------------------------
def load_data(cfg: Config, run_dir: Path):
    """``(DataLoaders, data path)``: the identity split of ``cfg.data`` (or the embedded
    synthetic set), seeded; under DDP each rank its share of every epoch."""
    if cfg.data is None:
        spec = SyntheticSpec()
        data = make_synthetic(spec)
        _log(
            f"no --data given: training on the embedded 'synthetic' data set ({spec.n_identities} identities x "
            f"{spec.images_per_identity} procedural faces, {spec.size}px, in {data}) with its small-image settings "
            f"img_size={cfg.img_size}, epochs={cfg.epochs}, lr_find_iters={cfg.lr_find_iters} (recipes/synthetic.toml)"
        )
    else:
        data = Path(cfg.data)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    # One seed for everything random: Python, numpy and torch here (fastai's set_seed), the
    # DataLoader workers (fastai seeds each from torch), the Albumentations pipelines (re-seeded
    # from torch, see AlbumentationsTransform), the identity split and the validation pairs.
    set_seed(cfg.seed, reproducible=cfg.deterministic)
    if cfg.deterministic:  # PyTorch's deterministic kernels (GPU); an error where none exists
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it for that
        torch.use_deterministic_algorithms(True, warn_only=False)
    dls = face_dls(
        data, img_size=cfg.img_size, bs=cfg.bs, valid_pct=cfg.valid_pct, seed=cfg.seed,
        hflip=cfg.hflip, mean=cfg.mean, std=cfg.std, extra_aug=cfg.extra_aug, check=cfg.check,
        skip_bad=cfg.skip_bad, num_workers=None if cfg.workers < 0 else cfg.workers,
        preload=cfg.preload, preload_share=cfg.preload_share, channels_last=cfg.channels_last,
        stream=cfg.stream, index_dir=run_dir / "index" if cfg.stream else None,
    )  # fmt: skip
    if ranks.launched():  # each rank its share of every epoch, without a broadcast (data.seeded)
        dls.train.shard(ranks.rank(), ranks.world_size())
        if hasattr(dls.valid, "shard"):  # each held-out image embedded once, then gathered
            dls.valid.shard(ranks.rank(), ranks.world_size(), pad=True)
        _log(f"{ranks.world_size()} processes: batch {cfg.bs} per process, "
             f"{cfg.bs * ranks.world_size()} per step (the lr is the global batch's)")  # fmt: skip
    name = "synthetic" if cfg.data is None else Path(cfg.data).name
    _log(f"data ({name}): {dls.report.summary()}")
    _log(f"training images: {dls.pipeline}")
    _log(f"split by identity: {dls.n_classes} training identities ({len(dls.train_ds)} images), "
         f"{len(dls.valid_identities)} validation identities ({len(dls.valid_ds)} images) for verification")  # fmt: skip
    _same_identities(run_dir, dls, resuming=bool(cfg.resume), write=ranks.is_main())
    return dls, data


# -- learner ------------------------------------------------------------------------------------
def make_learner(cfg: Config, dls, run_dir: Path):
    """``(Learner, {name: VerifyPairs})``: the body, head and callbacks of ``cfg``, plus one
    per-epoch scorer per pair protocol, checkpointing into ``run_dir/checkpoints``."""
    pair_cbs = _pair_callbacks(cfg)
    eval_cbs = [*pair_cbs.values(), *_identify_callbacks(cfg)]
    learn = face_learner(
        dls, loss=cfg.loss, arch=cfg.arch, emb_dim=cfg.emb_dim, pretrained=cfg.pretrained,
        dropout=cfg.dropout, freeze_neck_scale=cfg.freeze_neck_scale, settings=cfg.loss_settings.get(cfg.loss),
        partial_fc=cfg.partial_fc, margin_hold=cfg.margin_hold, margin_warmup=cfg.margin_warmup,
        val_pairs=cfg.val_pairs, seed=cfg.seed, opt=cfg.opt, momentum=cfg.momentum,
        nesterov=cfg.nesterov, beta2=cfg.beta2, eps=cfg.eps, wd=cfg.wd,
        wd_exclude=cfg.wd_exclude, head_lr=cfg.head_lr, clip=cfg.clip, clip_part=cfg.clip_part,
        accum=cfg.accum, channels_last=cfg.channels_last, compile=cfg.compile,
        cbs=eval_cbs, path=run_dir, model_dir="checkpoints",
    )  # fmt: skip
    if cfg.init and not cfg.resume:  # fine-tuning: a resumed run has its own weights
        _init_embedder(cfg, learn)
    if not cfg.progress or not ranks.is_main():  # logs and CI: one plain line per epoch, not bars
        learn.remove_cb(learn.progress)
        learn.logger = PlainTable(learn) if ranks.is_main() else (lambda *a, **k: None)
    if cfg.guard:
        learn.add_cb(DivergenceGuard(
            cfg.guard_factor, cfg.guard_patience, cfg.guard_warmup, every=cfg.guard_every or None
        ))  # fmt: skip
    return learn, pair_cbs


def _init_embedder(cfg: Config, learn) -> None:
    """Load ``cfg.init``'s embedder weights: every tensor whose name and shape fit this run's
    embedder; the rest (an embedding layer of another width or image size) stay as initialised,
    and the log says which. A body whose tensors do not fit at all is an error."""
    state = init_weights(cfg.init, cfg.arch)
    own = learn.model.embedder.state_dict()
    fits = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not any(k.startswith("body.") for k in fits):
        raise ValueError(f"{cfg.init}: none of its body's weights fit {cfg.arch}")
    learn.model.embedder.load_state_dict(fits, strict=False)
    left = sorted(set(own) - set(fits))
    _log(f"init: {len(fits)} of {len(own)} embedder tensors from {cfg.init}"
         + (f"; as initialised: {', '.join(left[:6])}{' ...' if len(left) > 6 else ''}" if left else ""))  # fmt: skip


# -- precision ----------------------------------------------------------------------------------
def set_precision(cfg: Config, learn) -> str:
    """Add the mixed-precision callback ``cfg.precision`` asks for (``auto``: measured on rank 0,
    cached per machine; the other ranks take its choice); returns the sentence saying why."""
    dls = learn.dls
    xb, _ = dls.one_batch()

    def probe():  # on rank 0; the others take its choice
        cb, why = mixed_precision_cb(
            cfg.precision, dls.device, learn.model.to(dls.device), xb[:16],
            cache=default_cache_dir() / "precision_probe.json",
        )  # fmt: skip
        return _chosen_precision(cb), why

    chosen, why = ranks.on_main(probe)
    cb, _ = mixed_precision_cb(chosen, dls.device)
    if cb is not None:
        learn.add_cb(cb)
    _log(f"device {dls.device}; precision: {why}")
    return why


def _chosen_precision(cb) -> str:
    """The precision a ``mixed_precision_cb`` result stands for, to repeat it on other ranks."""
    if cb is None:
        return "fp32"
    mode = str(getattr(cb, "amp_mode", "bf16"))  # CPUAutocast is bf16; fastai's names its mode
    return "bf16" if "bf16" in mode.lower() else "fp16"


# -- resuming -----------------------------------------------------------------------------------
@dataclass
class Resumed:
    """Where a resumed run continues: its checkpoint's callback, lr and training seconds."""

    callback: ResumeFrom
    lr: float
    trained_s: float
    done: bool  # every epoch already trained, and the outputs written

    @property
    def epoch0(self) -> int:
        return self.callback.epoch0


def resume_state(cfg: Config, learn, run_dir: Path) -> Resumed | None:
    """With ``cfg.resume``: the last checkpoint's weights and state restored into ``learn``."""
    if not cfg.resume:
        return None
    state = load_checkpoint(run_dir, map_location=learn.dls.device)
    restore_weights(learn, state)
    cb = ResumeFrom(state)
    lr = float(state["meta"]["lr"])
    trained_s = float(state["meta"].get("train_s", 0.0))  # (older checkpoints: absent)
    where = f"epoch {cb.epoch0}" + (f", batch {cb.batch0}" if cb.batch0 else "")
    _log(f"resuming {run_dir} at {where} with lr {lr:.3g}")
    done = cb.epoch0 >= cfg.epochs and (run_dir / "metrics.json").exists()
    if done:
        _log(f"{cb.epoch0} of {cfg.epochs} epochs already done: nothing to train")
    return Resumed(cb, lr, trained_s, done)


# -- learning rate ------------------------------------------------------------------------------
def learning_rate(cfg: Config, learn, run_dir: Path) -> float:
    """``cfg.lr``, or lr_find's valley (weights restored afterwards; under DDP one search over
    the global batch on every rank, rank 0's suggestion broadcast), plotted to ``lr_find.png``."""
    if cfg.lr is not None:
        lr = scaled_lr(cfg, ranks.world_size())
        if cfg.lr_batch:
            _log(f"lr {cfg.lr:g} given for a global batch of {cfg.lr_batch}: {lr:.4g} for this "
                 f"run's {cfg.bs * ranks.world_size() * cfg.accum}")  # fmt: skip
        return lr
    _log(f"lr_find ({cfg.lr_find_iters} iterations; weights are restored afterwards)")
    sugg = learn.lr_find(num_it=cfg.lr_find_iters, suggest_funcs=(valley,), show_plot=False)
    lr = ranks.broadcast(float(sugg.valley))
    if ranks.is_main():
        save_lr_plot(learn.recorder, lr, run_dir / "lr_find.png")
    _log(f"lr_find suggests lr={lr:.3g} (plot: {run_dir / 'lr_find.png'})")
    return lr


def _record_settings(cfg: Config, learn, dls, run_dir: Path, data: Path, lr: float) -> None:
    """Write ``config.json`` (every setting, the loss's defaults and the chosen lr included) and
    ``data_report.json``, and start the trackers (after lr_find: they log the fit only)."""
    tables = {**cfg.loss_settings, cfg.loss: loss_settings(cfg)}
    resolved = {**cfg.to_dict(), "loss_settings": tables, "lr": lr, "data": str(data),
                "run_dir": str(run_dir)}  # fmt: skip
    if ranks.is_main():
        write_json(run_dir / "config.json", resolved)
        write_json(run_dir / "data_report.json", dls.report.to_dict())
        learn.add_cbs(tracking_cbs(cfg.log, run_dir, resolved))


# -- fit ----------------------------------------------------------------------------------------
def fit(cfg: Config, learn, lr: float, resumed: Resumed | None) -> float:
    """Train the remaining epochs with checkpoints; SIGTERM (a scheduler's preemption) / SIGINT
    checkpoint after the step and stop (exit 143 / 130). Returns the seconds it took."""
    t_fit = time.time()
    start = resumed.epoch0 if resumed is not None else 0
    with StopSignals() as stop:
        ckpt = Checkpoint(lr, cfg.checkpoint_steps, cfg.checkpoint_minutes, stop=stop,
                          trained_s=resumed.trained_s if resumed else 0.0)  # fmt: skip
        if start < cfg.epochs:
            extra = [resumed.callback] if resumed is not None else []
            learn.fit_schedule(cfg.epochs, schedule_of(cfg, lr), start_epoch=start,
                               cbs=[ckpt, *extra])  # fmt: skip
    return time.time() - t_fit


# -- outputs ------------------------------------------------------------------------------------
def outputs(cfg: Config, learn, pair_cbs: dict, resumed: Resumed | None, run_dir: Path, lr: float,
            precision: str, fit_s: float, t_start: float) -> RunResult:  # fmt: skip
    """``model.pth``, ``metrics.json``, the verification results and figures; rank 0 writes."""
    dls = learn.dls
    weights, _ = model_state(learn)  # every rank: a sharded head gathers its blocks
    if not ranks.is_main():
        return RunResult({})
    torch.save(weights, run_dir.resolve() / "model.pth", pickle_protocol=2)  # = learn.save's
    start = resumed.epoch0 if resumed is not None else 0
    trained = start < cfg.epochs
    history = _history(learn, resumed, trained)
    # images trained in this process: a resumed run started at (epoch0, batch0)
    first_iter = start * len(dls.train) + resumed.callback.batch0 if resumed else 0
    n_seen = cfg.bs * ranks.world_size() * max(learn.train_iter - first_iter, 0) if trained else 0
    trained_s = resumed.trained_s if resumed else 0.0
    metrics = RunMetrics(
        name=cfg.name or cfg.loss, loss=cfg.loss,
        data="synthetic" if cfg.data is None else Path(cfg.data).name, run_dir=str(run_dir),
        lr=lr, precision=precision, device=str(dls.device), epochs=cfg.epochs, history=history,
        final=history[-1] if history else {},
        # the run's training time over every process (up to the checkpoint each resumed from);
        # images/s of this process's own fit
        train_time_s=round(trained_s + fit_s, 1),
        images_per_s=round(n_seen / fit_s, 1) if fit_s > 0 and trained else None,
        wall_time_s=round(time.time() - t_start, 1), torch=torch.__version__,
        time_breakdown=learn.time_breakdown.summary() if trained else {},
        data_report={**{k: v for k, v in dls.report.to_dict().items() if k.startswith("n_")},
                     "n_train_images": len(dls.train_ds), "n_valid_images": len(dls.valid_ds),
                     "pipeline": dls.pipeline},
    )  # fmt: skip
    _write_verification(learn, pair_cbs, run_dir, metrics)
    if history and "auc" in history[0]:
        metrics.best_epoch = max(history, key=lambda h: h.get("auc", float("-inf")))["epoch"]
    metrics.write(run_dir)
    if history:
        training_figure(history).savefig(run_dir / "training.png")
    result = RunResult(metrics.to_dict())
    _log(
        f"done in {result['wall_time_s']:.0f}s (training {fit_s:.0f}s, {result['images_per_s']} images/s)"
    )
    if trained:
        _log(f"where training's time went: {learn.time_breakdown.line()}")
    _log(
        "final epoch (held-out identities: auc ...; protocols: <name>_auc ...): "
        + ", ".join(
            f"{k}={'n/a' if math.isnan(v) else f'{v:.4f}'}"
            for k, v in result["final"].items()
            if isinstance(v, float)
        )
    )
    files = [f for f in ("config.json", "metrics.json", "history.csv", "training.png", "lr_find.png", "model.pth")
             if (run_dir / f).exists()]  # fmt: skip
    _log(f"run folder: {run_dir} ({', '.join(files)}, checkpoints/)")
    return result


def _history(learn, resumed: Resumed | None, trained: bool) -> list[dict[str, Any]]:
    """One dict per epoch: the progress table's numbers (a resumed run's recorder holds the
    restored epochs' values too, :class:`~fvloss.callbacks.checkpoint.ResumeFrom`)."""
    names = list(learn.recorder.metric_names[1:-1])
    values = (
        [v for v in learn.recorder.values if len(v)] if trained else list(resumed.callback.values)
    )
    return [
        dict(zip(["epoch", *names], [e, *map(_num, vals)], strict=False))
        for e, vals in enumerate(values)
    ]


def _write_verification(learn, pair_cbs: dict, run_dir: Path, metrics: RunMetrics) -> None:
    """Each protocol's ROC, per-pair scores (for compare), histogram and hardest pairs; the
    held-out identities' histogram and hardest pairs."""
    for name, cb in pair_cbs.items():
        if cb.last is None:
            continue
        meta = {"run": str(run_dir), "pairs": cb.pairs.source, "protocol": cb.pairs.format}
        write_outputs(cb.last, run_dir / "verify", name, meta=meta, scores=cb.last_scores,
                      pairs=cb.last_pairs)  # fmt: skip
        metrics.evals[name] = cb.last.scalars()
    for cb in learn.cbs:
        if isinstance(cb, IdentifyEvery) and cb.last is not None:
            (run_dir / "verify").mkdir(exist_ok=True)
            doc = {"set": cb.idset.name, "notes": cb.idset.notes, **cb.last.to_json()}
            write_json(run_dir / "verify" / "identify.json", doc)
            metrics.evals["identify"] = cb.last.row()
    held = next((c for c in learn.cbs if isinstance(c, VerifyPairs) and c.held_out), None)
    if held is None or held.last is None:
        return
    (run_dir / "verify").mkdir(exist_ok=True)
    if held.last_pairs is not None:  # the histogram and the hardest pairs' images
        write_pair_figures(held.last, held.last_scores, held.last_pairs, run_dir / "verify",
                           "held-out", title="held-out identities")  # fmt: skip
    else:
        fig = score_histogram_figure(held.last_scores, held.last_same, held.last.threshold,
                                     "held-out identities")  # fmt: skip
        fig.savefig(run_dir / "verify" / "held-out.hist.png")


# -- helpers ------------------------------------------------------------------------------------
def _same_identities(run_dir: Path, dls, resuming: bool, write: bool = True) -> None:
    """Record the run's identity split (``identities.json``; ``write``: this process writes the
    run folder); on resume, refuse data whose identities differ: the head's classes and the
    held-out set would silently mean others."""
    path = run_dir / "identities.json"
    now = {"train": list(dls.train_identities), "valid": list(dls.valid_identities)}
    if not resuming or not path.exists():
        if write:
            write_json(path, now)
        return
    saved = read_json(path)
    for part in ("train", "valid"):
        old, new = set(saved.get(part, [])), set(now[part])
        if old != new:
            gone, added = sorted(old - new), sorted(new - old)
            raise ValueError(
                f"{run_dir}: cannot resume: the data's {part} identities differ from the run's "
                f"({len(gone)} missing, e.g. {gone[:3]}; {len(added)} new, e.g. {added[:3]}); "
                "resume on the data it was trained on, or start a new run"
            )


def _pair_callbacks(cfg: Config) -> dict:
    """``{name: VerifyPairs}``: the protocols scored during training, ``cfg.pairs`` (any pair
    protocol, columns ``pairs_*``) and each of ``cfg.val_bins`` (columns ``<bin-stem>_*``)."""
    tfm = EvalTransform(cfg.img_size, cfg.mean, cfg.std)
    todo = [(cfg.pairs, cfg.pairs_root, cfg.pairs_format, cfg.flip_tta, cfg.pairs_every, "pairs_")]
    todo += [(b, None, "bin", True, cfg.val_bins_every, None) for b in cfg.val_bins]
    cbs: dict = {}
    for path, root, protocol, flip, every, prefix in todo:
        if not path:
            continue
        pairs = read_pairs(path, root, format=protocol, skip_missing=cfg.skip_bad)
        prefix = prefix or f"{pairs.name}_"
        _log(
            f"{pairs.format} pairs {pairs.name} ({pairs.source}): {len(pairs)} pairs, scored every "
            f"{every} epoch(s) (columns {prefix}*)"
        )
        # Keep the decoded, resized images in memory when they fit in ~1 GB: then each epoch
        # repeats only the forward pass, not the decoding.
        cache = len(pairs.paths) * 3 * cfg.img_size**2 * 4 < 2**30
        if pairs.name in cbs:
            raise ValueError(f"two protocols named {pairs.name!r} scored during training")
        cbs[pairs.name] = VerifyPairs(
            pairs, tfm, every=every, flip=flip, prefix=prefix, cache=cache
        )
    return cbs


def _identify_callbacks(cfg: Config) -> list:
    """``[IdentifyEvery]`` for ``cfg.val_identify`` (columns ``id_*``), or none."""
    if not cfg.val_identify:
        return []
    path = Path(cfg.val_identify)
    cfp = (path / "Protocol" / "Pair_list_F.txt").is_file() or (path / "Pair_list_F.txt").is_file()
    idset = (
        from_cfp(path, cfg.val_identify_root) if cfp
        else from_folder(path, gallery_per_id=1, seed=cfg.seed)
    )  # fmt: skip
    _log(
        f"identification {idset.summary().splitlines()[0]}, every {cfg.val_identify_every} epoch(s) (columns id_*)"
    )
    tfm = EvalTransform(cfg.img_size, cfg.mean, cfg.std)
    cache = len(idset.gallery + idset.probes) * 3 * cfg.img_size**2 * 4 < 2**30
    return [IdentifyEvery(idset, tfm, every=cfg.val_identify_every, cache=cache)]


class PlainTable:
    """A Learner logger printing fastai's progress table as plain text, one line per epoch."""

    def __init__(self, learn):
        self.learn, self.names = learn, None

    def __call__(self, row) -> None:
        names = list(self.learn.recorder.metric_names)
        if names != self.names:
            self.names = names
            print("  ".join(f"{n:>12}" for n in names), flush=True)
        cells = [f"{v:12.6f}" if isinstance(v, float) else f"{v!s:>12}" for v in row]
        print("  ".join(cells), flush=True)


def save_lr_plot(recorder, lr: float, path: Path, skip_end: int = 5) -> None:
    """The lr_find curve with the chosen lr marked. (fastai's ``plot_lr_find(return_fig=True)``
    returns nothing in fastai 2.8, and pyplot would change a notebook's backend.)"""
    lrs, losses = (
        recorder.lrs[:-skip_end] or recorder.lrs,
        recorder.losses[:-skip_end] or recorder.losses,
    )
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    ax.plot(lrs, [float(v) for v in losses])
    ax.axvline(lr, color="C1", ls="--", label=f"chosen lr {lr:.2g} (valley)")
    ax.set(xscale="log", xlabel="learning rate", ylabel="smoothed training loss", title="lr_find")
    ax.legend()
    fig.savefig(path, dpi=100, bbox_inches="tight")


def _num(v: Any) -> Any:
    try:
        return float(v)
    except (TypeError, ValueError):
        return v
