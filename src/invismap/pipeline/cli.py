"""``invismap run CONFIG.yaml`` (the whole experiment) and ``invismap screenshot`` (check the report)."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="the whole experiment, pairs to HTML report, each stage cached",
                       description="import -> displacement -> (register) -> (align) -> distill -> targets "
                                   "-> predictor -> eval_detector -> eval_maps -> (students -> experiments) "
                                   "-> (predictor_cv) -> (geometry) -> (fusion) -> gallery -> report. "
                                   "A stage re-runs only when its config section or an input changed; an "
                                   "interrupted run continues where it stopped.")
    p.add_argument("config", help="YAML config (see configs/demo.yaml)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. predictor.train.max_steps=100")
    p.add_argument("--from", dest="start", metavar="STAGE", help="re-run this stage and every later one")
    p.add_argument("--only", metavar="STAGE", help="re-run only this stage (its inputs must be up to date)")
    p.add_argument("--to", dest="until", metavar="STAGE", help="stop at this stage (run only what it needs)")
    p.add_argument("--list", action="store_true", help="list the stages and whether each is up to date")
    p.set_defaults(func=_run)

    s = sub.add_parser("screenshot", help="render a report page in headless Chromium: PNG + image check",
                       description="Open PAGE in headless Chromium, check that all its images load, "
                                   "and save a full-page screenshot (needs Debian's chromium package).")
    s.add_argument("page", help="report index.html")
    s.add_argument("--out", required=True, help="output PNG")
    s.add_argument("--width", type=int, default=1400, help="window width in pixels (default 1400)")
    s.set_defaults(func=_screenshot)


def _run(args) -> None:
    from invismap.pipeline import build_pipeline

    pipeline = build_pipeline(args.config, args.overrides)
    if args.list:
        from invismap.pipeline.runner import code_digest

        for stage in pipeline.stages:
            state = "to run"
            if pipeline.up_to_date(stage.name):
                same_code = (pipeline.record(stage.name) or {}).get("code") == code_digest()
                state = "up to date" + ("" if same_code else " (ran with other code)")
            print(f"{stage.name:<14} {pipeline.hash(stage.name)}  {state}")
        return
    pipeline.run(start=args.start, only=args.only, until=args.until)
    report = pipeline.dir("report") / "index.html"
    if report.is_file():
        print(f"report: {report}")


def _screenshot(args) -> None:
    from invismap.report.browser import check_page, screenshot

    images, broken = check_page(args.page)
    out = screenshot(args.page, args.out, width=args.width)
    print(f"{images} images, {broken} failed to load; screenshot: {out}")
    if broken:
        from invismap.errors import InvismapError

        raise InvismapError(f"{args.page}: {broken} of {images} images did not load")
