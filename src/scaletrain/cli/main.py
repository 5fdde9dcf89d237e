"""`scaletrain` command line: parse, dispatch, and turn bad input into one `error:` line (exit 2)."""

from __future__ import annotations

import argparse
import os
import sys

from scaletrain import __version__
from scaletrain.errors import RunFailure, UserError


class _Parser(argparse.ArgumentParser):
    """argparse that reports misuse as one `error:` line and exit code 2, like every other bad input."""

    def error(self, message: str):  # type: ignore[override]
        # A flag's bad value reads like every other bad value, key first: `--tokens: must be ...`.
        head, sep, rest = message.partition(": ")
        if sep and head.startswith("argument -"):
            raise UserError(f"{head[len('argument '):]}: {rest}")
        raise UserError(f"{self.prog}: {message}")


def build_parser() -> argparse.ArgumentParser:
    from scaletrain.cli import (bench_commands, commands, compress_command, data_commands, diagnose_commands,
                                export_command, verify_command)

    parser = _Parser(prog="scaletrain", description="Train large models with torch.distributed, from "
                     "raw data to a deployable model. `scaletrain COMMAND --help` describes each command.")
    parser.add_argument("--version", action="version", version=f"scaletrain {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    commands.register(sub)
    data_commands.register(sub)
    verify_command.register(sub)
    bench_commands.register(sub)
    compress_command.register(sub)
    export_command.register(sub)
    diagnose_commands.register(sub)
    _add_verbosity(parser, top=True)
    return parser


def _add_verbosity(parser: argparse.ArgumentParser, top: bool) -> None:
    """-v/--verbose and -q/--quiet on the command and on every subcommand (before or after it)."""
    default = 0 if top else argparse.SUPPRESS
    group = parser.add_mutually_exclusive_group()
    group.add_argument("-v", "--verbose", action="count", default=default,
                       help="also debug messages and other libraries' known warnings")
    group.add_argument("-q", "--quiet", action="store_true", default=False if top else argparse.SUPPRESS,
                       help="warnings and errors only: no progress bar or step lines")
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                _add_verbosity(child, top=False)


def main(argv: list[str] | None = None) -> int:
    from scaletrain.cli import logs

    logs.configure()
    try:
        args = build_parser().parse_args(argv)
        if args.verbose and args.quiet:
            raise UserError("-v/--verbose and -q/--quiet: choose one")
        logs.configure(logs.level_for(args.verbose, args.quiet))
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit
        return code
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except RunFailure as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `scaletrain doctor RUN --json | head -1`: the reader has what it wanted
        _silence_stdout()
        return 141  # what a shell reports for a process ended by SIGPIPE
    except KeyboardInterrupt:
        print("interrupted: the last completed checkpoint is intact (resume with train.resume=auto)",
              file=sys.stderr)
        return 130
    except OSError as exc:
        if exc.errno is None:  # not from the file system: a bug, whose traceback is wanted
            raise
        # A full disk, a read-only folder, no permission: the command cannot go on, but this is no bug.
        where = f": {exc.filename}" if exc.filename else ""
        print(f"error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 1


def _silence_stdout() -> None:
    """Point stdout at /dev/null so that the interpreter's final flush does not fail a second time
    (the recipe of Python's signal documentation, "Note on SIGPIPE")."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # stdout is not a file (a test's StringIO)
        pass
