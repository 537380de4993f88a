"""Entry point of the ``orthodiffusion`` command."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from .. import DISCLAIMER, __version__
from ..errors import UserError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="orthodiffusion",
        description=f"OrthoDiffusion for musculoskeletal MRI. {DISCLAIMER}",
    )
    parser.add_argument("--version", action="version", version=f"orthodiffusion {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    from .. import cli as cli_pkg

    for mod in sorted(pkgutil.iter_modules(cli_pkg.__path__), key=lambda m: m.name):
        if mod.name in {"main"} or mod.name.startswith("_"):
            continue
        module = importlib.import_module(f"{cli_pkg.__name__}.{mod.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    try:
        rc = args.func(args)
    except UserError as exc:
        print(f"orthodiffusion {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:  # a full disk or a folder it may not write: one line too
        from ..diskspace import as_user_error

        user = as_user_error(exc)
        if user is None:
            raise
        print(f"orthodiffusion {args.command}: error: {user}", file=sys.stderr)
        return user.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":  # python -m OrthoDiffusionLib.cli.main
    sys.exit(main())
