"""``fiftyone-lazsl`` command line.

Each sub-command group lives in its own module exposing ``register(subparsers)``;
the handler is stored as ``func`` on the parsed namespace. User errors
(:class:`fiftyone_lazsl.errors.UserError` and its kin) print one line and exit 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Modules of this package that add sub-commands, in help order.
COMMAND_MODULES = (
    "datasets",     # import-folder, app
    "attributes",   # attributes import|list|show|delete|generate
    "classify",     # classify
    "features",     # features info|prune, rescore
    "audit",        # audit, evaluate
    "demo",         # demo
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fiftyone-lazsl",
        description="LaZSL zero-shot classification with attribute evidence, for FiftyOne datasets.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(f"{__name__}.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``fiftyone-lazsl`` console script."""
    from fiftyone_lazsl.errors import UserError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        rc = args.func(args)
    except (UserError, FileNotFoundError) as e:
        msg = " ".join(str(e).split())  # always one line
        print(f"fiftyone-lazsl {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"fiftyone-lazsl {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
