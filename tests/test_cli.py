"""The `ivon-lora` dispatcher (ivon_lora.cli): every command registered with its parser, typed config and main; the
options reach the command as its config; exit codes: the command's own, 2 and one line for a user error, an
internal error's traceback left alone. In process (cheap); the subprocess entry point is checked in test_guarantees."""

import argparse
import os

import pytest

from ivon_lora import cli
from ivon_lora.commands import COMMANDS, module_name
from ivon_lora.errors import USER_ERRORS, RecipeError, UsageError


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def test_every_command_has_a_parser_a_config_and_a_main():
    subcommands = _subcommands(cli.build_parser())
    assert list(subcommands) == list(COMMANDS)
    for name in COMMANDS:
        module = cli._command(name)
        assert module.__name__ == f"ivon_lora.commands.{module_name(name)}"
        assert callable(module.make_parser) and callable(module.config_from) and callable(module.main)
        assert subcommands[name].prog == f"ivon-lora {name}"


def test_module_name_maps_dashes():
    assert module_name("lm-eval") == "lm_eval" and module_name("train") == "train"


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: ivon-lora") and all(name in out for name in COMMANDS)


@pytest.mark.parametrize("argv", [[], ["no-such-command"], ["prune", "--fraction", "not-a-number"]])
def test_argparse_errors_exit_2_with_usage(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    assert exit_.value.code == 2 and "usage: ivon-lora" in capsys.readouterr().err


def test_the_options_reach_the_command_as_its_typed_config_and_its_status_is_the_exit_code(monkeypatch, tmp_path):
    from ivon_lora.commands import prune
    from ivon_lora.config import PruneConfig

    seen = []
    monkeypatch.setattr(prune, "main", lambda config: seen.append(config) or 3)
    config_file = tmp_path / "prune.yaml"
    config_file.write_text("fraction: 0.2\nscope: matrix\n")
    argv = ["prune", "RUN", str(config_file), "mode=denoise", "--fraction", "0.3", "--out", str(tmp_path / "out")]
    assert cli.main(argv) == 3
    (config,) = seen
    assert isinstance(config, PruneConfig)
    # flags over key=value over the YAML file; unset options keep the dataclass defaults
    assert (config.run_dir, config.fraction, config.scope, config.mode, config.criterion) == (
        "RUN",
        0.3,
        "matrix",
        "denoise",
        "snr",
    )


def test_a_command_that_returns_no_config_exits_0(capsys):
    assert cli.main(["train", "--help-keys"]) == 0
    assert "# ModelArguments" in capsys.readouterr().out


@pytest.mark.parametrize("error", [RecipeError("bad key\n  on two lines"), UsageError("bad\tcombination"),
                                   FileNotFoundError("no such dir")])  # fmt: skip
def test_a_user_error_exits_2_with_one_line_naming_the_command(error, monkeypatch, capsys):
    from ivon_lora.commands import export

    def fail(options):
        raise error

    monkeypatch.setattr(export, "config_from", fail)
    assert cli.main(["export", "RUN"]) == 2
    err = capsys.readouterr().err
    assert err == f"ivon-lora export: {' '.join(str(error).split())}\n" and "Traceback" not in err
    monkeypatch.setenv(cli.DEBUG_ENV, "1")
    assert cli.main(["export", "RUN"]) == 2
    assert "Traceback" in capsys.readouterr().err


def test_an_internal_error_is_not_caught(monkeypatch):
    from ivon_lora.commands import inspect

    monkeypatch.setattr(inspect, "config_from", lambda options: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        cli.main(["inspect", "RUN"])
    assert not issubclass(ZeroDivisionError, USER_ERRORS)


def test_a_config_error_is_found_before_the_command_runs(monkeypatch, tmp_path, capsys):
    from ivon_lora.commands import prune

    monkeypatch.setattr(prune, "main", lambda config: pytest.fail("main ran"))
    assert cli.main(["prune", "RUN", "scpoe=matrix", "--fraction", "0.3", "--out", str(tmp_path / "o")]) == 2
    assert "did you mean 'scope'" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "o")
