"""A CLI that explains itself: every flag documented with its default (from the settings' own
documentation), an example under every command's --help, misspellings answered."""

from __future__ import annotations

import argparse

import pytest

from fvloss.cli import COMMANDS, main
from fvloss.cli.train import build_parser
from fvloss.losses import LOSSES


def _flags(ap: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in ap._actions if a.option_strings and a.dest not in ("help", "config")]


def test_every_train_flag_has_a_help_line_with_its_default():
    ap = build_parser("fvloss train")
    flags = _flags(ap)
    assert len(flags) > 90  # the run's settings and every loss's
    for a in flags:
        assert a.help and "; default " in a.help, a.option_strings
        assert a.help.split(";")[0] not in (a.dest, a.dest.split(".")[-1]), a.option_strings
    choices = {a.dest: a.choices for a in flags if a.choices}
    assert choices["loss"] == sorted(LOSSES) and choices["preload"] == ("auto", "on", "off")


def test_loss_settings_are_documented_where_they_are_defined():
    for name, spec in LOSSES.items():
        assert set(spec.setting_docs()) == set(spec.settings), name
    assert "center term" in LOSSES["center"].setting_docs()["lam"]  # CenterLoss's docstring
    assert "sub-centres" in LOSSES["subcenter"].setting_docs()["k"]


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_shows_an_example(command, capsys):
    try:
        code = main([command, "--help"])
    except SystemExit as e:  # argparse's exit; some commands turn it into their status
        code = e.code
    assert code == 0
    out = capsys.readouterr().out
    assert "examples:" in out and f"fvloss {command}" in out.split("examples:")[1]


def test_a_misspelt_flag_or_choice_gets_the_closest(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--lrr", "0.1"])
    assert "--lrr: did you mean --lr?" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--loss", "arcfce"])
    assert "did you mean 'arcface'?" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--zzzzzz"])
    assert "did you mean" not in capsys.readouterr().err  # nothing close: no guess
