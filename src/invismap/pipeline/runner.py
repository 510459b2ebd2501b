"""Run the stages of an experiment in order, each cached by a hash of its settings and its inputs.

The stage contract: a stage is ``run(settings, inputs, out, resume) -> summary``. ``settings`` is exactly what
its row in the stage table says it depends on (read-only: a name outside it raises), ``inputs`` the folders
and records of the upstream stages it names (:class:`Inputs`), ``out`` its own folder. The runner hashes
that same ``settings`` object with the upstream stages' hashes and the package version, so what a stage
cannot see it cannot depend on: changing one section of the config re-runs the stages that read it and
everything downstream of them, nothing else. Each stage records ``OUT/<stage>/stage.json``::

    {"stage": ..., "hash": ..., "finished": true|false, "code": ..., "seconds": ..., "summary": {...}}

written at the start (``finished: false``) and again when the stage ends. A stage found unfinished with the
same hash (an interrupted run) continues where it stopped (trainers resume from their last checkpoint); a
stage whose hash changed starts from an empty folder, its finished results kept in ``OUT/<stage>.previous``
until it finishes (put back if it stops before writing anything, e.g. on a bad setting, or when the config
is changed back). ``--from`` re-runs a stage with unchanged settings in its emptied folder.

Code changes do not invalidate the cache (re-running everything after each edit would make iterating
impractical). The record also keeps a digest of the package's source files; a cached stage that ran with other
code is reported as such, and ``--from STAGE`` re-runs it.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import json
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from invismap import __version__
from invismap.config import to_dict
from invismap.engine.rundir import hold_folder
from invismap.errors import InvismapError
from invismap.io import write_json

RECORD = "stage.json"
PREVIOUS = ".previous"  # OUT/<stage>.previous: a stage's finished results while a changed one runs
NOTHING_YET = {RECORD, "launch.yaml"}  # a stage folder holding only these has no results yet (steps.train)


class Settings:
    """A stage's settings: the named values its hash covers, read-only. Reading any other name fails, so a
    stage cannot depend on a setting its cache key does not cover.

    >>> s = Settings("eval_detector", {"split": "test"})
    >>> s.split
    'test'
    >>> s.teacher
    Traceback (most recent call last):
    ...
    AttributeError: stage 'eval_detector' has no setting 'teacher' (it sees: split)
    """

    __slots__ = ("_stage", "_values")

    def __init__(self, stage: str, values: Mapping[str, Any]):
        object.__setattr__(self, "_stage", stage)
        object.__setattr__(self, "_values", MappingProxyType(dict(values)))

    def __getattr__(self, name: str) -> Any:
        values = object.__getattribute__(self, "_values")
        if name in values:
            return values[name]
        stage = object.__getattribute__(self, "_stage")
        raise AttributeError(f"stage '{stage}' has no setting '{name}' (it sees: {', '.join(values)})")

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("a stage's settings are read-only")

    def plain(self) -> dict:
        return {k: plain(v) for k, v in self._values.items()}


def plain(value: Any) -> Any:
    """JSON-able form of a stage's settings (dataclasses as dicts), for its hash."""
    if isinstance(value, Settings):
        return value.plain()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_dict(value, skip_added_defaults=True)  # keys added since keep earlier runs' hashes
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


@dataclass(frozen=True)
class Inputs:
    """What the upstream stages a stage names produced: their folders and their records (``stage.json``).

    Only stages in the stage's ``needs`` (and enabled) are here; values that cross stages, such as the teacher
    a student was distilled from, are read from the upstream record that produced them. ``echo`` and
    ``nproc`` say how to run (where to print, how many processes may train), never what to compute.
    """

    dirs: Mapping[str, Path]
    records: Mapping[str, dict]
    echo: Callable[[str], None] = field(default=print, compare=False)  # where the stage prints its tables
    nproc: int = 1  # processes a training stage may use (torchrun when > 1): how, not what (not hashed)

    def summary(self, stage: str) -> dict:
        """The summary an upstream stage returned (``KeyError`` if it is not an input of this stage)."""
        return self.records[stage].get("summary") or {}


@dataclass(frozen=True)
class Stage:
    """One step of the pipeline.

    Attributes:
        name: folder name and what ``--from``/``--only`` take.
        needs: stages whose outputs it reads (disabled ones are skipped).
        settings: ``cfg -> {name: value}`` (or one config section): everything of the config the stage
            reads. It is hashed and given to ``run`` as :class:`Settings`, and nothing else of the config is.
        run: ``(settings, inputs, out, resume) -> summary`` does the work in ``out``.
        plan: one line saying what it will do.
        result: one line summing up its summary.
        enabled: whether the config asks for it.
    """

    name: str
    needs: tuple[str, ...]
    settings: Callable[[Any], Any]
    run: Callable[[Any, Inputs, Path, bool], dict]
    plan: Callable[[Any], str]
    result: Callable[[dict], str]
    enabled: Callable[[Any], bool] = lambda cfg: True


@functools.lru_cache(maxsize=1)
def code_digest() -> str:
    """Digest of the invismap package's ``.py`` files (names and contents): which code a stage ran with."""
    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        h.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def _digest(obj: Any) -> str:
    text = json.dumps(obj, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _delete(folder: Path) -> None:
    """Delete a stage folder whole: renamed first, so a run killed while deleting never leaves a stage folder
    that lost its ``stage.json`` but kept other files."""
    doomed = folder.with_name(f".{folder.name}.deleting")
    shutil.rmtree(doomed, ignore_errors=True)
    folder.rename(doomed)
    shutil.rmtree(doomed)


def _duration(seconds: float) -> str:
    m, s = divmod(round(seconds), 60)
    return f"{m}m{s:02d}s" if m else f"{seconds:.1f}s"


class Pipeline:
    """The stages of one config and their cached state in ``cfg.out``."""

    def __init__(self, cfg: Any, stages: list[Stage], echo: Callable[[str], None] = print):
        self.cfg, self.out, self.echo = cfg, Path(cfg.out), echo
        self.stages = [s for s in stages if s.enabled(cfg)]
        self.by_name = {s.name: s for s in stages}
        self._hashes: dict[str, str] = {}
        self._settings: dict[str, Any] = {}

    def dir(self, name: str) -> Path:
        return self.out / name

    def enabled(self, name: str) -> bool:
        return any(s.name == name for s in self.stages)

    def needs(self, stage: Stage) -> list[str]:
        """The enabled stages ``stage`` reads from."""
        return [n for n in stage.needs if self.enabled(n)]

    def settings(self, stage: Stage) -> Any:
        """What ``stage`` is given of the config: its own copy (a stage cannot change the config), as
        :class:`Settings` when the table names several values, else the one config section."""
        if stage.name not in self._settings:  # built once (the import stage's walks the dataset's files)
            self._settings[stage.name] = stage.settings(self.cfg)
        values = copy.deepcopy(self._settings[stage.name])
        return Settings(stage.name, values) if isinstance(values, Mapping) else values

    def inputs(self, stage: Stage) -> Inputs:
        """The folders and records of the stages ``stage`` reads from."""
        needs = self.needs(stage)
        return Inputs(MappingProxyType({n: self.dir(n) for n in needs}),
                      MappingProxyType({n: self.record(n) or {} for n in needs}), self.echo,
                      getattr(self.cfg, "nproc", 1))

    def hash(self, name: str) -> str:
        """Hash of a stage's settings and, recursively, of everything it reads."""
        if name not in self._hashes:
            stage = self.by_name[name]
            self._hashes[name] = _digest({"stage": name, "version": __version__,
                                          "settings": plain(self.settings(stage)),
                                          "inputs": {n: self.hash(n) for n in self.needs(stage)}})
        return self._hashes[name]

    def record(self, name: str) -> dict | None:
        path = self.dir(name) / RECORD
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (FileNotFoundError, ValueError):
            return None

    def up_to_date(self, name: str) -> bool:
        r = self.record(name)
        return bool(r and r.get("finished") and r.get("hash") == self.hash(name))

    def run(self, start: str | None = None, only: str | None = None,
            until: str | None = None) -> dict[str, str]:
        """Run what is needed; ``start`` forces that stage and all after it, ``only`` just that stage,
        ``until`` stops at that stage (running only what it depends on). One process per output folder: a
        second run on it is refused (:func:`~invismap.engine.rundir.hold_folder`).

        Returns:
            stage name -> ``"ran"`` or ``"cached"``.
        """
        with hold_folder(self.out):
            return self._run(start, only, until)

    def _run(self, start: str | None, only: str | None, until: str | None) -> dict[str, str]:
        names = [s.name for s in self.stages]
        for flag, v in (("--from", start), ("--only", only), ("--to", until)):
            if v is not None and v not in names:
                known = ", ".join(names)
                raise InvismapError(f"{flag} {v}: not a stage of this config (stages: {known})")
        forced = set(names[names.index(start):]) if start else set()
        status: dict[str, str] = {}
        n = len(self.stages)
        wanted = self._upstream(until) | {until} if until else set(names)
        self._refuse_foreign_folders(wanted)
        for i, stage in enumerate(self.stages, 1):
            tag = f"[{i}/{n}] {stage.name}"
            if stage.name not in wanted:
                continue
            self._take_back(stage.name)
            if only and stage.name != only:
                if not self.up_to_date(stage.name) and stage.name in self._upstream(only):
                    raise InvismapError(f"--only {only}: stage '{stage.name}' it depends on "
                                        "is not up to date "
                                        f"(run without --only, or with --from {stage.name})")
                continue
            if stage.name not in forced and not only and self.up_to_date(stage.name):
                record = self.record(stage.name) or {}
                note = ("" if record.get("code") == code_digest() else
                        f" - it ran with other code; --from {stage.name} re-runs it and what follows")
                self.echo(f"{tag}: up to date, skipped ({self.hash(stage.name)}){note}")
                status[stage.name] = "cached"
                continue
            self._run_stage(stage, tag, force=stage.name in forced or bool(only))
            status[stage.name] = "ran"
        return status

    def _refuse_foreign_folders(self, names: set[str]) -> None:
        """Refuse to start when a stage's folder holds files but no stage record: the pipeline did not make
        it (its own folders are deleted whole, :func:`_delete`), and re-running that stage would delete what
        it holds."""
        for name in sorted(names):
            folder = self.dir(name)
            if folder.is_dir() and any(folder.iterdir()) and not (folder / RECORD).is_file():
                raise InvismapError(f"{folder}: a folder this pipeline did not make (no {RECORD}), and stage "
                                    f"'{name}' would write over it; choose another out= for the run, or move "
                                    "the folder away")
            if folder.exists() and not folder.is_dir():
                raise InvismapError(f"{folder}: a file where stage '{name}' writes its folder; choose "
                                    "another out= for the run, or move the file away")

    def _upstream(self, name: str) -> set[str]:
        out: set[str] = set()
        for n in self.needs(self.by_name[name]):
            out |= {n} | self._upstream(n)
        return out

    def _take_back(self, name: str) -> None:
        """Put ``<stage>.previous`` back when its finished results are what the config asks for again and the
        stage folder holds a stopped run of other settings (the config was changed, then changed back)."""
        previous, h = self.dir(name).with_name(name + PREVIOUS), self.hash(name)
        try:
            r = json.loads((previous / RECORD).read_text(encoding="utf-8"))
        except (FileNotFoundError, ValueError):
            return
        current = self.record(name) or {}
        if r.get("finished") and r.get("hash") == h and current.get("hash") != h:
            self.echo(f"{name}: the finished results of these settings are back from {previous} (the "
                      "stopped run of other settings is dropped)")
            if self.dir(name).exists():
                _delete(self.dir(name))
            previous.rename(self.dir(name))

    def _run_stage(self, stage: Stage, tag: str, force: bool) -> None:
        folder, h = self.dir(stage.name), self.hash(stage.name)
        record = self.record(stage.name)
        resume = bool(record and not force and record.get("hash") == h and not record.get("finished"))
        # finished results of other settings wait beside the new run until it finishes; a run that fails
        # before writing anything (a bad setting found at once) gets them back untouched
        previous = folder.with_name(folder.name + PREVIOUS)
        replacing = bool(record and record.get("finished") and record.get("hash") != h)
        if replacing:
            if previous.exists():
                _delete(previous)
            folder.rename(previous)
        elif folder.exists() and not resume:
            _delete(folder)
        folder.mkdir(parents=True, exist_ok=True)
        write_json(folder / RECORD, {"stage": stage.name, "hash": h, "finished": False})
        self.echo(f"{tag}: {stage.plan(self.cfg)}" + (" (resuming)" if resume else ""))
        t0 = time.time()
        try:
            summary = stage.run(self.settings(stage), self.inputs(stage), folder, resume) or {}
        except BaseException:
            if replacing and {p.name for p in folder.iterdir()} <= NOTHING_YET:
                _delete(folder)
                previous.rename(folder)
            elif replacing:
                self.echo(f"{tag}: stopped; the results it replaces are kept in {previous}")
            raise
        seconds = time.time() - t0
        write_json(folder / RECORD, {"stage": stage.name, "hash": h, "finished": True, "code": code_digest(),
                                     "seconds": round(seconds, 1), "summary": summary})
        if previous.exists():
            _delete(previous)
        self.echo(f"{tag}: done in {_duration(seconds)} - {stage.result(summary)}")
