"""fvloss.study.spec: a study file checked, the search spaces from the registry, grids."""

from __future__ import annotations

import pytest

optuna = pytest.importorskip("optuna")

from study_common import write_study  # noqa: E402

from fvloss.cli import study as study_cli  # noqa: E402
from fvloss.losses import LOSSES  # noqa: E402
from fvloss.study import load_study, space_for  # noqa: E402


def test_every_loss_declares_its_search_space():
    for name, spec in LOSSES.items():
        for k, (low, high, log) in spec.search.items():
            assert k in spec.settings and low < high and (low > 0 or not log), (name, k)
    assert set(LOSSES["arcface"].search) == {"s", "m"} and set(LOSSES["center"].search) == {
        "lam",
        "alpha",
    }


def test_space_shared_then_the_losss_own_then_the_files(tmp_path):
    p = write_study(tmp_path)
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
        ("trials = 0", "trials must be a whole number >= 1"),
        ('[settings]\npairs = "p.txt"', r"give the tuning protocol as \[tune\]"),
        ('[tune]\npairs = "p.txt"\n[[test]]\npairs = "./p.txt"', "tuning must never see"),
        ("[[test]]\nroot = 'x'", "a table with `pairs`"),
        ('[[test]]\npairs = "a.txt"\nprotocl = "lfw"', r"unknown keys \['protocl'\]"),
        ("[finals]\nseed = [1]", r"\[finals\] unknown keys"),
        ('[finals]\nseeds = ["1"]', "seeds must be a list of whole numbers"),
        ('[identify]\nroot = "x"', r"exactly one of \['cfp', 'data', 'csv'\], got \[\]"),
        ('[identify]\ncfp = "a"\ndata = "b"', r"exactly one of .*got \['cfp', 'data'\]"),
        ('[identify]\ncfp = "a"\nunenroled = 0.5', r"\[identify\]: unknown keys \['unenroled'\]"),
    ],
)
def test_a_bad_study_file_is_one_clear_error(tmp_path, extra, message, capsys):
    p = write_study(tmp_path)
    text = p.read_text()
    head, _, tail = text.partition("\n[space]")
    if extra.startswith("["):
        p.write_text(text + "\n" + extra + "\n")
    else:
        p.write_text(extra + "\n" + text.replace("trials = 2\n", ""))
    with pytest.raises(ValueError, match=message):
        load_study(p)
    assert study_cli.main(["status", str(p)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fvloss study: ") and "Traceback" not in err


def test_a_grid_lists_values_and_its_size_is_the_budget(tmp_path):
    p = tmp_path / "grid.toml"
    p.write_text('losses = ["softmax", "arcface"]\nsampler = "grid"\n'
                 "[space]\nseed = [42, 43]\n[space.arcface]\nm = [0.4, 0.5, 0.6]\n")  # fmt: skip
    spec = load_study(p)
    assert spec.epochs is None and spec.trials is None  # the experiment's epochs, the grid's size
    assert space_for(spec, "softmax") == {"seed": ("grid", 42, 43)}  # no registry ranges
    assert space_for(spec, "arcface") == {
        "seed": ("grid", 42, 43),
        "arcface.m": ("grid", 0.4, 0.5, 0.6),
    }
    assert (spec.budget("softmax"), spec.budget("arcface")) == (2, 6)
    p.write_text(p.read_text().replace("[space]", "trials = 7\n[space]"))
    with pytest.raises(ValueError, match=r"trials = 7 is more than softmax's grid \(2\)"):
        load_study(p)
    p.write_text('losses = ["softmax"]\nsampler = "grid"\n')
    with pytest.raises(ValueError, match="a grid needs"):
        load_study(p)


def test_protocols_and_finals(tmp_path):
    p = write_study(tmp_path, tail=(
        '[tune]\npairs = "lfw/pairsDevTrain.txt"\nroot = "lfw"\n'
        '[[test]]\npairs = "lfw/pairsDevTest.txt"\nroot = "lfw"\n'
        '[[test]]\npairs = "cfp"\nprotocol = "cfp-fp"\n'
        "[finals]\nseeds = [1, 2, 3]\ndefaults = false\n"))  # fmt: skip
    spec = load_study(p)
    assert spec.metric == "pairs_auc"  # tuning on a pair protocol scores its columns
    assert [t.name for t in spec.test] == ["pairsDevTest", "cfp-fp"]
    assert spec.test[1].argv() == ["--pairs", "cfp", "--protocol", "cfp-fp"]
    assert spec.final_seeds == (1, 2, 3) and not spec.final_defaults
    assert spec.identify == ()  # no [identify]: the finals are not scored 1:N
    p.write_text(p.read_text() + '[identify]\ncfp = "cfp"\nroot = "cfp-al"\nunenrolled = 0.5\n')
    assert load_study(p).identify == ("--cfp", "cfp", "--root", "cfp-al", "--unenrolled", "0.5")


def test_the_base_experiments_pairs_are_the_tuning_protocol_and_never_a_test(tmp_path):
    (tmp_path / "exp.toml").write_text('pairs = "lfw/pairsDevTest.txt"\nimg_size = 48\n')
    p = write_study(tmp_path, head='base = "exp.toml"\n')
    spec = load_study(p)
    assert spec.tune.pairs == "lfw/pairsDevTest.txt" and spec.metric == "pairs_auc"
    p.write_text(p.read_text() + '[[test]]\npairs = "lfw/pairsDevTest.txt"\n')
    with pytest.raises(ValueError, match="tuning must never see the test pairs"):
        load_study(p)
