"""Long streams: ``invismap predict`` on a 10-minute 640x480 video, its memory over time and its speed.

A synthetic video (:func:`synthetic.write_video`: a scrolling textured scene with a moving box, mp4v) of
``--minutes`` minutes at ``--fps`` frames per second is written to a temporary folder, and a predictor
checkpoint holding an *untrained* default U-Net (:func:`synthetic.write_untrained_predictor`; memory and
speed do not depend on the weights) at letterbox size ``--size``. Then ``invismap predict --model ... VIDEO
--out DIR`` runs as a child process, exactly as a user would run it. While it runs, this script reads the
child's progress bar (frames done) from its stderr and samples, every ``--interval`` seconds, the child's
resident set size (``VmRSS`` in ``/proc/PID/status``) and the size of the overlay video written so far.

Reported, per minute of video frames: the median and largest RSS sampled while that minute's frames were
processed (RSS swings by ~100 MiB within a batch, as its images, tensors and maps are made and freed),
the peak RSS so far (``VmHWM``) and the overlay video's bytes on disk; then the peak RSS of the run
(``ru_maxrss``), frames per second, and that the overlay video holds every frame. The overlay file growing
minute by minute shows that it is written as it goes.

Usage (from the repository root; ~3 minutes on a quiet 2-core machine at the defaults: two runs of predict)::

    .venv/bin/python benchmarks/bench_stream.py [--minutes 10] [--fps 10] [--size 640] [--batch 8]
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import REPO, OthersLoad, assets_env, base_parser, print_machine, table, wait_quiet

INVISMAP = str(Path(sys.executable).parent / "invismap")
PROGRESS = re.compile(rb"(\d+)/(\d+) \[")


def _status_kib(pid: int, key: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith(key + ":"))
    except (OSError, StopIteration, ValueError):
        return None


class Progress:
    """The latest ``done/total`` a child's tqdm bar printed, read from its stderr on a thread."""

    def __init__(self, stream):
        self.done, self.tail = 0, b""
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream) -> None:
        while chunk := os.read(stream.fileno(), 1 << 14):
            self.tail = (self.tail + chunk)[-4096:]
            found = PROGRESS.findall(chunk)
            if found:
                self.done = int(found[-1][0])

    def join(self) -> None:
        self._thread.join()


def _size(*paths: Path) -> int:
    """Bytes of the first of ``paths`` that exists (the overlay's temporary file, then the finished one)."""
    for path in paths:
        try:
            return path.stat().st_size
        except OSError:
            continue
    return 0


def watch_predict(cmd: list[str], overlay: Path, interval: float) -> tuple[list[dict], float, float, int]:
    """Run ``cmd``; returns ``(samples, peak RSS MiB, wall s, exit code)``; each sample holds the time, frames
    done, RSS and peak RSS so far (``VmHWM``) in MiB, and the bytes of the ``overlay`` video written so far
    (``predict`` writes it as ``.NAME.tmp.mp4`` and renames it when done)."""
    env = dict(os.environ, COLUMNS="120")
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    progress, samples = Progress(proc.stderr), []
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        rss, hwm = _status_kib(proc.pid, "VmRSS"), _status_kib(proc.pid, "VmHWM")
        if rss is not None and hwm is not None:
            size = _size(overlay.with_name(f".{overlay.stem}.tmp.mp4"), overlay)
            samples.append({"t": time.perf_counter() - t0, "frames": progress.done, "rss": rss / 1024,
                            "hwm": hwm / 1024, "overlay": size})
        time.sleep(interval)
    wall = time.perf_counter() - t0
    progress.join()
    code = proc.returncode = os.waitstatus_to_exitcode(status)
    peak = usage.ru_maxrss / 1024
    if code != 0:
        tail = progress.tail.decode(errors="replace").replace("\r", "\n").strip().splitlines()[-3:]
        raise RuntimeError(f"predict failed ({code}): {' | '.join(tail)}")
    return samples, peak, wall, code


def frames_in(path: Path) -> int:
    """Frames in a video, counted by reading them all (the container's count can be an estimate)."""
    import cv2

    cap, n = cv2.VideoCapture(str(path)), 0
    while cap.grab():
        n += 1
    cap.release()
    return n


# ``invismap predict`` as the command runs it, and the same keeping freed memory as glibc does by default (how
# ``predict`` ran before it handed it back after each batch): the CLI's main with that one call a no-op.
AS_BEFORE = ("import sys\nimport invismap.invisibility.predict as p\n"
             "p.release_freed_memory = lambda: False\nfrom invismap.cli import main\nmain(sys.argv[1:])")
VARIANTS = {"freed memory handed back per batch (invismap predict)": [INVISMAP],
            "glibc keeps it (as before)": [sys.executable, "-c", AS_BEFORE]}


def per_minute(samples: list[dict], total: int, frames_per_minute: int) -> list[dict]:
    """Per minute of video frames: the samples taken while its frames were processed, summarised."""
    out = []
    for m in range(1, -(-total // frames_per_minute) + 1):
        lo, hi = (m - 1) * frames_per_minute, min(m * frames_per_minute, total)
        window = [s for s in samples if lo < s["frames"] <= hi] or [samples[-1]]
        rss = sorted(s["rss"] for s in window)
        out.append({"minute": m, "end": window[-1], "n": len(window), "median": rss[len(rss) // 2],
                    "max": rss[-1], "hwm": window[-1]["hwm"]})
    return out


def report(label: str, run: dict, total: int, frames_per_minute: int, args) -> dict:
    """Print one run's table; returns its summary row."""
    windows = per_minute(run["samples"], total, frames_per_minute)
    rows = [[w["minute"], w["end"]["frames"], f"{w['end']['t']:.0f}", w["n"], f"{w['median']:.0f}",
             f"{w['max']:.0f}", f"{w['hwm']:.0f}", f"{w['end']['overlay'] / 2**20:.1f}"] for w in windows]
    headers = ["video minute", "frames done", "wall s", "samples", "RSS MiB median", "RSS MiB max",
               "peak RSS so far MiB", "overlay written MiB"]
    print(f"\n## {label}: RSS per minute of video frames (sampled every {args.interval:g} s)\n")
    print(table(headers, rows))
    first, last = windows[0], windows[-1]
    samples = run["samples"]
    mark = next((s for s in samples if s["frames"] >= frames_per_minute), samples[0])
    steady = (samples[-1]["frames"] - mark["frames"]) / max(samples[-1]["t"] - mark["t"], 1e-9)
    print(f"\noverlay video: {run['written']} frames of {total}, written as it goes "
          f"({mark['overlay'] / 2**20:.1f} MiB on disk once the first minute was done)")
    return {"label": label, "first": first, "last": last, "peak": run["peak"], "fps": total / run["wall"],
            "steady": steady, "wall": run["wall"]}


def main() -> None:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=10.0, help="video length")
    p.add_argument("--fps", type=float, default=10.0, help="frames per second of the video")
    p.add_argument("--size", type=int, default=640, help="the predictor's letterbox size")
    p.add_argument("--batch", type=int, default=8, help="invismap predict --batch")
    p.add_argument("--interval", type=float, default=0.25, help="seconds between RSS samples")
    p.add_argument("--tmp", default=None, help="folder for the video and outputs (default: a temp folder)")
    args = p.parse_args()
    if args.quick:
        args.minutes, args.fps = 1.0, 5.0
    assets_env()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    from synthetic import write_untrained_predictor, write_video

    frames_per_minute = round(60 * args.fps)
    total = round(args.minutes * frames_per_minute)
    print_machine(f"bench_stream: invismap predict on {args.minutes:g} min of 640x480 at {args.fps:g} fps "
                  f"({total} frames), size {args.size}, batch {args.batch}, {args.threads} threads")
    runs = {}
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        video = write_video(tmp / "drive.mp4", 60 * args.minutes, args.fps)
        print(f"wrote {video.name}: {video.stat().st_size / 2**20:.1f} MiB in "
              f"{time.perf_counter() - t:.0f} s")
        model = write_untrained_predictor(tmp / "predictor.pt", args.size)
        wait_quiet(args.wait_quiet)
        with OthersLoad() as load:
            for k, (label, prefix) in enumerate(VARIANTS.items()):
                out = tmp / f"out{k}"
                cmd = [*prefix, "predict", "--model", str(model), str(video), "--out", str(out),
                       "--batch", str(args.batch)]
                print(f"running: {label}", file=sys.stderr, flush=True)
                samples, peak, wall, _ = watch_predict(cmd, out / f"{video.stem}_overlay.mp4", args.interval)
                runs[label] = {"samples": samples, "peak": peak, "wall": wall,
                               "written": frames_in(out / f"{video.stem}_overlay.mp4")}
    summary = [report(label, run, total, frames_per_minute, args) for label, run in runs.items()]
    rows = [[r["label"], f"{r['first']['median']:.0f}", f"{r['last']['median']:.0f}",
             f"{r['last']['median'] / r['first']['median'] - 1:+.1%}", f"{r['first']['hwm']:.0f}",
             f"{r['last']['hwm']:.0f}", f"{r['last']['hwm'] / r['first']['hwm'] - 1:+.1%}",
             f"{r['peak']:.0f}", f"{r['fps']:.1f}", f"{r['steady']:.1f}"] for r in summary]
    print("\n## summary: RSS after the first and after the last minute of frames\n")
    print(table(["freed memory", "RSS median, minute 1", f"minute {summary[0]['last']['minute']}", "change",
                 "peak so far after minute 1", "at the end", "change", "peak MiB (ru_maxrss)",
                 "frames/s overall", "frames/s after minute 1"], rows))
    print("\nacceptance: RSS after 10 minutes within 10% of RSS after 1 minute; frames/s overall includes "
          "the start-up (~3 s)")
    print(f"CPU used by other processes during the run: {load}")


if __name__ == "__main__":
    main()
