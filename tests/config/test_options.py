"""`ivon_lora.commands._options.add_field_arguments`: a command's flags built from its config dataclass's field
metadata, so help text, defaults, choices and bounds are written once."""

import argparse
import dataclasses
import re
from dataclasses import dataclass, field

import pytest

from ivon_lora.commands._options import add_field_arguments
from ivon_lora.validation import Bounds


@dataclass
class Toy:
    run_dir: str | None = field(default=None, metadata={"help": "the run"})
    samples: int | None = field(default=None, metadata={"help": "posterior samples S (default: the protocol's)"})
    batch_size: int = field(default=32, metadata={"help": "examples per forward pass"})
    fractions: list[float] = field(
        default_factory=lambda: [0.0], metadata={"help": "fractions", "bounds": Bounds(0.0, 1.0)}
    )
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
    assert "examples per forward pass (default 32)" in text and "fractions (in [0, 1]; default 0.0)" in text
    assert "(default: the protocol's)" in text and "(default None)" not in text
    assert "--run-dir" not in text and "--hidden" not in text


@pytest.mark.parametrize("argv", [["--scope", "row"], ["--batch-size", "x"]])
def test_a_value_outside_the_fields_choices_or_of_another_type_is_a_usage_error(argv, capsys):
    with pytest.raises(SystemExit) as exit_status:
        _parser().parse_args(argv)
    assert exit_status.value.code == 2 and argv[0] in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------------------------
# Every command's parser is its config dataclass's fields: one flag per field, with the field's help, and nothing else.


def _commands_with_a_config() -> dict[str, tuple[argparse.ArgumentParser, type]]:
    from ivon_lora import cli
    from ivon_lora.commands import COMMANDS

    (subparsers,) = [a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    found = {name: (subparsers.choices[name], cli._command(name).CONFIG_CLASS) for name in COMMANDS
             if hasattr(cli._command(name), "CONFIG_CLASS")}  # fmt: skip
    # train reads a recipe (its keys: --help-keys), lm-eval passes lm-eval's own arguments on.
    assert set(found) == {"eval", "prune", "export", "inspect", "generate", "sensitivity", "merge", "refine", "compare"}
    return found


def _expected_help(field: dataclasses.Field) -> str:
    """The field's help, then its bounds and its default where the help does not already say it (a plain
    re-statement of the rule)."""
    help_text = field.metadata["help"]
    if field.default_factory is not dataclasses.MISSING:
        default = " ".join(str(item) for item in field.default_factory())
    else:
        default = None if field.default is None or field.default is False else str(field.default)
    notes = [str(field.metadata["bounds"])] if "bounds" in field.metadata else []
    notes += [] if default is None or "default" in help_text else [f"default {default}"]
    return f"{help_text} ({'; '.join(notes)})" if notes else help_text


@pytest.mark.parametrize(
    "command", ["eval", "prune", "export", "inspect", "generate", "sensitivity", "merge", "refine"]
)
def test_each_field_is_exactly_one_flag_with_the_fields_help_and_each_flag_a_field(command):
    parser, config_class = _commands_with_a_config()[command]
    flags = [a for a in parser._actions if a.option_strings and not isinstance(a, argparse._HelpAction)]
    (positional,) = [a for a in parser._actions if not a.option_strings]
    fields = [f for f in dataclasses.fields(config_class) if f.metadata.get("cli") is not False]
    # A renamed field's former flag stays, saying so (the config renames its value, with a FutureWarning).
    former = {f.metadata["formerly"]: f for f in fields if "formerly" in f.metadata}
    for a in [a for a in flags if a.dest in former]:
        new = "--" + former[a.dest].name.replace("_", "-")
        assert (
            a.option_strings == ["--" + a.dest.replace("_", "-")] and a.help == f"deprecated: the former name of {new}"
        )
    flags = [a for a in flags if a.dest not in former]
    for f in fields:
        assert f.metadata.get("help"), f"{config_class.__name__}.{f.name} has no help"
        if "positional" in f.metadata:
            assert positional.help.startswith(f"{f.metadata['positional']}: {f.metadata['help']};"), f.name
            assert not [a for a in flags if a.dest == f.name]
            continue
        (flag,) = [a for a in flags if a.dest == f.name]
        assert flag.option_strings == [f.metadata.get("flag", "--" + f.name.replace("_", "-"))]
        assert flag.help == _expected_help(f), f.name
        assert flag.default in (None, argparse.SUPPRESS)  # a flag not given leaves the YAML config's value alone
    assert sorted(a.dest for a in flags) == sorted(f.name for f in fields if "positional" not in f.metadata)


@pytest.mark.parametrize(
    "command", ["eval", "prune", "export", "inspect", "generate", "sensitivity", "merge", "refine"]
)
def test_no_flag_given_means_no_option_set(command):
    parser, _ = _commands_with_a_config()[command]
    assert {k: v for k, v in vars(parser.parse_args(["RUN"])).items() if v is not None} == {"inputs": ["RUN"]}


def test_the_derived_flags_keep_their_types_choices_and_arities():
    """A few flags whose parse is more than a string: they must read as the hand-written parsers read them."""
    parsers = {name: parser for name, (parser, _) in _commands_with_a_config().items()}
    options = parsers["eval"].parse_args(["R", "--task", "a", "b", "--prune-fractions", "0", "0.5", "--ece-bins", "5",
                                          "--decoding", "averaged", "--samples-per-pass", "4", "--sweep"])  # fmt: skip
    assert (options.task, options.prune_fractions, options.ece_bins) == (["a", "b"], [0.0, 0.5], [5])
    assert (options.decoding, options.samples_per_pass, options.sweep) == ("averaged", 4, True)
    options = parsers["generate"].parse_args(["R", "--prompt", "one", "--prompt", "two", "--no-chat"])
    assert (options.prompt, options.no_chat) == (["one", "two"], True)  # repeated, not replaced
    options = parsers["merge"].parse_args(["A", "B", "--method", "linear", "ties", "--weights", "0.5", "1"])
    assert (options.inputs, options.method, options.weights) == (["A", "B"], ["linear", "ties"], [0.5, 1.0])
    for command, argv in [("eval", ["--select-by", "loss"]), ("merge", ["--method", "average"]),
                          ("sensitivity", ["--variance", "exact-ish"]), ("generate", ["--samples", "two"])]:  # fmt: skip
        with pytest.raises(SystemExit):
            parsers[command].parse_args(["R", *argv])


@pytest.mark.parametrize(
    "command, argv, message",
    [("eval", ["--temperatures", "1", "0"], "Invalid temperatures value: 0.0 (must be > 0)"),
     ("prune", ["--fraction", "1.5", "--out", "o"], "Invalid fraction value: 1.5 (must be in [0, 1])"),
     ("sensitivity", ["--samples", "1"], "Invalid samples value: 1 (must be >= 2)"),
     ("refine", ["--ess", "inf", "--out", "o"], "Invalid ess value: inf (must be a finite number > 0)"),
     ("eval", ["--batch-size", "0"], "Invalid batch_size value: 0 (must be >= 1)")],
)  # fmt: skip
def test_a_number_outside_its_fields_bounds_is_refused_by_the_config_as_from_a_yaml_file(command, argv, message):
    """The bounds are the field's metadata, checked once, by the config: a flag, key=value or YAML value out of them is
    the same one-line error naming the key (the flag's --help states them)."""
    from ivon_lora import cli
    from ivon_lora.errors import RecipeError

    parser, config_class = _commands_with_a_config()[command]
    assert str(config_class.__dataclass_fields__[argv[0][2:].replace("-", "_")].metadata["bounds"]) in message
    with pytest.raises(RecipeError, match=re.escape(message)):
        cli._command(command).config_from(parser.parse_args(["R", *argv]))


def test_several_positionals_fill_a_list_field_and_one_run_dir_is_refused_twice():
    from ivon_lora.commands import eval as eval_command
    from ivon_lora.commands import merge as merge_command
    from ivon_lora.errors import RecipeError

    parsers = {name: parser for name, (parser, _) in _commands_with_a_config().items()}
    config = merge_command.config_from(parsers["merge"].parse_args(["A", "B", "seed=3", "--method", "linear",
                                                                      "--out", "o"]))  # fmt: skip
    assert (config.run_dirs, config.seed, config.method) == (["A", "B"], 3, ["linear"])
    with pytest.raises(RecipeError, match="Two run dirs given"):
        eval_command.config_from(parsers["eval"].parse_args(["A", "B"]))


def test_a_renamed_flag_or_key_still_works_with_a_warning_naming_the_new_one_and_both_are_an_error(tmp_path):
    """--batched-samples (key batched_samples) was renamed --samples-per-pass: "samples" counts posterior samples."""
    from ivon_lora.commands import eval as eval_command
    from ivon_lora.errors import RecipeError

    parser = _commands_with_a_config()["eval"][0]
    renamed = re.escape(
        "'batched_samples' on the command line is deprecated: rename it 'samples_per_pass' (flag --samples-per-pass)"
    )
    for argv in (["--batched-samples", "3"], ["batched_samples=3"]):
        with pytest.warns(FutureWarning, match=renamed):
            config = eval_command.config_from(parser.parse_args(["R", *argv]))
        assert config.samples_per_pass == 3 and not hasattr(config, "batched_samples")
    (tmp_path / "e.yaml").write_text("batched_samples: 2\n")
    with pytest.warns(FutureWarning, match=f"'batched_samples' in {tmp_path / 'e.yaml'} is deprecated"):
        assert eval_command.config_from(parser.parse_args(["R", str(tmp_path / "e.yaml")])).samples_per_pass == 2
    with pytest.raises(
        RecipeError,
        match="'batched_samples' and 'samples_per_pass' on the command line: "
        "'batched_samples' is the former name of 'samples_per_pass'; keep only",
    ):
        eval_command.config_from(parser.parse_args(["R", "--batched-samples", "3", "--samples-per-pass", "3"]))
