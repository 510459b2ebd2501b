"""``invismap assets list|fetch|verify``: see, download and check the official weights and datasets.

Only parses arguments, calls :mod:`invismap.assets` and prints; see that module for the search path.

Example:
    invismap assets fetch yolov5n.pt && invismap assets verify
"""

from __future__ import annotations

import argparse
import os

from invismap import assets
from invismap.errors import InvismapError


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``assets`` with sub-actions ``list``, ``fetch`` and ``verify``; each sets ``func``."""
    p = subparsers.add_parser(
        "assets", help="list, download and verify official weights and datasets",
        description=f"Official weights and datasets. Searched in ${assets.ENV_VAR} (folders separated by "
                    f"'{os.pathsep}'), then in {assets.cache_dir()}; each folder holds weights/ "
                    "and data/.")
    actions = p.add_subparsers(dest="assets_action", metavar="ACTION")
    def _usage(args: argparse.Namespace) -> int:
        p.print_help()
        return 2

    p.set_defaults(func=_usage)

    ls = actions.add_parser("list", help="every asset: present or missing, licence, source")
    ls.set_defaults(func=run_list)

    fe = actions.add_parser("fetch", help="download weights (checksum verified); print how to get datasets",
                            description="Download into DEST/<relpath> (default: the user cache), verifying "
                                        "the sha256 before the file appears. Datasets and derived files are "
                                        "not downloaded: where to get them and where to put them is printed.")
    fe.add_argument("names", nargs="*", metavar="NAME", help="asset names (see `invismap assets list`)")
    fe.add_argument("--all", action="store_true", help="every downloadable asset")
    fe.add_argument("--dest", "--out", dest="dest", default=None,
                    help=f"assets root to write into (default: {assets.cache_dir()})")
    fe.add_argument("--url", default=None, help="download from this mirror URL instead (one NAME only)")
    fe.add_argument("--timeout", type=float, default=assets.DEFAULT_TIMEOUT_S,
                    help="seconds to wait for the connection and each read (default: %(default)s)")
    fe.add_argument("--force", action="store_true", help="download again even if a verified copy exists")
    fe.set_defaults(func=run_fetch)

    ve = actions.add_parser("verify", help="check the sha256 of every present asset")
    ve.set_defaults(func=run_verify)
    return p


def run_list(args: argparse.Namespace) -> int:
    """Print the table of assets."""
    print(assets.format_table(assets.status_table(), ("name", "status", "licence", "source")))
    return 0


def run_fetch(args: argparse.Namespace) -> int:
    """Download the named assets; exit 1 when some could only be described (datasets, derived files)."""
    if args.all:
        names = [a.name for a in assets.ASSETS if a.kind == "download"]
    elif args.names:
        names = list(args.names)
    else:
        raise InvismapError("assets fetch: no asset named (give NAME..., or --all; "
                            "see `invismap assets list`)")
    if args.url and len(names) != 1:
        raise InvismapError("assets fetch: --url needs exactly one NAME")
    manual = 0
    for name in names:
        asset = assets.get_asset(name)
        if asset.is_dataset or (asset.url is None and not args.url):
            print(assets.manual_instructions(asset, args.dest))
            manual += 1
            continue
        path = assets.fetch(asset, args.dest, url=args.url, timeout=args.timeout, force=args.force)
        print(f"{asset.name}: {path}")
    return 1 if manual else 0


def run_verify(args: argparse.Namespace) -> int:
    """Print one line per present asset; exit 1 on any checksum mismatch."""
    results = assets.verify()
    rows = [(r.asset.name, r.status, str(r.path) if r.path else "-") for r in results]
    print(assets.format_table(rows, ("name", "status", "path")))
    bad = [r for r in results if r.failed]
    if bad:
        print(f"{len(bad)} asset(s) with a wrong sha256: delete them and run `invismap assets fetch NAME` "
              "(or copy them again)")
        return 1
    return 0
