"""The command line's argparse tree, walked in process: every subcommand says what it does (in
the list and in its own ``--help``), and every argument and option of every subcommand, positional
ones included, has a help line that ``--help`` shows.

The commands themselves run as processes in tests/functional/test_cli.py.
"""

from __future__ import annotations

import argparse
import contextlib
import io

import pytest

from proxy.cli import build_parser

# What a parser's --help cannot show for an action.
_HIDDEN = (None, "", argparse.SUPPRESS)


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, tuple[argparse.ArgumentParser, str | None]]:
    """name -> (its parser, its line in the parent's list), for every subcommand."""
    found: dict[str, tuple[argparse.ArgumentParser, str | None]] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            listed = {choice.dest: choice.help for choice in action._choices_actions}
            for name, sub in action.choices.items():
                found[name] = (sub, listed.get(name))
    return found


PARSER = build_parser()
SUBCOMMANDS = _subcommands(PARSER)


def test_the_walk_finds_every_subcommand() -> None:
    # A fixed list, so that a walk that finds nothing cannot pass the tests below.
    assert set(SUBCOMMANDS) == {
        "serve",
        "check-config",
        "keygen",
        "demo",
        "tls-selfsigned",
        "encrypt",
        "decrypt",
        "inspect",
        "verify-bucket",
        "abort-stale-uploads",
        "restore-backup",
        "rotate",
        "migrate",
    }


def test_top_level_options_have_help() -> None:
    for action in PARSER._actions:
        assert action.help not in _HIDDEN, f"medusa-crypt-proxy {action.option_strings or action.dest}: no help"


@pytest.mark.parametrize("name", sorted(SUBCOMMANDS))
def test_every_subcommand_and_each_of_its_actions_has_help(name: str) -> None:
    sub, listed = SUBCOMMANDS[name]
    assert listed not in _HIDDEN, f"{name}: no line in `medusa-crypt-proxy --help`"
    assert sub.description not in _HIDDEN, f"{name}: its --help does not say what it does"
    missing = ["/".join(action.option_strings) or action.dest for action in sub._actions if action.help in _HIDDEN]
    assert not missing, f"{name}: no help for {missing}"


@pytest.mark.parametrize("name", sorted(SUBCOMMANDS))
def test_help_output_shows_each_argument_with_its_help(name: str) -> None:
    sub, _ = SUBCOMMANDS[name]
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as done:
        PARSER.parse_args([name, "--help"])
    assert done.value.code == 0
    text = " ".join(out.getvalue().split())  # help is wrapped to the terminal's width
    assert " ".join(str(sub.description).split()) in text
    for action in sub._actions:
        help_text = str(action.help) % {**vars(action), "prog": sub.prog, "default": action.default}
        assert " ".join(help_text.split()) in text, f"{name}: {action.dest} help not shown"
    positionals = [a for a in sub._actions if not a.option_strings]
    if positionals:
        assert "positional arguments:" in out.getvalue()
