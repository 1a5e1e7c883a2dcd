"""The project's packaging: pyproject and environment.yml agree; the Makefile and CI do what the README says."""

import re
import tomllib
from pathlib import Path

import pytest

from dlcore.cli import COMMANDS, build_parser, hooks as _hooks

ROOT = Path(__file__).resolve().parent.parent


def _names(reqs):
    return {re.split(r"[<>=!~\[ ]", r.strip(), maxsplit=1)[0].lower() for r in reqs if r.strip()}


def test_environment_yml_lists_the_pyproject_packages():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = _names(project["dependencies"]) | _names(sum(project["optional-dependencies"].values(), []))
    lines = (ROOT / "environment.yml").read_text().splitlines()
    pip_block = [l.strip()[2:] for l in lines if re.match(r"^\s{6}- ", l)]
    assert _names(pip_block) == wanted


def test_constraints_pin_torch():
    text = (ROOT / "constraints.txt").read_text()
    assert "torch==2.14.1" in text and "torchvision==0.29.1" in text


def test_ci_runs_the_readme_test_command():
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme and "make figures" in readme


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_has_its_hooks_and_help(command):
    """Each registered command's module gives add_<cmd>_arguments and run_<cmd>, and --help builds."""
    add, run = _hooks(command)
    assert callable(add) and callable(run)
    parser = build_parser(command)
    with pytest.raises(SystemExit) as exit_:
        parser.parse_args([command, "--help"])
    assert exit_.value.code == 0
