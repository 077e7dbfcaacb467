"""The command line as a whole: every command has help with an example and is in the README."""

from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from cli.main import cli

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
COMMANDS = sorted(cli.commands)


def test_version_and_short_help():
    runner = CliRunner()
    assert runner.invoke(cli, ["--version"]).output.startswith("sppdet, version ")
    result = runner.invoke(cli, ["-h"])
    assert result.exit_code == 0 and "Usage" in result.output


@pytest.mark.parametrize("name", COMMANDS)
def test_command_help_has_example(name):
    result = CliRunner().invoke(cli, [name, "--help"])
    assert result.exit_code == 0, result.output
    assert "Example" in result.output


@pytest.mark.parametrize("name", COMMANDS)
def test_command_documented_in_readme(name):
    assert f"sppdet {name}" in README, f"README.md lacks an example of `sppdet {name}`"


@pytest.mark.parametrize("name", ["extract", "finetune", "train-svm", "train-bbox", "detect", "eval"])
def test_method_option_on_feature_commands(name):
    result = CliRunner().invoke(cli, [name, "--help"])
    assert "--method [spp|rcnn]" in result.output
    wrong = CliRunner().invoke(cli, [name, "--method", "fast-rcnn", *(["x.png"] if name == "detect" else [])])
    assert wrong.exit_code == 2 and "'--method'" in wrong.output


def test_unknown_option_is_usage_error():
    result = CliRunner().invoke(cli, ["synth", "--no-such-option"])
    assert result.exit_code == 2


def test_every_command_is_a_click_command():
    assert all(isinstance(command, click.Command) for command in cli.commands.values())
