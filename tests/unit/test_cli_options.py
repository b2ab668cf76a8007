"""The CLI's promises that need no database: every option shows its environment
variable in --help, and the error boundary tells a user's errors from bugs."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections.abc import Iterator

import click
import pytest
from click.testing import CliRunner
from sqlalchemy.exc import OperationalError

import runner.cli
from runner.cli import base, main
from runner.errors import ConfigError, NotFoundError


def _commands(
    command: click.Command, ctx: click.Context
) -> Iterator[tuple[click.Command, click.Context]]:
    yield command, ctx
    if isinstance(command, click.Group):
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            assert sub is not None, name
            yield from _commands(sub, click.Context(sub, info_name=name, parent=ctx))


def test_every_option_shows_an_environment_variable() -> None:
    root = click.Context(main, info_name="runner", auto_envvar_prefix="RUNNER")
    missing, seen = [], 0
    for command, ctx in _commands(main, root):
        for param in command.get_params(ctx):
            if not isinstance(param, click.Option) or param.hidden:
                continue
            if {"--help", "--version"} & set(param.opts):
                continue
            seen += 1
            record = param.get_help_record(ctx)
            if record is None or "env var: RUNNER_" not in record[1]:
                missing.append(f"{ctx.command_path} {param.opts[0]}")
    assert seen > 70 and missing == []
    # As a user reads it: `runner retry --help` shows them.
    shown = CliRunner().invoke(main, ["retry", "--help"]).stdout
    for variable in ("RUNNER_RETRY_FAILED", "RUNNER_RETRY_CANCELLED", "RUNNER_RETRY_ROUND"):
        assert variable in shown


def _operational(message: str) -> OperationalError:
    return OperationalError("SELECT 1", {}, Exception(message))


def test_errors_deep_in_task_groups_are_a_users_when_every_one_is() -> None:
    key = ConfigError("endpoint 'x': the environment variable K is not set")
    nested = ExceptionGroup(
        "outer", [ExceptionGroup("inner", [key, ConfigError(key.message)]), key]
    )
    errors = base.user_errors(nested)
    assert errors is not None and [str(e) for e in errors] == [key.message] * 3
    database = _operational("connection refused\n\tIs the server running?")
    assert base.user_errors(BaseExceptionGroup("g", [database, NotFoundError()])) is not None
    # One real bug among them: the traceback is kept.
    assert base.user_errors(ExceptionGroup("g", [key, ValueError("bug")])) is None
    assert base.user_errors(ValueError("bug")) is None
    assert base.error_line(database, "postgresql://u:pw@127.0.0.1:1/x") == (
        "error: database postgresql://u:***@127.0.0.1:1/x: "
        "connection refused Is the server running?"
    )


@pytest.mark.parametrize("message", ["one\ntwo", "  one  \n\n two"])
def test_a_runner_error_prints_on_one_line(message: str) -> None:
    assert base.error_line(ConfigError(message), None) == "error: one two"


def test_the_command_table_matches_the_commands() -> None:
    """`runner --help` lists commands from base.COMMANDS without importing their modules:
    each entry names the module that defines the command and the start of its help."""
    root = click.Context(main, info_name="runner")
    for name, (module, summary) in base.COMMANDS.items():
        command = main.get_command(root, name)
        assert command is not None and command.callback is not None, name
        assert command.callback.__module__ == f"runner.cli.{module}", name
        assert command.help is not None
        first = " ".join(inspect.cleandoc(command.help).split("\n\n")[0].split())
        assert first == summary, name
    # Every command the modules define is in the table (a module missing from it would
    # never be imported).
    for found in pkgutil.iter_modules(runner.cli.__path__):
        importlib.import_module(f"runner.cli.{found.name}")
    assert sorted(main.commands) == sorted(base.COMMANDS)
