"""``invismap distill CONFIG.yaml``: train a thermal student on daytime pairs, write a thermal detector.

Run folder::

    RUN/config.yaml            resolved config
    RUN/ckpt/last.pt, best.pt  training state (resume with --resume)
    RUN/student.pt             student weights + calibrated invisibility thresholds t_k
    RUN/thermal_detector.pt    student + teacher heads, usable as --model wherever a detector is taken
    RUN/summary.json           time, pairs/s, losses, thresholds
    RUN/tb/                    TensorBoard logs
    RUN/soup/seed_N/           with ``soup: K > 1``: the K students averaged into RUN/student.pt (each a run
                               folder as above)
    RUN/rounds/round_R/        with ``rounds: R > 1``: each round's run; RUN/student.pt is the last round's
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal

import torch
import torch.distributed as dist

from invismap.config import added_key, to_dict
from invismap.data.dataset import Augment, PairDataset, collate_pairs
from invismap.data.manifest import Manifest, evenly, load_manifest, training_pairs
from invismap.detector.zoo import load_detector
from invismap.distill.student import ThermalDetector, ThermalStudent, load_student, student_checkpoint
from invismap.distill.task import DistillTask
from invismap.engine.checkpoint import load_checkpoint, save_checkpoint
from invismap.engine.distributed import init_distributed, is_main_process
from invismap.engine.loop import TrainConfig, check_train_config, evaluate, fit, resolve_device, unwrap
from invismap.engine.rundir import can_resume, start_run
from invismap.engine.summary import TrainSummary
from invismap.errors import InvismapError
from invismap.invisibility.score import calibrate_thresholds, feature_distance
from invismap.io import copy_file

log = logging.getLogger(__name__)


@dataclass
class AugmentConfig:
    hflip: float = 0.5
    scale: tuple[float, float] = (0.9, 1.1)
    translate: float = 0.05
    crop: tuple[int, int] | None = (256, 320)  # random crops at full scale: cheaper steps, same scale as eval
    thermal_agc: float = added_key(0.0)  # probability of a percentile stretch (dataset.Augment)
    thermal_gamma: tuple[float, float] = added_key((1.0, 1.0))  # range of a random gamma on its gray levels


@dataclass
class DistillConfig:
    """One distillation experiment."""

    data: str = ""  # manifest.csv (or its folder) of aligned pairs
    # more manifests (e.g. another camera's pairs) whose pairs of the same split and conditions are distilled
    # on too; label-free, so any camera's day pairs help. The pipeline fills it from data.more
    extra_data: list[str] = field(default_factory=list)
    # each of extra_data's training pairs is drawn this many times as often as a pair of data (an epoch holds
    # it this many times): a second camera with few pairs gets a larger share of the batches
    extra_repeat: int = added_key(1)
    teacher: str = "yolov5n"  # model name or file
    # a thermal detector from an earlier distillation (its thermal_detector.pt): the head loss's target
    # becomes, anchor by anchor, the surer of the teacher on color and it on thermal (union_of_teachers)
    thermal_teacher: str = ""
    # distil this many times: from round 2 on, the previous round's thermal detector is the thermal_teacher
    rounds: int = 1
    loss: Literal["mid", "head", "mid+head"] = "mid"
    head_weight: float = 0.1  # lambda on the head term of mid+head
    # the head term weighs each anchor 1 + head_focus * (the teacher's objectness): 0 = a plain MSE
    head_focus: float = 0.0
    init: Literal["teacher", "random"] = "teacher"
    input_mode: Literal["replicate", "conv1"] = "replicate"
    size: int = 640  # letterbox size (longest side)
    conditions: list[str] = field(default_factory=lambda: ["day"])  # which pairs to distil on
    split: str = "train"
    max_pairs: int = 0  # use only the first N training pairs (0 = all): the pairs curve
    val_every_nth: int = 10  # every n-th training pair is held out for validation (0 = none)
    # at most this many of the held-out pairs (evenly spaced) validate and calibrate t_k (0 = all): on tens of
    # thousands of pairs, validating, caching and calibrating on every tenth one grows with the data set
    val_max: int = 256
    threshold_percentile: float = 99.0  # t_k = this percentile of daytime d_k on held-out pairs
    # b_k = this percentile of daytime d_k (the student's residual floor); null = the paper's b_k = 0.
    # Chosen on MSRS train pairs: same ranking, but day maps sit near 0 and tau = 0.35 becomes meaningful.
    offset_percentile: float | None = 50.0
    # fixed t_k per neck scale, fine to coarse, instead of calibrating them (then b_k = 0, the paper's
    # formula); the paper's YOLOv3 values, layers 103/91/79: [3.2, 3.5, 4.0]
    thresholds: list[float] | None = None
    cache: bool = True  # keep decoded, letterboxed pairs in memory
    # distil this many students (seeds soup_seeds()) and average their weights (a uniform "model soup":
    # every student starts from the teacher's weights, so their average is itself a good student; one
    # detector, at one detector's cost to run, K times the training)
    soup: int = 1
    freeze_bn: bool = True
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    # lr: the student starts at the teacher's weights; above ~5e-4 Adam first wrecks them (measured)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(max_steps=300, batch_size=8, lr=2e-4,
                                                                   warmup_steps=20, eval_every=100))


def check_distill_config(cfg: DistillConfig) -> None:
    """Refuse values no run can use, naming the config key and what is allowed (before any work)."""
    def bad(key: str, value, allowed: str) -> InvismapError:
        return InvismapError(f"config key '{key}': {value!r} is not allowed ({allowed})")

    if cfg.size < 32 or cfg.size % 32:
        raise bad("size", cfg.size, "a multiple of 32, >= 32, e.g. 640")
    if cfg.extra_repeat < 1:
        raise bad("extra_repeat", cfg.extra_repeat, "an integer >= 1: how often an extra pair is drawn")
    if cfg.extra_repeat > 1 and not cfg.extra_data:
        raise bad("extra_repeat", cfg.extra_repeat, "1 without extra_data (data.more in a pipeline config): "
                  "there are no extra pairs to draw more often")
    if not (math.isfinite(cfg.head_weight) and cfg.head_weight >= 0):
        raise bad("head_weight", cfg.head_weight, "a finite number >= 0")
    if not (math.isfinite(cfg.head_focus) and cfg.head_focus >= 0):
        raise bad("head_focus", cfg.head_focus, "a finite number >= 0")
    if cfg.soup < 1:
        raise bad("soup", cfg.soup, "an integer >= 1: how many students to average")
    if cfg.soup > 1 and cfg.init != "teacher":
        raise bad("soup", cfg.soup, f"1 with init: {cfg.init}; a soup's students start from the "
                  "teacher's weights")
    if cfg.rounds < 1:
        raise bad("rounds", cfg.rounds, "an integer >= 1: how many times to distil")
    if cfg.rounds > 1 and cfg.loss == "mid":
        raise bad("rounds", cfg.rounds, "1 with loss: mid; later rounds change the head term's target")
    if cfg.thermal_teacher and cfg.loss == "mid":
        raise bad("thermal_teacher", cfg.thermal_teacher, "only with loss: head or mid+head; it changes the "
                  "head term's target")
    for key in ("val_every_nth", "val_max", "max_pairs"):
        if getattr(cfg, key) < 0:
            raise bad(key, getattr(cfg, key), "an integer >= 0")
    for key in ("threshold_percentile", "offset_percentile"):
        v = getattr(cfg, key)
        if v is not None and not 0 < v <= 100:
            raise bad(key, v, "a percentile in (0, 100]")
    for key in ("hflip", "thermal_agc"):
        if not 0 <= getattr(cfg.augment, key) <= 1:
            raise bad(f"augment.{key}", getattr(cfg.augment, key), "a probability in [0, 1]")
    if cfg.augment.crop is not None and any(c < 32 or c % 32 for c in cfg.augment.crop):
        raise bad("augment.crop", list(cfg.augment.crop), "[height, width], multiples of 32, or null")
    for key in ("thermal_gamma", "scale"):
        low, high = getattr(cfg.augment, key)
        if not 0 < low <= high:
            raise bad(f"augment.{key}", [low, high], "[low, high] with 0 < low <= high")
    if not 0 <= cfg.augment.translate < 1:
        raise bad("augment.translate", cfg.augment.translate, "a fraction of the image size in [0, 1)")
    check_train_config(cfg.train)


def split_pairs(manifest: Manifest, cfg: DistillConfig) -> tuple[Manifest, Manifest | None]:
    """Training pairs and held-out validation pairs (:func:`~invismap.data.manifest.training_pairs`) of
    ``manifest`` and then of each of ``cfg.extra_data``; the first ``max_pairs`` training pairs if set."""
    pool = manifest.select(condition=cfg.conditions, split=cfg.split)
    if len(pool) == 0:
        raise InvismapError(f"{cfg.data}: no {'/'.join(cfg.conditions)} pairs in split '{cfg.split}'")
    for extra in cfg.extra_data:
        more = load_manifest(extra).select(condition=cfg.conditions, split=cfg.split)
        if len(more) == 0:
            raise InvismapError(f"{extra}: no {'/'.join(cfg.conditions)} pairs in split '{cfg.split}' "
                                "to distil on (check the dataset's split, or leave it out of data.more)")
        clash = {s.name for s in pool} & {s.name for s in more}
        if clash:
            raise InvismapError(f"{extra}: pair name '{min(clash)}' is also in {cfg.data}; "
                                "datasets distilled together need distinct pair names")
        pool = Manifest(pool.samples + more.samples, pool.root)
    train, val = training_pairs(pool, cfg.split, cfg.conditions, cfg.val_every_nth, cfg.data)
    if val is not None and cfg.val_max and len(val) > cfg.val_max:
        val = Manifest(evenly(val.samples, cfg.val_max), val.root)
    if cfg.max_pairs:
        if cfg.max_pairs > len(train):
            raise InvismapError(f"max_pairs={cfg.max_pairs} but only {len(train)} training pairs exist")
        train = Manifest(train.samples[:cfg.max_pairs], train.root)
    return train, val


def drawn_pairs(train: Manifest, main: Manifest, extra_repeat: int) -> Manifest:
    """The training pairs as an epoch draws them: those not in ``main`` (the extra datasets') ``extra_repeat``
    times each, ``main``'s once."""
    main_names = {s.name for s in main.samples}
    extra = [s for s in train.samples if s.name not in main_names]
    return Manifest(train.samples + extra * (extra_repeat - 1), train.root)


@torch.no_grad()
def calibrate(teacher, student: ThermalStudent, pairs: Manifest, size: int, percentile: float,
              device: torch.device,
              offset_percentile: float | None = None) -> tuple[list[float], list[float] | None]:
    """t_k (and b_k) from daytime pairs: percentiles of the per-cell distance d_k at each scale."""
    ds = PairDataset(pairs, size=size)
    student.eval()
    per_scale: list[list[torch.Tensor]] = []
    for i in range(len(ds)):
        item = ds[i]
        t = teacher.neck_features(item["rgb"][None].to(device))
        s = student(item["thermal"][None].to(device))
        rows, cols = item["letterbox"].content_slice()
        for k, (a, b) in enumerate(zip(t, s)):
            stride = item["rgb"].shape[1] // a.shape[2]
            d = feature_distance(a, b)[0]
            d = d[rows.start // stride: -(-rows.stop // stride),
                  cols.start // stride: -(-cols.stop // stride)]
            if len(per_scale) <= k:
                per_scale.append([])
            per_scale[k].append(d.flatten().cpu())
    pooled = [torch.cat(d) for d in per_scale]
    thresholds = calibrate_thresholds(pooled, percentile)
    if offset_percentile is None:
        return thresholds, None
    offsets = calibrate_thresholds(pooled, offset_percentile)
    # A degenerate calibration set (e.g. constant images) can put the floor at the threshold; keep t_k > b_k
    # so the score stays defined (such a scale then flags any rise above its floor).
    return [max(t, b + 1e-3) for t, b in zip(thresholds, offsets)], offsets


def write_artifacts(teacher, student: ThermalStudent, cfg: DistillConfig, run_dir: Path,
                    calib_pairs: Manifest) -> tuple[list[float], list[float] | None]:
    """Calibrate t_k/b_k on daytime ``calib_pairs`` (or take ``cfg.thresholds``); write ``student.pt`` and
    ``thermal_detector.pt``."""
    device = resolve_device(cfg.train.device)
    if cfg.thresholds:
        if len(cfg.thresholds) != len(teacher.strides):
            raise InvismapError(f"config key 'thresholds': {len(cfg.thresholds)} values for the teacher's "
                                f"{len(teacher.strides)} neck scales")
        thresholds, offsets = [float(t) for t in cfg.thresholds], None
    else:
        thresholds, offsets = calibrate(teacher.to(device), student.to(device), calib_pairs, cfg.size,
                                        cfg.threshold_percentile, device, cfg.offset_percentile)
    common = {"teacher": cfg.teacher, "thresholds": thresholds, "offsets": offsets, "config": to_dict(cfg)}
    save_checkpoint(run_dir / "student.pt",
                    {"kind": "student", **student_checkpoint(student.cpu(), **common)})
    save_checkpoint(run_dir / "thermal_detector.pt",
                    {"kind": "thermal_detector", **student_checkpoint(student, **common)})
    return thresholds, offsets


def recalibrate(run_dir: str | Path,
                overrides: list[str] | None = None) -> tuple[list[float], list[float] | None]:
    """Re-derive t_k/b_k of a finished run (e.g. with another percentile) without training again."""
    from invismap.config import apply_overrides, from_dict

    run_dir = Path(run_dir)
    ckpt = load_checkpoint(run_dir / "student.pt", "student")
    cfg = from_dict(DistillConfig, apply_overrides(dict(ckpt["config"]), overrides or []))
    train_pairs, val_pairs = split_pairs(load_manifest(cfg.data), cfg)
    student = load_student(ckpt, run_dir / "student.pt")
    return write_artifacts(load_detector(cfg.teacher), student, cfg, run_dir, val_pairs or train_pairs)


def load_thermal_teacher(cfg: DistillConfig, teacher) -> ThermalDetector | None:
    """``cfg.thermal_teacher`` as a detector, or None; refused unless it is a thermal detector of the
    teacher's architecture (its heads must read the same outputs)."""
    if not cfg.thermal_teacher:
        return None
    detector = load_detector(cfg.thermal_teacher)
    if not isinstance(detector, ThermalDetector):
        raise InvismapError(f"{cfg.thermal_teacher}: config key 'thermal_teacher' needs a thermal detector "
                            "(an earlier run's thermal_detector.pt), not a color detector")
    if list(detector.names) != list(teacher.names) or tuple(detector.strides) != tuple(teacher.strides):
        raise InvismapError(f"{cfg.thermal_teacher}: its classes or strides differ from the teacher "
                            f"'{cfg.teacher}'; distil it from the same teacher")
    return detector


def build_distillation(cfg: DistillConfig) -> tuple[DistillTask, PairDataset, PairDataset | None, Manifest,
                                                    Manifest | None]:
    """What a distillation run trains: ``(task, train_set, val_set, train_pairs, val_pairs)``."""
    check_distill_config(cfg)
    manifest = load_manifest(cfg.data)
    train_pairs, val_pairs = split_pairs(manifest, cfg)
    teacher = load_detector(cfg.teacher)
    torch.manual_seed(cfg.train.seed)
    student = ThermalStudent(teacher, cfg.input_mode, cfg.init, seed=cfg.train.seed)
    a = cfg.augment
    aug = Augment(**asdict(a))  # the same keys; AugmentConfig holds distillation's defaults
    train_set = PairDataset(drawn_pairs(train_pairs, manifest, cfg.extra_repeat), cfg.size, augment=aug,
                            seed=cfg.train.seed, cache=cfg.cache, square=a.crop is None)
    # pairs from several cameras (extra_data) differ in shape; a square canvas gives every validation batch
    # one shape (collate_pairs would pad them, but validation losses were measured on square canvases)
    val_set = (PairDataset(val_pairs, cfg.size, cache=cfg.cache, square=bool(cfg.extra_data))
               if val_pairs else None)
    task = DistillTask(teacher, student, cfg.loss, cfg.head_weight, cfg.freeze_bn,
                       extra={"teacher": cfg.teacher}, thermal_teacher=load_thermal_teacher(cfg, teacher),
                       head_focus=cfg.head_focus)
    return task, train_set, val_set, train_pairs, val_pairs


def run_distill(cfg: DistillConfig, run_dir: str | Path, resume: bool = False, progress: bool = True,
                stop_at: int | None = None) -> TrainSummary:
    """Train the student, calibrate t_k, write ``student.pt`` and ``thermal_detector.pt`` (its outputs) and
    ``summary.json``. With ``cfg.soup > 1`` the student is a soup (:func:`run_soup`); with ``cfg.rounds > 1``
    it is the last of several rounds (:func:`run_rounds`)."""
    if cfg.rounds > 1:
        return run_rounds(cfg, run_dir, resume, progress, stop_at)
    if cfg.soup > 1:
        return run_soup(cfg, run_dir, resume, progress, stop_at)
    run_dir = Path(run_dir)
    task, train_set, val_set, train_pairs, val_pairs = build_distillation(cfg)
    teacher = task.teacher
    start_run(run_dir, cfg, resume)
    log.info(f"distilling {cfg.teacher} -> thermal student on {len(train_pairs)} pairs "
             f"({'/'.join(cfg.conditions)}, split {cfg.split}), loss={cfg.loss}, {cfg.train.max_steps} steps")
    t0 = time.time()
    summary = fit(task, train_set, cfg.train, run_dir, val_set=val_set, collate_fn=collate_pairs,
                  resume=resume, full_config=cfg, progress=progress, stop_at=stop_at)
    if not summary.finished or not is_main_process():
        return summary  # interrupted on purpose (no final artefacts yet); under torchrun rank 0 writes them
    student = unwrap(task.net)
    thresholds, offsets = write_artifacts(teacher, student, cfg, run_dir, val_pairs or train_pairs)
    summary.outputs.update(student=run_dir / "student.pt", thermal_detector=run_dir / "thermal_detector.pt")
    summary.details.update(thresholds=thresholds, offsets=offsets, train_pairs=len(train_pairs),
                           val_pairs=len(val_pairs) if val_pairs else 0, total_seconds=time.time() - t0)
    summary.save(run_dir)
    log.info(f"wrote {run_dir / 'thermal_detector.pt'} ({summary.pairs_per_s:.2f} pairs/s, "
             f"t_k = {', '.join(f'{t:.3g}' for t in thresholds)})")
    return summary


def run_rounds(cfg: DistillConfig, run_dir: str | Path, resume: bool = False, progress: bool = True,
               stop_at: int | None = None) -> TrainSummary:
    """Distil ``cfg.rounds`` times, each round in ``RUN/rounds/round_R``; from round 2 on, the previous
    round's thermal detector joins the color teacher (``thermal_teacher``,
    :func:`~invismap.distill.losses.union_of_teachers`). The last round's ``student.pt`` and
    ``thermal_detector.pt`` are this run's.

    Round 1 takes ``cfg.thermal_teacher`` (usually none). Each round is an ordinary run (a soup with
    ``soup > 1``) started from the teacher's weights with the same seeds; one that finished is not trained
    again, so an interrupted run continues with ``resume``.
    """
    run_dir = Path(run_dir)
    check_distill_config(cfg)
    start_run(run_dir, cfg, resume)
    previous, summaries = cfg.thermal_teacher, []
    for r in range(1, cfg.rounds + 1):
        folder = run_dir / "rounds" / f"round_{r}"
        if (folder / "summary.json").is_file():  # the last file a finished run writes
            summary = TrainSummary.load(folder)
        else:
            log.info(f"distillation round {r} of {cfg.rounds}, in {folder}"
                     + (f" (thermal teacher {previous})" if previous else ""))
            one = replace(cfg, rounds=1, thermal_teacher=previous)
            summary = run_distill(one, folder, resume=can_resume(folder), progress=progress, stop_at=stop_at)
        if not summary.finished:
            return summary  # stopped on purpose: resuming continues this round
        if dist.is_available() and dist.is_initialized():
            dist.barrier()  # rank 0 wrote this round's detector before any process reads it
        summaries.append(summary)
        previous = str(folder / "thermal_detector.pt")
    if not is_main_process():
        return summaries[-1]
    for name in ("student.pt", "thermal_detector.pt"):
        copy_file(folder / name, run_dir / name)
    summary = summaries[-1]
    summary.outputs.update(student=run_dir / "student.pt", thermal_detector=run_dir / "thermal_detector.pt")
    summary.seconds = sum(s.seconds for s in summaries)
    summary.details["rounds"] = [{"round": r, "seconds": round(s.seconds, 1),
                                  "best_val_loss": s.best_val_loss} for r, s in enumerate(summaries, 1)]
    summary.save(run_dir)
    return summary


def soup_seeds(cfg: DistillConfig) -> list[int]:
    """The training seeds of the students a soup averages: ``train.seed * soup + i`` for ``i < soup``, so the
    soups of seeds 0, 1, 2 share no student.

    >>> soup_seeds(DistillConfig(soup=3, train=TrainConfig(seed=1)))
    [3, 4, 5]
    """
    return [cfg.train.seed * cfg.soup + i for i in range(cfg.soup)]


def average_weights(state_dicts: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The uniform model soup (Wortsman et al., 2022): every floating-point tensor averaged over the models,
    others (counters) taken from the first. All must share keys and shapes (the same architecture).

    >>> average_weights([{"w": torch.tensor([1.0, 2.0])}, {"w": torch.tensor([3.0, 6.0])}])["w"].tolist()
    [2.0, 4.0]
    """
    first = state_dicts[0]
    for sd in state_dicts[1:]:
        if sd.keys() != first.keys() or any(sd[k].shape != v.shape for k, v in first.items()):
            raise ValueError("models of different architectures cannot be averaged")
    return {k: (torch.stack([sd[k].double() for sd in state_dicts]).mean(0).to(v.dtype)
                if v.is_floating_point() else v.clone()) for k, v in first.items()}


def run_soup(cfg: DistillConfig, run_dir: str | Path, resume: bool = False, progress: bool = True,
             stop_at: int | None = None) -> TrainSummary:
    """Distil ``cfg.soup`` students, each in ``RUN/soup/seed_N`` (:func:`soup_seeds`), average their weights
    (:func:`average_weights`), and write the average as this run's student, calibrated anew.

    Each student is an ordinary resumable run; one that finished is not trained again, so an interrupted
    soup continues with ``resume``. ``stop_at`` stops the student in training at that step. The summary's
    ``best_val_loss`` is the soup's own validation loss; the students' are in ``details["students"]``.
    Under torchrun every process trains each student and validates the soup; rank 0 writes the files.
    """
    run_dir = Path(run_dir)
    check_distill_config(cfg)
    start_run(run_dir, cfg, resume)  # refuses to start over students already trained, unless resuming
    seeds = soup_seeds(cfg)
    members = [run_dir / "soup" / f"seed_{seed}" for seed in seeds]
    summaries = []
    for seed, member in zip(seeds, members):
        summary = _soup_student(cfg, seed, member, progress, stop_at)
        if not summary.finished:
            return summary  # stopped on purpose: resuming the soup continues this student
        summaries.append(summary)
    _, world, device = init_distributed(resolve_device(cfg.train.device))
    if world > 1:
        dist.barrier()  # rank 0 has written every student before any process reads them
    task, _, val_set, train_pairs, val_pairs = build_distillation(cfg)
    task.net.load_state_dict(average_weights([load_checkpoint(m / "student.pt", "student")["student"]
                                              for m in members]))
    task.to(device)
    val_loss = (evaluate(task, val_set, cfg.train, device, collate_pairs).get("loss", math.inf)
                if val_set is not None else math.inf)
    if not is_main_process():
        return summaries[-1]
    thresholds, offsets = write_artifacts(task.teacher, task.net, cfg, run_dir, val_pairs or train_pairs)
    seconds = sum(s.seconds for s in summaries)
    summary = TrainSummary(steps=cfg.train.max_steps, max_steps=cfg.train.max_steps, seconds=seconds,
                           pairs_per_s=sum(s.pairs_per_s * s.seconds for s in summaries) / max(seconds, 1e-9),
                           best_val_loss=val_loss, skipped_steps=sum(s.skipped_steps for s in summaries),
                           world_size=world)
    summary.outputs.update(student=run_dir / "student.pt", thermal_detector=run_dir / "thermal_detector.pt")
    summary.details.update(thresholds=thresholds, offsets=offsets, train_pairs=len(train_pairs),
                           val_pairs=len(val_pairs) if val_pairs else 0,
                           students=[{"seed": seed, "seconds": round(s.seconds, 1),
                                      "best_val_loss": s.best_val_loss}
                                     for seed, s in zip(seeds, summaries)])
    summary.save(run_dir)
    log.info(f"wrote {run_dir / 'thermal_detector.pt'}: the average of {cfg.soup} students "
             f"(validation loss {val_loss:.4g}; the students' best: "
             f"{', '.join(f'{s.best_val_loss:.4g}' for s in summaries)})")
    return summary


def _soup_student(cfg: DistillConfig, seed: int, member: Path, progress: bool,
                  stop_at: int | None) -> TrainSummary:
    """The soup's student of ``seed`` in ``member``: trained, resumed, or (finished before) its summary."""
    if (member / "summary.json").is_file():  # the last file a finished run writes
        return TrainSummary.load(member)
    log.info(f"soup student of seed {seed} ({cfg.soup} in all), in {member}")
    one = replace(cfg, soup=1, train=replace(cfg.train, seed=seed))
    return run_distill(one, member, resume=can_resume(member), progress=progress, stop_at=stop_at)
