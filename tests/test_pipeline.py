"""``invismap run``: stage caching, --from/--only, resume, and one real tiny run from MSRS pairs to the
report."""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from invismap.cli import main
from invismap.config import added_key, to_dict
from invismap.errors import InvismapError
from invismap.pipeline.runner import Inputs, Pipeline, Settings, Stage

# ------------------------------------------------------------------------------ runner (toy stages)


@dataclass
class ToyConfig:
    out: str
    a: int = 1
    b: int = 1
    c: int = 1
    calls: list = field(default_factory=list)


def _toy_stage(name: str, needs: tuple[str, ...], key: str, calls: list, fail_at: set | None = None) -> Stage:
    def run(settings: Settings, inputs: Inputs, folder: Path, resume: bool) -> dict:
        calls.append((name, resume))
        if fail_at and name in fail_at:
            raise KeyboardInterrupt  # an interruption in the middle of the stage
        (folder / "out.txt").write_text(str(getattr(settings, key)))
        return {"value": getattr(settings, key)}

    return Stage(name, needs, lambda cfg: {key: getattr(cfg, key)}, run, lambda cfg: f"make {name}",
                 lambda s: f"value {s['value']}")


def toy_pipeline(cfg: ToyConfig, fail_at: set | None = None) -> Pipeline:
    stages = [_toy_stage("first", (), "a", cfg.calls, fail_at),
              _toy_stage("second", ("first",), "b", cfg.calls, fail_at),
              _toy_stage("third", ("first",), "c", cfg.calls, fail_at),
              _toy_stage("report", ("second", "third"), "a", cfg.calls, fail_at)]
    return Pipeline(cfg, stages, echo=lambda line: None)


def test_second_run_is_cached(tmp_path):
    cfg = ToyConfig(str(tmp_path))
    assert set(toy_pipeline(cfg).run().values()) == {"ran"}
    assert set(toy_pipeline(cfg).run().values()) == {"cached"}
    assert len(cfg.calls) == 4


def test_stage_that_ran_with_other_code_is_flagged_not_rerun(tmp_path, monkeypatch):
    from invismap.pipeline import runner

    cfg = ToyConfig(str(tmp_path))
    lines: list[str] = []
    toy_pipeline(cfg).run()
    monkeypatch.setattr(runner, "code_digest", lambda: "edited-code")
    p = toy_pipeline(cfg)
    p.echo = lines.append
    assert set(p.run().values()) == {"cached"}
    assert len(lines) == 4 and all("ran with other code; --from" in line for line in lines)
    p.run(start="second")  # re-run with the current code: no longer flagged
    lines.clear()
    p.run()
    flagged = ("[1/4] first: up to date, skipped "
               f"({p.hash('first')}) - it ran with other code; "
               "--from first re-runs it and what follows")
    assert [line for line in lines if "other code" in line] == [flagged]


def test_changed_setting_reruns_only_what_depends_on_it(tmp_path):
    cfg = ToyConfig(str(tmp_path))
    toy_pipeline(cfg).run()
    cfg.b = 2
    status = toy_pipeline(cfg).run()
    assert status == {"first": "cached", "second": "ran", "third": "cached", "report": "ran"}
    assert (tmp_path / "second" / "out.txt").read_text() == "2"


@dataclass
class Augmentation:
    flip: float = 0.5


@dataclass
class AugmentationUpgraded:  # the same section after an upgrade added keys whose defaults change nothing
    flip: float = 0.5
    gamma: tuple[float, float] = added_key((1.0, 1.0))


@dataclass
class Section:
    x: int = 1
    augment: Augmentation = field(default_factory=Augmentation)


@dataclass
class SectionUpgraded:
    x: int = 1
    y: float = added_key(0.0)
    augment: AugmentationUpgraded = field(default_factory=AugmentationUpgraded)


def test_a_key_added_since_keeps_earlier_runs_at_its_default(tmp_path):
    def pipeline(section) -> Pipeline:
        def run(settings: Settings, inputs: Inputs, folder: Path, resume: bool) -> dict:
            return {"x": settings.section.x}
        stage = Stage("only", (), lambda cfg: {"section": section}, run, lambda cfg: "make it",
                      lambda s: f"x {s['x']}")
        return Pipeline(ToyConfig(str(tmp_path)), [stage], echo=lambda line: None)

    assert pipeline(Section()).run() == {"only": "ran"}
    assert pipeline(SectionUpgraded()).run() == {"only": "cached"}
    # a list equal to the tuple default (as YAML gives it) is the default too, in a nested section as well
    as_yaml = SectionUpgraded(augment=AugmentationUpgraded(gamma=[1.0, 1.0]))
    assert pipeline(as_yaml).run() == {"only": "cached"}
    assert pipeline(SectionUpgraded(augment=AugmentationUpgraded(gamma=(0.5, 2.0)))).run() == {"only": "ran"}
    assert pipeline(SectionUpgraded(y=0.5)).run() == {"only": "ran"}  # set: hashed like any key
    assert pipeline(SectionUpgraded(x=2)).run() == {"only": "ran"}
    # written out in full everywhere else (a run's config.yaml)
    assert to_dict(SectionUpgraded()) == {"x": 1, "y": 0.0, "augment": {"flip": 0.5, "gamma": [1.0, 1.0]}}


def test_from_and_only(tmp_path):
    cfg = ToyConfig(str(tmp_path))
    toy_pipeline(cfg).run()
    assert toy_pipeline(cfg).run(start="third") == {"first": "cached", "second": "cached", "third": "ran",
                                                     "report": "ran"}
    assert toy_pipeline(cfg).run(only="second") == {"second": "ran"}
    assert toy_pipeline(cfg).run(start="first", until="third") == {"first": "ran", "third": "ran"}
    with pytest.raises(InvismapError, match="not a stage of this config"):
        toy_pipeline(cfg).run(only="nope")


def test_only_refuses_stale_inputs(tmp_path):
    cfg = ToyConfig(str(tmp_path))
    toy_pipeline(cfg).run()
    cfg.a = 5  # 'first' is now out of date
    with pytest.raises(InvismapError, match="'first' it depends on is not up to date"):
        toy_pipeline(cfg).run(only="second")


def test_interrupted_stage_resumes_and_changed_stage_starts_clean(tmp_path):
    cfg = ToyConfig(str(tmp_path))
    with pytest.raises(KeyboardInterrupt):
        toy_pipeline(cfg, fail_at={"second"}).run()
    record = json.loads((tmp_path / "second" / "stage.json").read_text())
    assert record["finished"] is False
    (tmp_path / "second" / "partial.bin").write_text("checkpoint")
    toy_pipeline(cfg).run()
    assert ("second", True) in cfg.calls  # same settings: told to resume, its folder kept
    assert (tmp_path / "second" / "partial.bin").exists()
    cfg.b = 3
    toy_pipeline(cfg).run()
    assert not (tmp_path / "second" / "partial.bin").exists()  # new settings: started from an empty folder


def test_a_changed_stage_that_stops_loses_no_finished_results(tmp_path):
    """A changed stage runs beside its finished results (``<stage>.previous``): put back when it stops before
    writing anything, taken back when the config is changed back, dropped once the new run finishes. A
    stopped ``--from`` run (same settings) resumes."""
    cfg, resumed = ToyConfig(str(tmp_path)), []

    def pipeline(stop: str = "") -> Pipeline:
        def run(settings: Settings, inputs: Inputs, folder: Path, resume: bool) -> dict:
            resumed.append(resume)
            if stop == "at once":  # e.g. a bad setting found before any work
                raise KeyboardInterrupt
            (folder / "out.txt").write_text(str(settings.b))
            if stop == "midway":
                raise KeyboardInterrupt
            return {"value": settings.b}

        stage = Stage("s", (), lambda c: {"b": c.b}, run, lambda c: "make s", lambda s: "")
        return Pipeline(cfg, [stage], echo=lambda line: None)

    out, previous = tmp_path / "s" / "out.txt", tmp_path / "s.previous"
    pipeline().run()
    cfg.b = 2
    with pytest.raises(KeyboardInterrupt):
        pipeline("at once").run()
    assert out.read_text() == "1" and not previous.exists() and pipeline().up_to_date("s") is False
    with pytest.raises(KeyboardInterrupt):
        pipeline("midway").run()
    assert out.read_text() == "2" and (previous / "out.txt").read_text() == "1"
    cfg.b = 1
    assert pipeline().run() == {"s": "cached"} and out.read_text() == "1" and not previous.exists()
    cfg.b = 2
    assert pipeline().run() == {"s": "ran"} and out.read_text() == "2" and not previous.exists()
    with pytest.raises(KeyboardInterrupt):
        pipeline("midway").run(start="s")
    assert not previous.exists()
    assert pipeline().run() == {"s": "ran"} and resumed[-1] is True


def test_a_folder_the_pipeline_did_not_make_is_refused_not_deleted(tmp_path):
    """``out=`` pointing at a folder that holds a stage's name (e.g. the user's own ``import/``) is refused
    before any stage runs; an empty folder or one with a stage record is the pipeline's to use."""
    cfg = ToyConfig(str(tmp_path))
    (tmp_path / "third").mkdir()
    (tmp_path / "third" / "notes.txt").write_text("mine")
    with pytest.raises(InvismapError, match=r"third: a folder this pipeline did not make"):
        toy_pipeline(cfg).run()
    assert (tmp_path / "third" / "notes.txt").read_text() == "mine" and cfg.calls == []
    assert toy_pipeline(cfg).run(until="second") == {"first": "ran", "second": "ran"}  # 'third' not touched
    (tmp_path / "third" / "notes.txt").unlink()
    assert toy_pipeline(cfg).run()["third"] == "ran"
    # the pipeline's own folders are deleted whole (renamed first): a changed stage leaves no record-less rest
    cfg.c = 2
    assert toy_pipeline(cfg).run()["third"] == "ran"
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith((".previous", ".deleting"))]


def test_files_an_importer_option_names_outside_the_dataset_are_in_the_import_hash(tmp_path):
    """An MSRS ``labels`` folder kept apart from the images: editing it re-runs the import; a config without
    options hashes as before options existed."""
    from invismap.pipeline import STAGES
    from invismap.pipeline.config import PipelineConfig

    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.png").write_bytes(b"x")
    (tmp_path / "labels" / "infrared").mkdir(parents=True)
    (tmp_path / "labels" / "infrared" / "a.txt").write_text("0 0.5 0.5 0.1 0.1\n")

    def import_hash(options=None) -> str:
        cfg = PipelineConfig(out=str(tmp_path / "out"))
        cfg.data.src, cfg.data.options = str(tmp_path / "src"), options
        return Pipeline(cfg, STAGES, echo=lambda line: None).hash("import")

    plain, inside = import_hash(), import_hash({"split_column": "dev_split"})
    with_labels = import_hash({"labels": str(tmp_path / "labels")})
    (tmp_path / "labels" / "infrared" / "a.txt").write_text("0 0.5 0.5 0.1 0.1\n2 0.2 0.2 0.1 0.1\n")
    assert len({plain, inside, with_labels, import_hash({"labels": str(tmp_path / "labels")})}) == 4
    assert import_hash() == plain


def test_a_stage_sees_only_its_own_settings_and_inputs(tmp_path):
    """The stage contract: a stage that reads a setting outside its hashed settings, or the folder of a stage
    it does not name, fails instead of silently depending on something its cache key does not cover."""
    cfg = ToyConfig(str(tmp_path))
    seen = {}

    def greedy(settings: Settings, inputs: Inputs, folder: Path, resume: bool) -> dict:
        seen.update(b=settings.b, dirs=set(inputs.dirs), first=inputs.summary("first"))
        return {"c": settings.c}  # 'c' is not in its settings

    def sneaky(settings: Settings, inputs: Inputs, folder: Path, resume: bool) -> dict:
        return {"path": str(inputs.dirs["second"])}  # 'second' is not one of its inputs

    first = _toy_stage("first", (), "a", cfg.calls)
    second = Stage("second", ("first",), lambda c: {"b": c.b}, greedy, lambda c: "", lambda s: "")
    with pytest.raises(AttributeError, match="stage 'second' has no setting 'c' \\(it sees: b\\)"):
        Pipeline(cfg, [first, second], echo=lambda line: None).run()
    assert seen == {"b": 1, "dirs": {"first"}, "first": {"value": 1}}
    third = Stage("third", ("first",), lambda c: {"c": c.c}, sneaky, lambda c: "", lambda s: "")
    with pytest.raises(KeyError, match="second"):
        Pipeline(cfg, [first, second, third], echo=lambda line: None).run(only="third")
    with pytest.raises(AttributeError, match="read-only"):
        Settings("x", {"b": 1}).b = 2


def test_every_stage_takes_only_settings_and_inputs(tmp_path):
    """Each row of the real stage table is ``run(settings, inputs, out, resume)``: no stage is handed the
    pipeline or the whole config, only a section of it or :class:`Settings`, which is what its hash covers."""
    import inspect

    from invismap.pipeline import STAGES
    from invismap.pipeline.config import PipelineConfig

    cfg = PipelineConfig(out=str(tmp_path))
    cfg.data.src = str(tmp_path)
    pipeline = Pipeline(cfg, STAGES, echo=lambda line: None)
    for stage in STAGES:
        params = list(inspect.signature(stage.run).parameters.values())
        assert len(params) == 4 and params[1].annotation in (Inputs, "Inputs"), stage.name
        given = pipeline.settings(stage)
        assert isinstance(given, Settings) or type(given).__module__.startswith("invismap."), stage.name
        assert not isinstance(given, PipelineConfig), stage.name


# ------------------------------------------------------------------------- a real run, tiny sizes

TINY = """
data: {format: msrs, max_pairs: 3}
displacement: {split: train, max_pairs: 2}
distill:
  size: 160
  augment: {crop: [96, 128]}
  train: {max_steps: 2, batch_size: 2, eval_every: 0, ckpt_every: 1, log_every: 1, image_every: 0, seed: 0}
predictor:
  size: 160
  val_every_nth: 0
  train: {max_steps: 2, batch_size: 2, eval_every: 0, ckpt_every: 1, image_every: 0, seed: 0}
evaluate: {tta_sizes: [128]}
experiments: {geometry_pairs: 1}
report: {gallery: 1}
"""


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, msrs_dir, weights_dir):
    root = tmp_path_factory.mktemp("pipeline")
    config = root / "tiny.yaml"
    config.write_text(TINY)
    out = root / "out"
    args = [str(config), f"data.src={msrs_dir}", f"distill.teacher={weights_dir / 'yolov5n.pt'}",
            f"out={out}"]
    assert main(["run", *args]) == 0
    return args, out


def test_tiny_run_writes_a_report_from_its_own_json(tiny_run):
    _, out = tiny_run
    page = (out / "report" / "index.html").read_text()
    for src in re.findall(r'<img src="([^"]+)"', page):
        assert (out / "report" / src).is_file(), src
    assert "not produced by this run" not in page
    from invismap.io import _umask

    readable = 0o044 & ~_umask()  # others may read what the umask lets them (with the usual 022: everything)
    # so a web server (another user) can serve the page and all it shows
    for f in (out / "report").rglob("*"):
        assert not f.is_file() or f.stat().st_mode & 0o044 == readable, (f, oct(f.stat().st_mode))
    detector = json.loads((out / "report" / "data" / "detector.json").read_text())
    student = detector["rows"][-1]
    assert student["variant"].startswith("thermal detector")
    assert detector["tta_sizes"] == [128] and "letterbox 160 plus 128" in page  # scored at 160 and 128
    assert "NMS IoU 0.45." in page  # the report says how detections were merged (evaluate.nms_iou)
    assert f"<b>{student['night']:.1f}</b>" in page  # the headline number is the one in the JSON beside it
    lead = detector["intervals"]["night"][f"{student['variant']} - teacher on thermal"]
    assert f"a lead of {lead['value']:+.1f} <small>[{lead['lo']:+.1f}, {lead['hi']:+.1f}]</small>" in page
    maps = json.loads((out / "report" / "data" / "invisibility.json").read_text())
    assert {"predictor", "pair", "prior", "darkness", "contrast", "random", "oracle"} <= set(maps)
    night = maps["predictor"]["conditions"]["night"]["metrics"]
    # each with its interval, as in the JSON beside the page
    for key in ("missed_vs_detected", "coverage_35.9"):
        e = night[key]
        assert f"{e['value']:.3f} <small>[{e['lo']:.2f}, {e['hi']:.2f}]</small>" in page
    assert "fixed prior (position only)" in page and "object oracle (uses labels)" in page
    assert set(maps["predictor"]["margins"]) == {"prior", "darkness"}
    assert len(json.loads((out / "report" / "data" / "gallery.json").read_text())) == 2
    layers = json.loads((out / "report" / "data" / "layers.json").read_text())["rows"]
    assert [r["scales"] for r in layers] == ["P3", "P4", "P5", "P3+P4+P5"]
    pair_night = maps["pair"]["conditions"]["night"]["sets"]["missed"]
    assert layers[-1]["night"]["auroc"] == pytest.approx(pair_night["auroc"])  # all scales = the pair map
    # The weak-alignment benchmark: the known field is larger than what the homography leaves.
    geometry_rows = json.loads((out / "report" / "data" / "geometry.json").read_text())["rows"]
    geometry = {r["method"]: r for r in geometry_rows}
    assert set(geometry) == {"before", "translation", "homography_dense", "flow"}
    before, hom = geometry["before"], geometry["homography_dense"]
    assert hom["after_rel_epe_edges"] < before["after_abs_epe_edges"]
    assert (f"<td>{hom['after_abs_epe_edges']:.2f}</td>"
            f"<td>{100 * hom['after_abs_share_ge5_edges']:.1f}%</td>") in page


def test_tiny_run_second_time_cached_and_predictor_change_reruns_only_its_dependents(tiny_run, capsys):
    args, _out = tiny_run
    capsys.readouterr()
    assert main(["run", *args]) == 0
    printed = capsys.readouterr().out
    assert printed.count("up to date, skipped") == 10 and "done in" not in printed
    assert main(["run", *args, "predictor.train.lr=0.001"]) == 0
    printed = capsys.readouterr().out
    ran = set(re.findall(r"\] (\w+): done in", printed))
    assert ran == {"predictor", "eval_maps", "gallery", "report"}


def test_a_new_scoring_protocol_scores_the_experiments_students_again_without_training_them(
        tiny_run, tmp_path, capsys):
    args, first = tiny_run
    out = tmp_path / "out"
    shutil.copytree(first, out)
    run = [a if not a.startswith("out=") else f"out={out}" for a in args] + ["experiments.seeds=[0, 1]"]
    assert main(["run", *run, "--to", "experiments"]) == 0
    trained = out / "students" / "seeds" / "seed_1" / "thermal_detector.pt"
    stamp = trained.stat().st_mtime_ns
    seeds = json.loads((out / "experiments" / "seeds" / "table.json").read_text())
    assert seeds["tta_sizes"] == [128] and [r["variant"] for r in seeds["rows"][2:4]] == ["seed 0", "seed 1"]
    capsys.readouterr()
    assert main(["run", *run, "evaluate.tta_sizes=[]", "evaluate.nms_iou=0.5", "--to", "experiments"]) == 0
    printed = capsys.readouterr().out
    assert "students: up to date, skipped" in printed
    assert set(re.findall(r"\] (\w+): done in", printed)) == {"experiments"}
    assert trained.stat().st_mtime_ns == stamp  # scored again, not trained again
    again = json.loads((out / "experiments" / "seeds" / "table.json").read_text())
    assert seeds["nms_iou"] == 0.45 and again["nms_iou"] == 0.5
    assert again["tta_sizes"] == [] and [r["variant"] for r in again["rows"]] == [r["variant"]
                                                                                for r in seeds["rows"]]


# every pipeline config shipped in configs/ (align*, distill*, predictor* are single-stage configs)
PIPELINE_CONFIGS = sorted(p.name for p in (Path(__file__).parents[1] / "configs").glob("*.yaml")
                          if not p.name.startswith(("align", "distill", "predictor")))


@pytest.mark.parametrize("name", PIPELINE_CONFIGS)
def test_every_shipped_pipeline_config_is_accepted(name, assets, monkeypatch):
    """A config that starts from another (``base:``) must still pass the checks with what it inherits."""
    from invismap.pipeline import build_pipeline

    monkeypatch.setenv("INVISMAP_ASSETS", str(assets))
    build_pipeline(str(Path(__file__).parents[1] / "configs" / name), [])  # raises on a refused config


def test_run_rejects_a_bad_config(tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text("distill: {loss: everything}\n")
    assert main(["run", str(config)]) == 2
    assert "distill.loss" in capsys.readouterr().err
    config.write_text("data: {check: everything}\n")
    assert main(["run", str(config)]) == 2
    assert "'data.check': 'everything' is not one of decode, header" in capsys.readouterr().err
    config.write_text("experiments: {geometry_pairs: -3}\n")
    assert main(["run", str(config)]) == 2
    assert "'experiments.geometry_pairs': -3 is not allowed" in capsys.readouterr().err
    stage_config = tmp_path / "distill.yaml"
    stage_config.write_text("teacher: yolov5n\nloss: mid\n")
    assert main(["run", str(stage_config)]) == 2
    assert "looks like a config for 'invismap distill'" in capsys.readouterr().err


@pytest.mark.skipif(shutil.which("chromium") is None,
                    reason="Debian's chromium is not installed (make screenshot)")
def test_report_renders_in_headless_chromium(tiny_run, tmp_path):
    from invismap.report.browser import check_page, screenshot

    _, out = tiny_run
    images, broken = check_page(out / "report" / "index.html")
    assert images >= 10 and broken == 0
    shot = screenshot(out / "report" / "index.html", tmp_path / "shot.png", height=2000)
    assert shot.stat().st_size > 50_000


def test_geometry_refuses_a_split_without_pairs(tiny_run, tmp_path):
    from invismap.pipeline import build_pipeline
    from invismap.pipeline.steps import geometry

    args, _ = tiny_run
    # MSRS has no val pairs (a split name that does not exist is refused by check_config before any stage)
    p = build_pipeline(args[0], [*args[1:], "evaluate.split=val"])
    stage = p.by_name["geometry"]
    with pytest.raises(InvismapError, match="no pairs in split 'val' for the weak-alignment benchmark"):
        geometry(p.settings(stage), p.inputs(stage), tmp_path, False)
    assert not list(tmp_path.iterdir())  # nothing written


# --------------------------------------------------------------- no learning step reads a test pair

# whole stages that learn, calibrate, make targets or select ('students' trains the experiments' variants,
# which 'experiments' then evaluates)
LEARNING_STAGES = {"displacement", "distill", "targets", "predictor", "predictor_cv", "students"}
LEAK_CHECK = TINY + """
predictor:
  size: 160
  val_every_nth: 0
  model: neck
  object_weight: 3.0
  target: {kind: pair+detectors, light: 0.5}
  train: {max_steps: 2, batch_size: 2, eval_every: 0, ckpt_every: 1, image_every: 0, seed: 0}
experiments:
  geometry_pairs: 0
  losses: [head]
  detector: {"head, EMA": [loss=head, train.ema=0.5]}
  seeds: [0, 1]
  predictor: {"U-Net, pair score": [model=unet, target.kind=pair, object_weight=1.0], "neck, detectors": []}
  folds: 2
evaluate: {bootstrap: 50, layers: false}
fusion: {enabled: true}
"""


def test_no_training_calibration_target_or_selection_step_reads_a_test_pair(tmp_path, msrs_dir, weights_dir,
                                                                             monkeypatch):
    """Every image read is recorded with the stage that read it: the stages that learn, calibrate, make
    targets or select a variant (displacement measures the offset registration removes) read training
    pairs only; evaluation reads the test pairs. The same holds for a second dataset (RoadScene, data.more),
    whose training day pairs are distilled on too. Also runs the neck-head predictor on detector targets and
    the predictor cross-validation through the whole pipeline."""
    import dataclasses

    import invismap.io
    import invismap.pipeline
    from invismap.data.manifest import load_manifest

    reads: list[tuple[str, str]] = []
    current = ["-"]
    decode = invismap.io._decode

    def recording_decode(path):
        reads.append((current[0], Path(path).stem))
        return decode(path)

    def labelled(fn, label):
        def run(*args, **kwargs):
            outer, current[0] = current[0], label
            try:
                return fn(*args, **kwargs)
            finally:
                current[0] = outer

        return run

    def tracked(stage):
        return dataclasses.replace(stage, run=labelled(stage.run, stage.name))

    monkeypatch.setattr(invismap.io, "_decode", recording_decode)
    monkeypatch.setattr(invismap.pipeline, "STAGES", [tracked(s) for s in invismap.pipeline.STAGES])
    config = tmp_path / "leak.yaml"
    config.write_text(LEAK_CHECK)
    out = tmp_path / "out"
    roadscene = msrs_dir.parent / "roadscene"
    assert main(["run", str(config), f"data.src={msrs_dir}", f"distill.teacher={weights_dir / 'yolov5n.pt'}",
                 f"out={out}", f"data.more=[{{format: roadscene, src: '{roadscene}'}}]",
                 "distill.train.eval_every=1"]) == 0  # validation batches pairs of both cameras
    manifest = load_manifest(out / "import" / "manifest.csv")
    more = load_manifest(out / "import" / "more" / "roadscene" / "manifest.csv")
    test_names = {s.name for s in manifest.select(split="test")} | {s.name for s in more.select(split="test")}
    train_names = ({s.name for s in manifest.select(split="train")}
                   | {s.name for s in more.select(split="train")})
    assert test_names and train_names
    by_stage: dict[str, set[str]] = {}
    for stage, name in reads:
        by_stage.setdefault(stage, set()).add(name)
    assert set(by_stage) >= LEARNING_STAGES  # each of them ran and read images
    for stage in LEARNING_STAGES:
        assert by_stage[stage] <= train_names, (stage, sorted(by_stage[stage] & test_names))
    assert test_names - {s.name for s in more} <= by_stage["eval_maps"]  # the evaluation is what reads them
    assert {s.name for s in more.select(split="train", condition="day")} & by_stage["distill"]  # distilled on
    detector = json.loads((out / "eval_detector" / "detector.json").read_text())
    assert detector["fold_classes"] is True  # truck and bus boxes count as car (evaluate.fold_classes)
    assert detector["nms_iou"] == 0.45
    assert [r["variant"] for r in detector["more"]["roadscene"]] == ["teacher on thermal",
                                                                     "thermal detector (mid)"]
    assert detector["more"]["roadscene"][0]["night"] is not None
    # each detector's AP50 with its interval, and the lead over the teacher paired on the same images
    night = detector["more_intervals"]["roadscene"]["night"]
    student = night["thermal detector (mid)"]
    assert student["value"] == pytest.approx(detector["more"]["roadscene"][1]["night"], abs=0.051)
    lead = night["thermal detector (mid) - teacher on thermal"]
    assert lead["value"] == pytest.approx(night["thermal detector (mid)"]["value"]
                                          - night["teacher on thermal"]["value"], abs=1e-3)
    assert lead["lo"] <= lead["value"] <= lead["hi"]
    table = json.loads((out / "experiments" / "variants" / "table.json").read_text())
    variants = table["rows"]
    assert table["more"] == ["roadscene"]
    header = (out / "experiments" / "variants" / "table.md").read_text().splitlines()[4]
    assert header.count("select night") == 1 and header.count("roadscene night") == 1
    assert [r["variant"] for r in variants] == ["teacher on thermal", "teacher on color", "head, EMA"]
    assert "roadscene night" in variants[-1] and "select night" in variants[-1]
    seeds = json.loads((out / "experiments" / "seeds" / "table.json").read_text())["rows"]
    assert [r["variant"] for r in seeds[2:]] == ["seed 0", "seed 1", "mean", "std"]
    assert seeds[2]["night"] == detector["rows"][-1]["night"]  # seed 0 is the main run, reused
    cv = json.loads((out / "predictor_cv" / "cv.json").read_text())
    assert {r["variant"] for r in cv["rows"]} == {"U-Net, pair score", "neck, detectors"}
    page = (out / "report" / "index.html").read_text()
    assert "Which predictor: cross-validation on the training split" in page
    assert "roadscene (data.more" in page
    assert page.count("thermal detector (mid) minus teacher on thermal") == 2  # MSRS and RoadScene
    fusion = json.loads((out / "fusion" / "fusion.json").read_text())  # chosen on train, scored on test
    night = fusion["conditions"]["night"]["label_sets"]["thermal"]
    assert set(night["methods"]) >= {"color", "thermal", "constant", "map:predictor", "map:pair"}
    assert "Fusing color and thermal detections, guided by the map" in page
    assert json.loads((out / "targets" / "targets.json").read_text())["target"]["kind"] == "pair+detectors"


def test_a_config_that_trains_on_the_evaluation_split_is_refused(tmp_path, capsys):
    config = tmp_path / "leaky.yaml"
    config.write_text("predictor: {split: test}\n")
    assert main(["run", str(config)]) == 2
    assert "'predictor.split': 'test' is the evaluation split" in capsys.readouterr().err
    from invismap.invisibility.targets import score_pairs

    with pytest.raises(InvismapError, match="never the test split"):
        score_pairs("student.pt", "data", tmp_path / "t", split="test")


def test_training_stages_run_under_torchrun_with_nproc(tiny_run, tmp_path):
    """``nproc: 2``: distill and predictor train as two torchrun processes (gloo); nproc is how to run, not
    what, so the stage hashes do not change and the cached stages of a one-process run are reused."""
    from invismap.pipeline import build_pipeline

    args, first = tiny_run
    out = tmp_path / "out"
    shutil.copytree(first, out)
    run = [a if not a.startswith("out=") else f"out={out}" for a in args]
    assert build_pipeline(run[0], run[1:]).hash("distill") == build_pipeline(
        run[0], [*run[1:], "nproc=2"]).hash("distill")
    assert main(["run", *run, "nproc=2", "--from", "distill", "--to", "predictor"]) == 0
    for stage in ("distill", "predictor"):
        summary = json.loads((out / stage / "summary.json").read_text())
        assert summary["world_size"] == 2 and summary["finished"], stage
    assert (out / "distill" / "launch.yaml").is_file() and (out / "predictor" / "predictor.pt").is_file()


def test_report_says_at_which_sizes_the_detectors_ran():
    from invismap.report.html import section_detector

    det = {"split": "test", "size": 640, "rows": [], "more": {}}
    assert "plus" not in section_detector({"detector.json": det})
    assert "letterbox 640 plus 512, 800 (every detector" in section_detector(
        {"detector.json": {**det, "tta_sizes": [512, 800]}})
    assert "soup" not in section_detector({"detector.json": det, "distill.json": {"best_val_loss": 0.5}})
    soup = {"best_val_loss": 0.437, "students": [{"seed": 0, "best_val_loss": 0.45},
                                                 {"seed": 1, "best_val_loss": 0.44}]}
    assert ("a soup: the average of 2 students (seeds 0, 1); validation loss 0.4370, the students' best "
            "0.4500, 0.4400") in section_detector({"detector.json": det, "distill.json": soup})
    from invismap.report.html import section_experiments

    seeds = {"rows": [{"variant": "seed 0", "night": 50.0}], "more": []}
    assert "scored multi-scale" not in section_experiments({"ablation_seeds.json": seeds}, Path("."))
    assert "scored multi-scale: also at sizes 512, 800" in section_experiments(
        {"ablation_seeds.json": {**seeds, "tta_sizes": [512, 800]}}, Path("."))
