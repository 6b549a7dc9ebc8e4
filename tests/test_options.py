"""`ivon_lora.commands._options.add_field_arguments`: a command's flags built from its config dataclass's field
metadata, so help text, defaults, choices and bounds are written once."""

import argparse
from dataclasses import dataclass, field

import pytest

from ivon_lora.commands._options import add_field_arguments


@dataclass
class Toy:
    run_dir: str | None = field(default=None, metadata={"help": "the run"})
    samples: int | None = field(default=None, metadata={"help": "posterior samples S (default: the protocol's)"})
    batch_size: int = field(default=32, metadata={"help": "examples per forward pass"})
    fractions: list[float] = field(default_factory=lambda: [0.0], metadata={"help": "fractions", "bounds": (0.0, 1.0)})
    scope: str = field(default="global", metadata={"help": "where to rank", "choices": ("global", "matrix")})
    sweep: bool = field(default=False, metadata={"help": "sweep"})
    hidden: str = field(default="x", metadata={"help": "not a flag", "cli": False})


def _parser():
    parser = argparse.ArgumentParser()
    add_field_arguments(parser, Toy, skip=("run_dir",))
    return parser


def test_flags_types_choices_bounds_and_defaults_come_from_the_fields():
    parser = _parser()
    assert vars(parser.parse_args([])) == {"samples": None, "batch_size": None, "fractions": None, "scope": None}
    options = parser.parse_args(["--batch-size", "4", "--fractions", "0.1", "0.5", "--scope", "matrix", "--sweep"])
    assert (options.batch_size, options.fractions, options.scope, options.sweep) == (4, [0.1, 0.5], "matrix", True)
    text = parser.format_help()
    assert "examples per forward pass (default 32)" in text and "fractions (default 0.0)" in text
    assert "(default: the protocol's)" in text and "(default None)" not in text
    assert "--run-dir" not in text and "--hidden" not in text


@pytest.mark.parametrize("argv", [["--scope", "row"], ["--fractions", "1.5"], ["--batch-size", "x"]])
def test_a_value_outside_the_fields_choices_or_bounds_is_a_usage_error(argv, capsys):
    with pytest.raises(SystemExit) as exit_status:
        _parser().parse_args(argv)
    assert exit_status.value.code == 2 and argv[0] in capsys.readouterr().err
