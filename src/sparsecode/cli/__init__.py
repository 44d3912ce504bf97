"""The `sparsecode` command. Each subcommand is one module of this package (see ``COMMANDS``).

A command module has a docstring (first line: the one-line help in ``sparsecode --help``; the rest: the
command's description), an ``EXAMPLES`` string, ``add_arguments(parser)`` and ``run(args) -> int``.
Adding a command is adding its module and its name to ``COMMANDS`` (docs/usage.md, "Adding a command").

Every user mistake ends as one line on stderr (``error: ...``) and exit status 2, with nothing
half-written left behind.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType

from ..errors import Interrupted, SparsecodeError
from .options import ArgumentParser, HelpFormatter, parse_count

COMMANDS = (
    "train",
    "eval",
    "neurons",
    "compare",
    "features",
    "explain",
    "llm",
    "serve",
    "steer",
    "ablate",
    "attribute",
    "import",
    "export",
    "othello",
)
"""Subcommands in the order ``sparsecode --help`` lists them; each is the module of the same name here."""


def command_module(name: str) -> ModuleType:
    # "import" is a Python keyword: its module is import_
    return importlib.import_module(f".{name}_" if name == "import" else f".{name}", __name__)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The full parser; with ``only``, just that command gets its options (the others cost nothing to build,
    which keeps ``sparsecode serve`` from importing torch for the train flags)."""
    from .. import __version__

    parser = ArgumentParser(
        prog="sparsecode",
        description="Find the sparse, linear features in neural activations: train sparse autoencoders and "
        "transcoders, evaluate them, browse their features.",
    )
    parser.add_argument("--version", action="version", version=f"sparsecode {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        module = command_module(name)
        summary, _, description = (module.__doc__ or name).partition("\n")
        p = sub.add_parser(
            name,
            help=summary.strip(),
            description=description.strip() or summary.strip(),
            epilog=getattr(module, "EXAMPLES", None),
            formatter_class=HelpFormatter,
        )
        if only in (None, name):
            module.add_arguments(p)
        p.set_defaults(handler=module.run)  # not "run": commands have a RUN argument
    return parser


def _command_in(argv: list[str]) -> str | None:
    return next((a for a in argv if not a.startswith("-")), None)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = _command_in(argv)
    # only the command being run builds its options ("" for none: `sparsecode --help` lists the commands)
    try:
        with _sigint_deferred() as interrupted:  # the parser imports torch (seconds): see _sigint_deferred
            try:
                args = build_parser(only=command if command in COMMANDS else "").parse_args(argv)
            except SystemExit as e:  # a mistake, already reported in one line (options.ArgumentParser); --help exits
                if e.code in (0, None):
                    raise
                return 2
        if interrupted:
            raise KeyboardInterrupt
        return args.handler(args)
    except Interrupted as e:
        print(str(e), file=sys.stderr)
        return 130
    except SparsecodeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except ImportError as e:  # Ctrl-C inside an extension module's import surfaces as "initialization failed"
        if not _caused_by_interrupt(e):
            return _internal_error(e)
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 -- a bug: reported in one line by _internal_error
        return _internal_error(e)


@contextmanager
def _sigint_deferred() -> Iterator[list[int]]:
    """Ctrl-C while the modules load is noted, and acted on once they have loaded: a KeyboardInterrupt inside an
    extension module's import leaves it half-initialised, and the next import of it fails ("ImportError: cannot
    load module more than once per process"). Yields a list that is non-empty if Ctrl-C came meanwhile."""
    seen: list[int] = []
    try:
        previous = signal.signal(signal.SIGINT, lambda signum, frame: seen.append(signum))
    except ValueError:  # not the main thread: nothing to defer
        yield seen
        return
    try:
        yield seen
    finally:
        signal.signal(signal.SIGINT, previous)


def _caused_by_interrupt(e: BaseException) -> bool:
    while e is not None:
        if isinstance(e, KeyboardInterrupt):
            return True
        e = e.__cause__ or e.__context__
    return False


def _internal_error(e: Exception) -> int:
    """A bug, not a user mistake: still one line unless asked for more."""
    if os.environ.get("SPARSECODE_DEBUG"):
        raise e
    print(
        f"error: internal error: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''} "
        f"(set SPARSECODE_DEBUG=1 to see the traceback)",
        file=sys.stderr,
    )
    return 1


__all__ = ["COMMANDS", "build_parser", "main", "parse_count"]
