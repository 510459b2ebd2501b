"""Every map the evaluation can score, by a short spec ``kind[:argument]`` (command line and pipeline).

    ==================================  ===========================================  =======================
    spec                                map                                          looks at
    ==================================  ===========================================  =======================
    ``predictor:RUN/predictor.pt``      the color-only predictor (``.onnx`` too)     color image
    ``pair:RUN/student.pt``             the pair score F (teacher vs student)        color + thermal image
    ``prior:TARGETS``                   fixed prior: the mean training target        nothing (reference)
    ``darkness``, ``contrast``          label-free baselines                         color image
    ``random`` or ``random:SEED``       uniform noise, chance level                  nothing (reference)
    ``oracle``                          1 inside every thermal-labelled box          labels (reference)
    ==================================  ===========================================  =======================

A new kind is one function registered with :func:`register`; ``map_source`` finds it by name.

Example:
    >>> name, source = map_source("darkness")
    >>> name, source(None, np.zeros((4, 6, 3), np.uint8), None).shape
    ('darkness', (4, 6))
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from invismap.errors import InvismapError
from invismap.invisibility.evaluate import MapSource, color_map_source
from invismap.registry import Registry

SourceFactory = Callable[[str], MapSource]  # the spec's argument (may be "") -> a map source
SOURCES: Registry[SourceFactory] = Registry(
    "map source", hint="e.g. predictor:RUN/predictor.pt, pair:RUN/student.pt, prior:TARGETS, darkness")
register = SOURCES.register  # @register("kind"): ``kind[:argument]`` specs build sources with the factory
REFERENCE_NOTES = {"prior": "fixed prior (position only)", "random": "random (chance)",
                   "oracle": "object oracle (uses labels)"}


def map_source(spec: str) -> tuple[str, MapSource]:
    """``(name, source)`` from a spec such as ``predictor:runs/x/predictor.pt`` (the name is the kind)."""
    kind, _, argument = spec.partition(":")
    return kind, SOURCES.get(kind)(argument)


def _needs(kind: str, argument: str, what: str) -> str:
    if not argument:
        raise InvismapError(f"map source '{kind}' needs {what}: {kind}:PATH")
    return argument


@register("darkness")
def _darkness(argument: str) -> MapSource:
    from invismap.invisibility.baselines import darkness_map

    return color_map_source(darkness_map)


@register("contrast")
def _contrast(argument: str) -> MapSource:
    from invismap.invisibility.baselines import local_contrast_map

    return color_map_source(local_contrast_map)


@register("pair")
def _pair(argument: str) -> MapSource:
    from invismap.invisibility.pair import PairScorer

    scorer = PairScorer.from_checkpoint(_needs("pair", argument, "a distilled student (RUN/student.pt)"))

    def pair(sample, rgb: np.ndarray, thermal: np.ndarray) -> np.ndarray:
        return scorer.score(rgb, thermal)

    return pair


@register("predictor")
def _predictor(argument: str) -> MapSource:
    from invismap.invisibility.predict import load_any_predictor, predict_image

    model, meta = load_any_predictor(_needs("predictor", argument, "a trained predictor (RUN/predictor.pt)"))
    size = int(meta.get("input_size", 640))

    def predictor(sample, rgb: np.ndarray, thermal: np.ndarray) -> np.ndarray:
        return predict_image(model, rgb, size)

    return predictor


@register("prior")
def _prior(argument: str) -> MapSource:
    from invismap.invisibility.references import prior_source
    from invismap.invisibility.targets import load_prior

    return prior_source(load_prior(_needs("prior", argument, "the target folder (or its prior.npy)")))


@register("random")
def _random(argument: str) -> MapSource:
    from invismap.invisibility.references import random_source

    try:
        return random_source(int(argument or 0))
    except ValueError:
        raise InvismapError(f"map source 'random:{argument}': the argument is a seed (an integer)") from None


@register("oracle")
def _oracle(argument: str) -> MapSource:
    from invismap.invisibility.references import oracle_source

    return oracle_source()


def evaluate_specs(manifest, specs: list[str] | dict[str, str], teacher: str = "yolov5n",
                   conditions=("day", "night"), tau: float = 0.35, conf: float = 0.25,
                   references=("prior", "darkness"), n_boot: int = 1000, progress: bool = True,
                   size: int = 640) -> dict:
    """Every map of ``specs`` scored on ``manifest`` in one run: the color teacher's detections define which
    objects it misses, then :func:`~invismap.invisibility.evaluate.compare_sources`.

    Args:
        manifest: the pairs (select the evaluation split first).
        specs: map specs (named by their kind), or ``{name: spec}`` to name them.
        teacher: the color detector (name or file, ``.onnx`` too).
        size: the color detector's input size (longest side).
    """
    from invismap.detector.zoo import load_inference_detector
    from invismap.invisibility.evaluate import compare_sources, teacher_detections

    named = specs if isinstance(specs, dict) else {map_source_name(s): s for s in specs}
    sources = {name: map_source(spec)[1] for name, spec in named.items()}
    detections = teacher_detections(manifest, load_inference_detector(teacher), size=size, conf=conf,
                                    progress=progress)
    return compare_sources(manifest, sources, detections, references=tuple(references),
                           conditions=tuple(conditions), tau=tau, detection_conf=conf, n_boot=n_boot,
                           progress=progress)


def map_source_name(spec: str) -> str:
    """The name a spec's map is reported under: its kind (``predictor:x.pt`` -> ``predictor``)."""
    return spec.partition(":")[0]


__all__ = ["REFERENCE_NOTES", "SOURCES", "evaluate_specs", "map_source", "map_source_name", "register"]
