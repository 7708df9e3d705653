"""Experiment configuration: TOML files, layering precedence and command-line flags."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest

from fvloss.cli.train import build_parser, resolve_config
from fvloss.config import SYNTHETIC_OVERRIDES, Config
from fvloss.experiment import load_experiment as load_toml
from fvloss.experiment import loss_settings

REPO = Path(__file__).resolve().parents[1]


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_synthetic_toml_is_synthetic_overrides():
    assert load_toml(REPO / "recipes" / "synthetic.toml") == SYNTHETIC_OVERRIDES


def test_defaults_with_data():
    cfg, source = resolve_config(["--data", "/faces"])
    assert cfg == Config(data="/faces")
    assert source == {"data": "flags"}
    assert (cfg.loss, cfg.img_size, cfg.epochs, cfg.lr) == ("softmax", 160, 10, None)


def test_synthetic_layer_only_without_data():
    cfg, source = resolve_config([])
    for k, v in SYNTHETIC_OVERRIDES.items():
        assert getattr(cfg, k) == v and source[k] == "synthetic"
    cfg, source = resolve_config(["--data", "/faces"])
    assert all(k not in source for k in SYNTHETIC_OVERRIDES)
    assert cfg.img_size == Config().img_size


def test_precedence(tmp_path):
    toml = write(tmp_path / "exp.toml", "img_size = 48\nepochs = 7\nbs = 32\n[cosface]\nm = 0.3\n")
    recipe = {"loss": "arcface", "bs": 16, "emb_dim": 64}
    # recipe < synthetic (no data) < TOML < flags
    cfg, source = resolve_config(["--config", str(toml), "--epochs", "3"], recipe)
    assert cfg.loss == "arcface" and source["loss"] == "recipe"
    assert cfg.loss_settings == {"cosface": {"m": 0.3}} and source["loss_settings"] == "config"
    assert cfg.img_size == 48 and source["img_size"] == "config"  # TOML beats synthetic
    assert cfg.epochs == 3 and source["epochs"] == "flags"  # flag beats TOML
    assert cfg.bs == 32  # TOML beats recipe
    assert cfg.emb_dim == 64 and source["emb_dim"] == "recipe"  # recipe beats default
    assert cfg.lr_find_iters == SYNTHETIC_OVERRIDES["lr_find_iters"]  # synthetic beats default
    assert source["lr_find_iters"] == "synthetic"
    assert "arch" not in source and cfg.arch == Config().arch


def test_recipe_below_synthetic():
    cfg, source = resolve_config([], {"loss": "center", "epochs": 99})
    assert cfg.loss == "center" and cfg.epochs == SYNTHETIC_OVERRIDES["epochs"]
    assert source["epochs"] == "synthetic"
    cfg, _ = resolve_config(["--data", "x"], {"epochs": 99})
    assert cfg.epochs == 99


def test_data_in_toml_switches_synthetic_off(tmp_path):
    toml = write(tmp_path / "exp.toml", 'data = "/faces"\n')
    cfg, source = resolve_config(["--config", str(toml)])
    assert cfg.data == "/faces" and cfg.img_size == Config().img_size
    assert "img_size" not in source


def test_extends(tmp_path):
    write(tmp_path / "base.toml", 'arch = "resnet18"\nepochs = 3\nbs = 8\n')
    child = write(tmp_path / "sub" / "child.toml", 'extends = "../base.toml"\nbs = 16\n')
    assert load_toml(child) == {"arch": "resnet18", "epochs": 3, "bs": 16}
    grandchild = write(tmp_path / "sub" / "gc.toml", 'extends = "child.toml"\nepochs = 5\n')
    assert load_toml(grandchild) == {"arch": "resnet18", "epochs": 5, "bs": 16}
    cfg, source = resolve_config(["--config", str(grandchild), "--bs", "4"])
    assert (cfg.arch, cfg.epochs, cfg.bs) == ("resnet18", 5, 4)
    assert source["arch"] == "config"


def test_unknown_key_names_the_file(tmp_path):
    bad = write(tmp_path / "bad.toml", "epochs = 2\nlearning_rate = 0.1\n")
    with pytest.raises(ValueError) as e:
        load_toml(bad)
    assert str(bad) in str(e.value) and "learning_rate" in str(e.value)
    child = write(tmp_path / "sub" / "child.toml", 'extends = "../bad.toml"\n')
    with pytest.raises(ValueError, match="learning_rate") as e:
        load_toml(child)
    assert "bad.toml" in str(e.value)
    with pytest.raises(ValueError, match="learning_rate"):
        resolve_config(["--config", str(bad)])


def test_invalid_and_missing_toml(tmp_path):
    broken = write(tmp_path / "broken.toml", "epochs = = 2\n")
    with pytest.raises(ValueError, match="invalid TOML") as e:
        load_toml(broken)
    assert str(broken) in str(e.value)
    with pytest.raises(FileNotFoundError, match="nope.toml"):
        load_toml(tmp_path / "nope.toml")
    child = write(tmp_path / "child.toml", 'extends = "gone.toml"\n')
    with pytest.raises(FileNotFoundError, match="gone.toml"):
        load_toml(child)


def test_scale_flags_accept_auto():
    cfg, _ = resolve_config(["--data", "d", "--loss", "arcface", "--arcface-s", "auto"])
    assert cfg.loss_settings == {"arcface": {"s": "auto"}}
    assert loss_settings(cfg) == {
        "s": "auto",
        "m": 0.5,
        "easy_margin": False,
        "eps": 1e-7,
        "grad": "paper",
    }
    cfg, _ = resolve_config(
        ["--data", "d", "--loss", "cosface", "--cosface-s", "30", "--cosface-m", "0.2"]
    )
    assert cfg.loss_settings["cosface"]["s"] == 30.0
    assert isinstance(cfg.loss_settings["cosface"]["s"], float)
    assert loss_settings(cfg) == {"s": 30.0, "m": 0.2}
    assert loss_settings(Config(loss="softmax")) == {"bias": True}
    assert loss_settings(Config(loss="center")) == {"bias": True, "lam": 0.003, "alpha": 0.5,
                                              "reduction": "mean"}  # fmt: skip
    with pytest.raises(SystemExit):
        resolve_config(["--arcface-s", "big"])


def test_loss_tables_in_toml_merge_with_extends_and_flags(tmp_path):
    write(tmp_path / "base.toml", "[arcface]\ns = 30\nm = 0.4\n[center]\nlam = 0.01\n")
    child = write(tmp_path / "child.toml", 'extends = "base.toml"\n[arcface]\nm = 0.3\n')
    assert load_toml(child)["loss_settings"] == {"arcface": {"s": 30, "m": 0.3},
                                                 "center": {"lam": 0.01}}  # fmt: skip
    cfg, src = resolve_config(
        ["--config", str(child), "--arcface-easy-margin", "--loss", "arcface"]
    )
    assert cfg.loss_settings["arcface"] == {"s": 30, "m": 0.3, "easy_margin": True}
    assert loss_settings(cfg)["m"] == 0.3 and src["loss_settings"] == "flags"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[arcface]\nmargin = 0.5\n", "unknown setting 'margin' of loss 'arcface'"),
        ('[arcface]\nm = "big"\n', "arcface.m = 'big'"),
        ("[arcface]\neasy_margin = 1\n", "arcface.easy_margin = 1"),
        ("[tripletface]\nm = 0.5\n", r"\[tripletface\] is not a loss"),
        ("arcface_s = 30\n", r"`arcface_s` is now `s` in a \[arcface\] table"),
        ('loss = "tripletface"\n', "unknown loss 'tripletface'"),
        ('schedule = "cyclic"\n', "schedule must be one of"),
        ('opt = "lamb"\n', "opt must be one of"),
        ('opt = "adam"\nnesterov = true\n', "nesterov momentum is an SGD setting"),
        ('opt = "sgd"\nnesterov = true\nmomentum = 0.0\n', "nesterov needs momentum > 0"),
        ('schedule = "step"\n', "the step schedule needs milestones"),
        ('schedule = "step"\nmilestones = [8, 4]\n', "milestones must be increasing"),
        ('schedule = "step"\nmilestones = [4, 80]\n', "go past the last epoch"),
        ('schedule = "poly"\nmilestones = [4]\n', "milestones are the step schedule's"),
        ('schedule = "poly"\nwarmup_epochs = 1\nwarmup_steps = 5\n', "epochs or in steps"),
        ('schedule = "flat"\nwarmup_steps = 5\n', "flat has no warm-up"),
        ("lr_batch = 1024\n", "lr_batch scales a given lr"),
        ("lr = 0.1\naccum = 0\n", "accum >= 1"),
        ('wd_exclude = ["norm", "conv"]\n', "wd_exclude must be one of"),
        ('clip_part = "head"\n', "clip_part must be one of"),
        ('precision = "fp8"\n', "precision must be one of"),
        ('arch = "resnet35"\n', "unknown arch 'resnet35'"),
        ("partial_fc = 1.5\n", r"partial_fc is a sample rate in \(0, 1\]"),
        ('loss = "adaface"\npartial_fc = 0.1\n', "partial_fc shards"),
    ],
)
def test_bad_settings_are_errors_before_any_data_is_read(tmp_path, text, message):
    toml = write(tmp_path / "bad.toml", 'data = "/no/such/folder"\n' + text)
    with pytest.raises(ValueError, match=message):
        resolve_config(["--config", str(toml)])


def test_the_config_names_every_optimiser_and_schedule_its_registry_has():
    from fvloss.callbacks.schedule import SCHEDULES
    from fvloss.optim import OPTIMIZERS, WD_EXCLUDE

    choices = {f.name: f.metadata["choices"] for f in fields(Config)}
    assert choices["opt"] == tuple(OPTIMIZERS)
    assert choices["schedule"] == tuple(SCHEDULES)
    assert choices["wd_exclude"] == tuple(WD_EXCLUDE)


def test_saved_configs_from_before_loss_tables_still_load():
    old = {**Config().to_dict(), "loss": "arcface"}
    del old["loss_settings"]
    old.update(arcface_s="auto", arcface_m=0.4, easy_margin=False, cosface_s=64.0,
               cosface_m=0.35, center_lam=0.003, center_alpha=0.5)  # fmt: skip
    cfg = Config.from_saved(old)
    assert loss_settings(cfg) == {
        "s": "auto",
        "m": 0.4,
        "easy_margin": False,
        "eps": 1e-7,
        "grad": "paper",
    }


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--pretrained"], True),
        (["--pretrained", "true"], True),
        (["--pretrained", "yes"], True),
        (["--pretrained", "1"], True),
        (["--pretrained", "false"], False),
        (["--pretrained", "Off"], False),
        (["--pretrained", "0"], False),
    ],
)
def test_bool_flags(argv, expected):
    cfg, source = resolve_config(["--data", "d", *argv])
    assert cfg.pretrained is expected and source["pretrained"] == "flags"


def test_bool_flag_rejects_junk():
    with pytest.raises(SystemExit):
        resolve_config(["--progress", "maybe"])


def test_typed_flags():
    cfg, _ = resolve_config(
        ["--data", "d", "--lr", "1e-3", "--bs", "16", "--valid-pct", "0.2", "--arch", "resnet18",
         "--skip-bad", "--workers", "0", "--val-pairs", "100", "--progress", "false"]
    )  # fmt: skip
    assert cfg.lr == 1e-3 and isinstance(cfg.lr, float)
    assert cfg.bs == 16 and isinstance(cfg.bs, int)
    assert (cfg.valid_pct, cfg.arch, cfg.skip_bad, cfg.workers, cfg.val_pairs, cfg.progress) == (
        0.2, "resnet18", True, 0, 100, False
    )  # fmt: skip
    with pytest.raises(SystemExit):
        resolve_config(["--bs", "sixteen"])
    with pytest.raises(SystemExit):
        resolve_config(["--no-such-flag", "1"])


def test_every_field_but_extra_aug_has_a_flag():
    ap = build_parser("x")
    flags = {a.dest for a in ap._actions}
    from dataclasses import fields

    missing = {f.name for f in fields(Config)} - flags
    assert missing == {"extra_aug", "loss_settings"}  # tables; loss settings have their flags
    from fvloss.losses import LOSSES

    for name, spec in LOSSES.items():
        for key in spec.settings:
            assert f"{name}.{key}" in flags


def test_extra_aug_from_toml(tmp_path):
    toml = write(
        tmp_path / "aug.toml",
        'data = "d"\n[[extra_aug]]\ntransform = "RandomBrightnessContrast"\np = 0.3\n',
    )
    cfg, _ = resolve_config(["--config", str(toml)])
    assert cfg.extra_aug == [{"transform": "RandomBrightnessContrast", "p": 0.3}]


@pytest.mark.parametrize("path", sorted((REPO / "recipes").glob("*.toml")), ids=lambda p: p.name)
def test_shipped_recipes_load(path):
    cfg, _ = resolve_config(["--config", str(path)])
    assert isinstance(cfg, Config)


@pytest.mark.parametrize("path", sorted((REPO / "recipes").glob("*.toml")), ids=lambda p: p.name)
def test_shipped_recipes_build_their_augmentation(path):
    # Albumentations checks its arguments only when a transform is built: do it here, not after
    # minutes of data scanning in a real run.
    import numpy as np

    from fvloss.data import train_pipeline

    cfg, _ = resolve_config(["--config", str(path)])
    tfm = train_pipeline(cfg.img_size, hflip=cfg.hflip, extra=cfg.extra_aug)
    out = tfm(image=np.full((112, 112, 3), 128, np.uint8))["image"]
    assert out.shape == (cfg.img_size, cfg.img_size, 3)


def test_a_recipe_and_a_file_naming_another_loss_is_an_error(tmp_path):
    """python -m fvloss.recipes.arcface --config celeba64_softmax.toml silently trained softmax."""
    toml = write(tmp_path / "softmax.toml", 'loss = "softmax"\n')
    with pytest.raises(
        ValueError, match=r"trains arcface, but the experiment file says loss = 'softmax'"
    ):
        resolve_config(
            ["--config", str(toml)], {"loss": "arcface"}, prog="python -m fvloss.recipes.arcface"
        )
    with pytest.raises(ValueError, match="--loss says loss = 'center'"):
        resolve_config(["--loss", "center"], {"loss": "arcface"})
    # the same loss, or no recipe (fvloss train), is fine
    assert resolve_config(["--config", str(toml)], {"loss": "softmax"})[0].loss == "softmax"
    assert resolve_config(["--config", str(toml), "--loss", "center"])[0].loss == "center"


def test_celeba64_losses_differ_only_in_the_cost_function():
    # Issue 5's comparison is fair only if the three experiment files share every other setting.
    base = load_toml(REPO / "recipes" / "celeba64.toml")
    losses = set()
    for loss in ("softmax", "center", "arcface"):
        cfg = load_toml(REPO / "recipes" / f"celeba64_{loss}.toml")
        losses.add(cfg["loss"])
        rest = {k: v for k, v in cfg.items() if k not in ("loss", "name")}
        assert rest == {k: v for k, v in base.items() if k not in ("loss", "name")}, loss
    assert losses == {"softmax", "center", "arcface"}


# Config fields that shape the run as a whole (what to read, how long, where to write, how to
# score and log), not the DataLoaders or the Learner that face_dls / face_learner build.
RUN_LEVEL = {
    "name", "data", "epochs", "lr", "lr_find_iters", "schedule", "precision", "threads",
    "guard", "guard_factor", "guard_patience", "guard_warmup", "guard_every", "deterministic",
    "pairs", "pairs_root", "pairs_format", "pairs_every", "flip_tta", "val_bins",
    "val_bins_every", "out", "run_dir", "resume", "checkpoint_steps", "checkpoint_minutes",
    "progress", "log", "lr_batch", "warmup_epochs", "warmup_steps", "poly_power", "milestones",
    "step_factor", "init", "source", "published", "hardware", "expect_images",
    "expect_identities", "val_identify", "val_identify_root", "val_identify_every",
}  # fmt: skip


def test_the_notebook_api_builds_what_fvloss_train_builds(tiny_synthetic):
    """``face_learner(face_dls(root))`` and ``fvloss train --data root`` resolve every setting
    alike: the notebook API's defaults are Config's (fvloss.config.DEFAULTS)."""
    from dataclasses import fields

    from fvloss.data import face_dls
    from fvloss.learner import face_learner

    cfg, _ = resolve_config(["--data", str(tiny_synthetic)])
    dls = face_dls(tiny_synthetic)
    learn = face_learner(dls)
    built = {**dls.settings, **learn.settings}
    want = {**cfg.to_dict(), "loss_settings": {cfg.loss: loss_settings(cfg)}}
    assert built == {k: want[k] for k in built}
    # every setting of the data or the model is one the notebook API takes
    assert set(built) == {f.name for f in fields(Config)} - RUN_LEVEL
