"""``invismap data import|show|summary``: bring a dataset in, look at it, count it."""

from __future__ import annotations

import argparse
import logging

from invismap.data.manifest import SPLITS

log = logging.getLogger(__name__)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="import, summarise and look at color/thermal pair datasets")
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    from invismap.data.importers import CHECKS, IMPORTERS

    imp = dsub.add_parser("import", help="import a dataset in its own layout into a pair dataset folder",
                          description="Write DST/manifest.csv (+ DST/labels/) describing the pairs in SRC.")
    imp.add_argument("format", choices=sorted(IMPORTERS), help="layout of SRC")
    imp.add_argument("src", help="the dataset's folder")
    imp.add_argument("dst", help="output folder for manifest.csv and converted labels")
    imp.add_argument("--check", choices=CHECKS, default=CHECKS[0],
                     help="decode: read every image in full to check it (default); header: read only each "
                          "file's size, much faster for large sets (pixel data is checked when training "
                          "reads a pair)")
    imp.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                     help="an option of the format's importer for another layout, e.g. for FLIR ADAS v1: "
                          "--option thermal_dir=train/thermal_16_bit --option thermal_suffix= (repeatable; "
                          "each importer's docstring lists its options)")
    imp.set_defaults(func=_import)

    show = dsub.add_parser("show", help="render a contact sheet (color | thermal, both label sets) to PNG")
    show.add_argument("data", help="manifest.csv or its folder")
    show.add_argument("--out", required=True, help="output PNG")
    show.add_argument("--n", type=int, default=12, help="number of pairs (spread over the dataset)")
    show.add_argument("--condition", help="only this condition (day, night, ...)")
    show.add_argument("--split", choices=SPLITS, help="only this split")
    show.set_defaults(func=_show)

    summ = dsub.add_parser("summary", help="pairs per split/condition, boxes, thermal-only objects")
    summ.add_argument("data", help="manifest.csv or its folder")
    summ.add_argument("--json", help="also write the table as JSON")
    summ.set_defaults(func=_summary)


def _print_summary(manifest, json_path=None) -> None:
    from invismap.data.summary import format_table, summarize
    from invismap.io import write_json

    rows = summarize(manifest)
    print(format_table(rows))
    if json_path:
        write_json(json_path, rows)


def _import(args) -> None:
    from invismap.data.importers import check_options, import_dataset
    from invismap.errors import InvismapError

    options = {}
    for text in args.option:
        key, eq, value = text.partition("=")
        if not eq or not key:
            raise InvismapError(f"--option {text}: write KEY=VALUE "
                                "(e.g. --option thermal_suffix=_PreviewData)")
        options[key] = value
    manifest = import_dataset(args.format, args.src, args.dst, check=args.check,
                              **check_options(args.format, options))
    print(f"imported {len(manifest)} pairs into {args.dst}/manifest.csv")
    _print_summary(manifest)


def _summary(args) -> None:
    from invismap.data.manifest import load_manifest
    from invismap.io import check_output_file

    check_output_file(args.json)
    _print_summary(load_manifest(args.data), args.json)


def _show(args) -> None:
    from invismap.data.manifest import load_manifest
    from invismap.data.show import contact_sheet
    from invismap.errors import InvismapError

    manifest = load_manifest(args.data).select(condition=args.condition, split=args.split)
    if len(manifest) == 0:
        raise InvismapError(f"{args.data}: no pairs with condition={args.condition} split={args.split}")
    out = contact_sheet(manifest, args.out, max_pairs=args.n)
    print(f"wrote {out}")
