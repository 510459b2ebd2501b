"""Run the stages of an experiment in order, each cached by a hash of its settings and its inputs.

A stage's hash covers its own settings, the hashes of the stages it reads from and the package version,
so changing one section of the config re-runs that stage and everything downstream of it, nothing else.
Each stage works in ``OUT/<stage>/`` and records ``OUT/<stage>/stage.json``::

    {"stage": ..., "hash": ..., "finished": true|false, "code": ..., "seconds": ..., "summary": {...}}

written at the start (``finished: false``) and again when the stage ends. A stage found unfinished with the
same hash (an interrupted run) continues where it stopped (trainers resume from their last checkpoint); a
stage whose hash changed starts from an empty folder.

Code changes do not invalidate the cache (re-running everything after each edit would make iterating
impractical). The record also keeps a digest of the package's source files; a cached stage that ran with other
code is reported as such, and ``--from STAGE`` re-runs it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from invismap import __version__
from invismap.config import to_dict
from invismap.engine.rundir import hold_folder
from invismap.errors import InvismapError
from invismap.io import write_json

RECORD = "stage.json"


@dataclass(frozen=True)
class Stage:
    """One step of the pipeline.

    Attributes:
        name: folder name and what ``--from``/``--only`` take.
        needs: stages whose outputs it reads (disabled ones are skipped).
        settings: the part of the config its result depends on (hashed).
        run: ``(pipeline, folder, resume) -> summary`` does the work in ``folder``.
        plan: one line saying what it will do.
        result: one line summing up its summary.
        enabled: whether the config asks for it.
    """

    name: str
    needs: tuple[str, ...]
    settings: Callable[[Any], Any]
    run: Callable[[Pipeline, Path, bool], dict]
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

    def dir(self, name: str) -> Path:
        return self.out / name

    def enabled(self, name: str) -> bool:
        return any(s.name == name for s in self.stages)

    def inputs(self, stage: Stage) -> list[str]:
        return [n for n in stage.needs if self.enabled(n)]

    def hash(self, name: str) -> str:
        """Hash of a stage's settings and, recursively, of everything it reads."""
        if name not in self._hashes:
            stage = self.by_name[name]
            settings = stage.settings(self.cfg)
            settings = to_dict(settings) if hasattr(settings, "__dataclass_fields__") else settings
            self._hashes[name] = _digest({"stage": name, "version": __version__, "settings": settings,
                                          "inputs": {n: self.hash(n) for n in self.inputs(stage)}})
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
        for i, stage in enumerate(self.stages, 1):
            tag = f"[{i}/{n}] {stage.name}"
            if stage.name not in wanted:
                continue
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

    def _upstream(self, name: str) -> set[str]:
        out: set[str] = set()
        for n in self.inputs(self.by_name[name]):
            out |= {n} | self._upstream(n)
        return out

    def _run_stage(self, stage: Stage, tag: str, force: bool) -> None:
        folder, h = self.dir(stage.name), self.hash(stage.name)
        record = self.record(stage.name)
        resume = bool(record and not force and record.get("hash") == h and not record.get("finished"))
        if folder.exists() and not resume:
            shutil.rmtree(folder)
        folder.mkdir(parents=True, exist_ok=True)
        write_json(folder / RECORD, {"stage": stage.name, "hash": h, "finished": False})
        self.echo(f"{tag}: {stage.plan(self.cfg)}" + (" (resuming)" if resume else ""))
        t0 = time.time()
        summary = stage.run(self, folder, resume) or {}
        seconds = time.time() - t0
        write_json(folder / RECORD, {"stage": stage.name, "hash": h, "finished": True, "code": code_digest(),
                                     "seconds": round(seconds, 1), "summary": summary})
        self.echo(f"{tag}: done in {_duration(seconds)} - {stage.result(summary)}")
