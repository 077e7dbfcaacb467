"""The command line as a whole: every command has help with an example and is in the README."""

from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from cli.main import cli

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
NAMES = cli.list_commands(click.Context(cli))


def test_version_and_short_help():
    runner = CliRunner()
    assert runner.invoke(cli, ["--version"]).output.startswith("sppdet, version ")
    result = runner.invoke(cli, ["-h"])
    assert result.exit_code == 0 and "Usage" in result.output


@pytest.mark.parametrize("name", NAMES)
def test_command_help_has_example(name):
    result = CliRunner().invoke(cli, [name, "--help"])
    assert result.exit_code == 0, result.output
    assert "Example" in result.output


@pytest.mark.parametrize("name", NAMES)
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
    context = click.Context(cli)
    assert len(NAMES) >= 13
    assert all(isinstance(cli.get_command(context, name), click.Command) for name in NAMES)


def test_the_command_table_says_what_each_command_says():
    """``sppdet --help`` lists commands from cli.main.COMMANDS without importing them."""
    import click

    from cli.main import COMMANDS, cli

    context = click.Context(cli)
    for name, (_, _, summary) in COMMANDS.items():
        command = cli.get_command(context, name)
        assert command.name == name
        assert command.get_short_help_str(limit=1000) == summary


def test_help_imports_no_heavy_library():
    """``sppdet --help`` and every ``sppdet COMMAND --help`` start without torch, torchvision,
    OpenCV, scikit-learn or matplotlib (those load inside the commands)."""
    import subprocess
    import sys

    script = (
        "import sys\n"
        "from cli.main import COMMANDS, cli\n"
        "for argv in [['--help']] + [[name, '--help'] for name in COMMANDS]:\n"
        "    try:\n"
        "        cli.main(argv, prog_name='sppdet', standalone_mode=False)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print(sorted(m for m in ('torch', 'torchvision', 'cv2', 'sklearn', 'matplotlib') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert result.stdout.strip().splitlines()[-1] == "[]"
