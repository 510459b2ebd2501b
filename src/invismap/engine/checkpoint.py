"""Checkpoints: one dict per file, written atomically, read without executing pickled code.

A checkpoint holds ``kind`` (what it is: ``student``, ``predictor``, ...), the invismap ``version``, the
``step``, the model ``state_dict``, optimizer states, the resolved ``config`` and RNG states, so that
``--resume`` continues exactly and a file for the wrong model is refused with a clear message.
"""

from __future__ import annotations

import io
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch

from invismap import __version__
from invismap.errors import file_error
from invismap.io import atomic_write


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` (must contain ``kind``) with ``torch.save`` to a temp file, then rename."""
    if "kind" not in state:
        raise ValueError("a checkpoint needs a 'kind'")
    state = {"version": __version__, **state}
    buf = io.BytesIO()
    torch.save(state, buf)
    with atomic_write(path, "wb") as f:
        f.write(buf.getvalue())
    return Path(path)


def load_checkpoint(path: str | Path, kind: str | tuple[str, ...] | None = None,
                    map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` and check its ``kind``.

    Raises:
        InvismapError: missing, truncated or foreign file, or a checkpoint of another kind.
    """
    path = Path(path)
    if not path.is_file():
        raise file_error(path, "checkpoint not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's text advises weights_only=False: exactly what must not be done with an unknown file
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        if found:
            raise file_error(path, f"refused to load: it holds pickled Python objects ({found.group(1)}), "
                             "not only tensors (an invismap checkpoint never does; possibly malicious)",
                             "only use checkpoints made by invismap or from a source you trust") from None
        detail = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", str(e))
        why = detail.group(1)[:120] if detail else _first_line(e)
        raise file_error(path, f"not a readable invismap checkpoint ({why})",
                         "re-create it, or resume from an earlier one") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, TypeError, IndexError,
            KeyError, AttributeError) as e:
        raise file_error(path, f"not a readable invismap checkpoint ({_first_line(e)})",
                         "re-create it, or resume from an earlier one") from None
    if not isinstance(state, dict) or "kind" not in state:
        wanted = kind if isinstance(kind, str) else " or ".join(kind) if kind else None
        raise file_error(path, "not an invismap checkpoint (no 'kind'; e.g. a detector's weights)",
                         f"pass the {wanted} file an invismap run wrote" if wanted else
                         "pass a file an invismap run wrote")
    _check_version(path, state.get("version"))
    kinds = (kind,) if isinstance(kind, str) else kind
    if kinds and state["kind"] not in kinds:
        raise file_error(path, f"is a '{state['kind']}' checkpoint, expected {' or '.join(kinds)}",
                         "pass the right file")
    return state


def _first_line(e: BaseException) -> str:
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return first[:120]


def _version_tuple(v: Any) -> tuple[int, int] | None:
    m = re.fullmatch(r"(\d+)\.(\d+)(?:\.\S*)?", v.strip()) if isinstance(v, str) else None
    return (int(m.group(1)), int(m.group(2))) if m else None


def _check_version(path: Path, version: Any) -> None:
    """Refuse a checkpoint written by a newer invismap (major.minor), whose layout this one cannot know.

    Older checkpoints are read; one whose weights no longer fit is refused by :func:`check_state_dict`.
    """
    if version is None:
        return  # written before checkpoints carried a version
    theirs, ours = _version_tuple(version), _version_tuple(__version__)
    if theirs is None:
        raise file_error(path, f"checkpoint has an unreadable invismap version {str(version)[:40]!r}",
                         "re-create it with this invismap")
    if ours is not None and theirs > ours:
        raise file_error(path, f"was written by invismap {version}, newer than this invismap {__version__}",
                         "upgrade invismap, or re-create the checkpoint with this version")


def check_state_dict(path: str | Path, model: torch.nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
    """Refuse a state_dict whose keys or shapes do not fit ``model`` (another architecture or size)."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    extra = [k for k in state_dict if k not in own]
    shape = [k for k in own if k in state_dict and tuple(own[k].shape) != tuple(state_dict[k].shape)]
    if missing or extra or shape:
        what = (f"{len(missing)} missing keys (e.g. {missing[0]})" if missing else
                f"{len(extra)} unexpected keys (e.g. {extra[0]})" if extra else
                f"shape mismatch at {shape[0]}: {tuple(state_dict[shape[0]].shape)} "
                f"vs {tuple(own[shape[0]].shape)}")
        raise file_error(path, f"weights are for another architecture: {what}",
                         "use a checkpoint made with the same model/config")
