"""The one runner behind every recipe: data -> Learner -> lr_find -> fit -> evaluate -> run folder.

A recipe module (``fvloss.recipes.arcface`` ...) only names what differs from the defaults in
:class:`~fvloss.recipes.config.Config`, and calls :func:`run`.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

from ..jsonio import read_json, write_json
from ..runlock import RunLock
from .config import Config, check_config, resolve_config

__all__ = ["run", "main", "recipe_main", "RunResult"]


class RunResult(dict):
    """What :func:`run` returns (and writes to ``metrics.json``)."""


def _log(msg: str) -> None:
    from ..distributed import is_main

    if is_main():  # one log for a run on several processes
        print(f"[fvloss] {msg}", flush=True)


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


def run(cfg: Config, source: dict[str, str] | None = None) -> RunResult:
    """Train and evaluate one experiment; returns (and saves) its metrics.

    The run folder is locked (:class:`~fvloss.runlock.RunLock`) while it trains: a second
    process on the same folder is refused."""
    locks: list = []
    try:
        return _run(cfg, source, locks)
    finally:
        from ..distributed import teardown

        teardown()  # a run launched on several processes leaves its group
        for lock in locks:
            empty = _only_lock(lock.path.parent)
            if empty:  # a run that stopped before writing anything leaves no empty folder
                lock.path.unlink(missing_ok=True)  # while still held: no one else takes it
            lock.release()
            if empty:
                try:
                    lock.path.parent.rmdir()
                except OSError:
                    pass


def _only_lock(run_dir: Path) -> bool:
    try:
        return [p.name for p in run_dir.iterdir()] == [".lock"]
    except OSError:
        return False


def _run(cfg: Config, source: dict[str, str] | None, locks: list) -> RunResult:
    import torch
    from fastai.callback.schedule import valley
    from fastai.torch_core import set_seed

    from .. import distributed as fdist
    from ..callbacks.checkpoint import (
        Checkpoint,
        ResumeFrom,
        StopSignals,
        load_checkpoint,
        model_state,
        restore_weights,
    )  # fmt: skip
    from ..callbacks.guard import DivergenceGuard
    from ..callbacks.precision import mixed_precision_cb
    from ..data import face_dls
    from ..eval.callback import VerifyPairs
    from ..eval.plots import score_histogram_figure, training_figure
    from ..eval.report import RunMetrics, write_outputs, write_pair_figures
    from ..learner import face_learner
    from ..synthetic import SyntheticSpec, default_cache_dir, make_synthetic

    t_start = time.time()
    ddp = fdist.launched()  # torchrun / accelerate launch with several processes
    if ddp:
        fdist.setup(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    main = fdist.is_main()
    if cfg.resume:
        run_dir = Path(cfg.resume)
        saved = json.loads((run_dir / "config.json").read_text())
        # the run's own settings win over defaults; only epochs may be extended on resume
        cfg = Config.from_saved(
            {
                **saved,
                "resume": str(run_dir),
                "run_dir": str(run_dir),
                **(
                    {"epochs": cfg.epochs}
                    if source and source.get("epochs") in ("config", "flags")
                    else {}
                ),
            }
        )
    else:  # rank 0 names it (a time stamp), every rank uses that one
        run_dir = Path(fdist.on_main(lambda: str(_new_run_dir(cfg))))
    check_config(cfg)  # before anything is read or written
    if main:  # the run folder is rank 0's
        run_dir.mkdir(parents=True, exist_ok=True)
        locks.append(RunLock(run_dir).acquire())  # before anything is written into it

    data_name = "synthetic" if cfg.data is None else Path(cfg.data).name
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
        data, img_size=cfg.img_size, bs=cfg.bs, valid_pct=cfg.valid_pct, seed=cfg.seed, hflip=cfg.hflip,
        mean=cfg.mean, std=cfg.std, extra_aug=cfg.extra_aug, check=cfg.check, skip_bad=cfg.skip_bad,
        num_workers=None if cfg.workers < 0 else cfg.workers, preload=cfg.preload,
        preload_share=cfg.preload_share, channels_last=cfg.channels_last, stream=cfg.stream,
        index_dir=run_dir / "index" if cfg.stream else None,
    )  # fmt: skip
    if ddp:  # each rank its share of every epoch, without a broadcast (fvloss.seeded)
        dls.train.shard(fdist.rank(), fdist.world_size())
        if hasattr(dls.valid, "shard"):  # each held-out image embedded once, then gathered
            dls.valid.shard(fdist.rank(), fdist.world_size(), pad=True)
        _log(f"{fdist.world_size()} processes: batch {cfg.bs} per process, "
             f"{cfg.bs * fdist.world_size()} per step (the lr is the global batch's)")  # fmt: skip
    _log(f"data ({data_name}): {dls.report.summary()}")
    _log(f"training images: {dls.pipeline}")
    _log(f"split by identity: {dls.n_classes} training identities ({len(dls.train_ds)} images), "
         f"{len(dls.valid_identities)} validation identities ({len(dls.valid_ds)} images) for verification")  # fmt: skip

    _same_identities(run_dir, dls, resuming=bool(cfg.resume), write=main)
    pair_cbs = _pair_callbacks(cfg)
    learn = face_learner(
        dls, loss=cfg.loss, arch=cfg.arch, emb_dim=cfg.emb_dim, pretrained=cfg.pretrained, dropout=cfg.dropout,
        settings=cfg.loss_settings.get(cfg.loss), partial_fc=cfg.partial_fc or None, margin_hold=cfg.margin_hold, margin_warmup=cfg.margin_warmup,
        val_pairs=cfg.val_pairs or None, val_seed=cfg.seed, wd=cfg.wd, channels_last=cfg.channels_last, compile=cfg.compile, cbs=list(pair_cbs.values()),
        path=run_dir, model_dir="checkpoints",
    )  # fmt: skip
    if not cfg.progress or not main:  # logs and CI: one plain line per epoch, not bars
        learn.remove_cb(learn.progress)
        learn.logger = PlainTable(learn) if main else (lambda *a, **k: None)
    xb, _ = dls.one_batch()

    def probe():  # on rank 0; the others take its choice
        cb, why = mixed_precision_cb(
            cfg.precision, dls.device, learn.model.to(dls.device), xb[:16],
            cache=default_cache_dir() / "precision_probe.json",
        )  # fmt: skip
        return _chosen_precision(cb), why

    chosen, why = fdist.on_main(probe)
    mp_cb, _ = mixed_precision_cb(chosen, dls.device)
    if mp_cb is not None:
        learn.add_cb(mp_cb)
    if cfg.guard:
        learn.add_cb(DivergenceGuard(
            cfg.guard_factor, cfg.guard_patience, cfg.guard_warmup, every=cfg.guard_every or None
        ))  # fmt: skip
    _log(f"device {dls.device}; precision: {why}")

    start_epoch, lr, resume, trained_s = 0, cfg.lr, None, 0.0
    if cfg.resume:
        state = load_checkpoint(run_dir, map_location=dls.device)
        restore_weights(learn, state)
        resume = ResumeFrom(state)
        start_epoch, batch, lr = resume.epoch0, resume.batch0, float(state["meta"]["lr"])
        trained_s = float(state["meta"].get("train_s", 0.0))  # (older checkpoints: absent)
        where = f"epoch {start_epoch}" + (f", batch {batch}" if batch else "")
        _log(f"resuming {run_dir} at {where} with lr {lr:.3g}")
        if start_epoch >= cfg.epochs and (run_dir / "metrics.json").exists():
            _log(f"{start_epoch} of {cfg.epochs} epochs already done: nothing to train")
            return RunResult(json.loads((run_dir / "metrics.json").read_text()))
    if ddp:  # DDP through fastai's DistributedTrainer (accelerate), lr_find included
        from ..callbacks.distributed import FaceDistributed

        learn.add_cb(FaceDistributed(dls.device))
    if lr is None:  # (a resumed run has its own)
        _log(f"lr_find ({cfg.lr_find_iters} iterations; weights are restored afterwards)")
        # on every rank together: one search over the global batch (FaceLearner.lr_find keeps
        # the weights in memory on each); rank 0's suggestion is the run's
        sugg = learn.lr_find(num_it=cfg.lr_find_iters, suggest_funcs=(valley,), show_plot=False)
        lr = fdist.broadcast(float(sugg.valley))
        if main:
            save_lr_plot(learn.recorder, lr, run_dir / "lr_find.png")
        _log(f"lr_find suggests lr={lr:.3g} (plot: {run_dir / 'lr_find.png'})")
    # the loss's full settings, defaults included: what this run trained with
    tables = {**cfg.loss_settings, cfg.loss: cfg.settings}
    resolved = {**cfg.to_dict(), "loss_settings": tables, "lr": lr, "data": str(data),
                "run_dir": str(run_dir)}  # fmt: skip
    if main:
        write_json(run_dir / "config.json", resolved)
        write_json(run_dir / "data_report.json", dls.report.to_dict())
        from ..callbacks.tracking import tracking_cbs

        learn.add_cbs(tracking_cbs(cfg.log, run_dir, resolved))  # after lr_find: the fit only

    t_fit = time.time()
    fits = {"one_cycle": learn.fit_one_cycle, "flat": learn.fit_flat_cos}  # config.SCHEDULES
    # SIGTERM (a scheduler's preemption) / SIGINT: checkpoint after the step, exit 143 / 130
    with StopSignals() as stop:
        ckpt = Checkpoint(lr, cfg.checkpoint_steps, cfg.checkpoint_minutes, stop=stop,
                          trained_s=trained_s)  # fmt: skip
        if start_epoch < cfg.epochs:
            fits[cfg.schedule](
                cfg.epochs, lr, start_epoch=start_epoch, cbs=[ckpt, *([resume] if resume else [])]
            )
    fit_s = time.time() - t_fit
    weights, _ = model_state(learn)  # every rank: a sharded head gathers its blocks
    if not main:  # rank 0 writes the model, the metrics and the outputs
        return RunResult({})
    torch.save(weights, run_dir.resolve() / "model.pth", pickle_protocol=2)  # = learn.save's

    # final evaluation on the validation identities (and the pair file, if any)
    names = list(learn.recorder.metric_names[1:-1])
    # a resumed run's recorder holds the restored epochs' values too (ResumeFrom)
    trained = start_epoch < cfg.epochs
    values = [v for v in learn.recorder.values if len(v)] if trained else list(resume.values)
    history = [
        dict(zip(["epoch", *names], [e, *map(_num, vals)], strict=False))
        for e, vals in enumerate(values)
    ]
    # images trained in this process: a resumed run started at (epoch0, batch0)
    first_iter = resume.epoch0 * len(dls.train) + resume.batch0 if resume else 0
    n_seen = cfg.bs * fdist.world_size() * max(learn.train_iter - first_iter, 0) if trained else 0
    metrics = RunMetrics(
        name=cfg.name or cfg.loss, loss=cfg.loss, data=data_name, run_dir=str(run_dir), lr=lr,
        precision=why, device=str(dls.device), epochs=cfg.epochs, history=history,
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
    for name, cb in pair_cbs.items():
        if cb.last is None:
            continue
        meta = {"run": str(run_dir), "pairs": cb.pairs.source, "protocol": cb.pairs.format}
        # ROC, per-pair scores (for compare), the score histogram, the hardest pairs' images
        write_outputs(cb.last, run_dir / "verify", name, meta=meta, scores=cb.last_scores,
                      pairs=cb.last_pairs)  # fmt: skip
        metrics.evals[name] = cb.last.scalars()
    held = next((c for c in learn.cbs if isinstance(c, VerifyPairs) and c.held_out), None)
    if held is not None and held.last is not None:  # the held-out identities' last epoch
        (run_dir / "verify").mkdir(exist_ok=True)
        if held.last_pairs is not None:  # the histogram and the hardest pairs' images
            write_pair_figures(held.last, held.last_scores, held.last_pairs, run_dir / "verify",
                               "held-out", title="held-out identities")  # fmt: skip
        else:
            fig = score_histogram_figure(held.last_scores, held.last_same, held.last.threshold,
                                         "held-out identities")  # fmt: skip
            fig.savefig(run_dir / "verify" / "held-out.hist.png")
    if history and "auc" in history[0]:
        best = max(history, key=lambda h: h.get("auc", float("-inf")))
        metrics.best_epoch = best["epoch"]
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


def _chosen_precision(cb) -> str:
    """The precision a ``mixed_precision_cb`` result stands for, to repeat it on other ranks."""
    if cb is None:
        return "fp32"
    mode = str(getattr(cb, "amp_mode", "bf16"))  # CPUAutocast is bf16; fastai's names its mode
    return "bf16" if "bf16" in mode.lower() else "fp16"


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
    from ..data import EvalTransform
    from ..eval.callback import VerifyPairs
    from ..eval.protocols import read_pairs

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
    from matplotlib.figure import Figure

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


def quiet_library_warnings() -> None:
    """Hide deprecation notices that libraries raise about their own code, which a user cannot
    act on: fastai 2.8 calls ``torch.jit.script`` at import, which torch now deprecates. Called
    by the command-line entries only, never at import, so notebooks keep their warning filters."""
    import warnings

    warnings.filterwarnings(
        "ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning
    )


def main(
    argv: list[str] | None = None, recipe: dict[str, Any] | None = None, prog: str = "fvloss train"
) -> int:
    """Command-line entry: ``fvloss train [--loss L] [--config FILE] [--FLAG VALUE ...]``.

    Bad input (a missing folder or file, an unreadable image, an invalid setting, a run folder
    that already holds a run) ends with one line naming the problem and exit status 2, not a
    traceback; a run stopped by the divergence guard with one line and exit status 3; a run
    stopped by SIGTERM / SIGINT, after writing its checkpoint, with one line and the shell's
    128 + signal number (143 / 130); ``FVLOSS_DEBUG=1`` re-raises for the traceback.
    """
    quiet_library_warnings()
    try:
        cfg, source = resolve_config(argv, recipe, prog=prog)
        run(cfg, source)
    except Exception as e:
        status = _stop_status(e)
        if os.environ.get("FVLOSS_DEBUG") or not (status or isinstance(e, (OSError, ValueError))):
            raise
        what = "stopped" if status == 128 + getattr(e, "signum", -128) else "error"
        print(f"{prog}: {what}: {getattr(e, 'message', e)}", file=sys.stderr)
        return status or 2
    return 0


def _stop_status(e: BaseException) -> int:
    """The exit status of a run stopped on purpose (the divergence guard: 3; a signal: 128 +
    its number), else 0. Imported only then: ``--help`` stays free of torch and fastai."""
    from ..callbacks.checkpoint import RunInterrupted
    from ..callbacks.guard import TrainingDiverged

    if isinstance(e, TrainingDiverged):
        return 3
    return 128 + e.signum if isinstance(e, RunInterrupted) else 0


def recipe_main(loss: str, **overrides: Any):
    """The ``main(argv=None)`` of a recipe module that trains ``loss``."""

    def main_(argv: list[str] | None = None) -> int:
        return main(argv, {"loss": loss, **overrides}, prog=f"python -m fvloss.recipes.{loss}")

    main_.__doc__ = f"Train and evaluate the {loss} recipe; ``--help`` lists the flags."
    return main_


if __name__ == "__main__":
    sys.exit(main())
