"""The ``invismap`` command line: parse, call a stage's library function, report errors in one line.

Each stage package has a ``cli.py`` with ``add_parser(subparsers)``; its parser sets ``func`` to a
function taking the parsed ``argparse.Namespace``. Nothing here computes anything.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from invismap import __version__
from invismap.errors import InvismapError

# Stage modules that contribute subcommands, in the order ``invismap --help`` lists them.
STAGE_CLIS = [
    "invismap.data.cli",
    "invismap.assets_cli",
    "invismap.detector.cli",
    "invismap.registration.cli",
    "invismap.align.cli",
    "invismap.distill.cli",
    "invismap.invisibility.cli",
    "invismap.invisibility.predict",
    "invismap.pipeline.cli",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="invismap",
        description="Pixel invisibility maps: where a color camera cannot be trusted, learned from "
                    "color/thermal pairs without labels.",
    )
    parser.add_argument("--version", action="version", version=f"invismap {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks for errors")
    parser.add_argument("-v", "--verbose", action="store_true", help="more log output")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for mod in STAGE_CLIS:
        importlib.import_module(mod).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and isinstance(getattr(args, "overrides", None), list) and all(
            "=" in a and not a.startswith("-") for a in extra):
        args.overrides += extra  # key=value overrides written after an option (e.g. --from distill a.b=1)
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    # under torchrun every process runs this; the others than the first only log warnings and errors
    quiet = os.environ.get("RANK", "0") not in ("", "0")
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING if quiet else logging.INFO,
                        format="%(message)s", stream=sys.stderr)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    code = 1
    try:
        code = _run(args)
        return code
    finally:
        if "WORLD_SIZE" in os.environ:  # torchrun: leave the process group a trainer joined
            from invismap.engine.distributed import shutdown

            shutdown(wait_for_others=code == 0)


def _run(args: argparse.Namespace) -> int:
    try:
        result = args.func(args)
    except InvismapError as e:
        if args.debug:
            raise
        print(f"invismap: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("invismap: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a bug rather than a user error: still one line, the traceback with --debug
        if args.debug:
            raise
        print(f"invismap: internal error: {type(e).__name__}: {e} (run again with --debug for the traceback, "
              "and please report it)", file=sys.stderr)
        return 1
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
