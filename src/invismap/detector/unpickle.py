"""Read pickled PyTorch checkpoints (e.g. official Ultralytics ``yolov5n.pt``) without running their code.

An Ultralytics checkpoint pickles the whole model object, so a plain ``torch.load`` imports the yolov5
repository's classes and lets the file call any Python function it names (``os.system`` included).
``torch.load(weights_only=True)`` is safe but refuses such files. :func:`restricted_load` sits between:

- tensors and storages are rebuilt by our own code from the zip records (no torch internals run);
- plain containers (dict, list, tuple, ``OrderedDict``, set) and ``torch.Size``/``torch.device`` pass;
- model classes (``models.*``, ``ultralytics.*``, ``torch.nn.modules.*``) become inert
  :class:`PickledObject` stand-ins that only record the state pickle hands them; no method of the real
  class ever runs, so :func:`module_state_dict` reads the weights off the recorded ``_parameters`` /
  ``_buffers`` / ``_modules``;
- every other global (``os.system``, ``builtins.eval``, ``subprocess.Popen`` ...) is refused with an
  :class:`~invismap.errors.InvismapError` naming the file and the global, before anything is called.

Format (``torch.save`` since 1.6): a zip with ``<prefix>/data.pkl`` whose persistent ids
``('storage', StorageType, key, location, numel)`` point at raw little-endian records ``<prefix>/data/<key>``.

Example:
    >>> ckpt = restricted_load("yolov5n.pt")  # doctest: +SKIP
    >>> sd = module_state_dict(ckpt["model"])  # doctest: +SKIP
"""

from __future__ import annotations

import _compat_pickle
import io
import pickle
import zipfile
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from invismap.errors import file_error

# Module prefixes whose classes are replaced by inert stand-ins (model code we do not have or trust).
STUB_MODULE_PREFIXES = ("models.", "ultralytics.", "torch.nn.modules.", "utils.")

_STORAGE_DTYPES = {
    "HalfStorage": torch.float16, "FloatStorage": torch.float32, "DoubleStorage": torch.float64,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool, "UntypedStorage": torch.uint8,
}


class PickledObject:
    """Inert stand-in for a pickled instance of a class we do not import.

    Pickle builds it (``cls(*args)`` or ``cls.__new__(cls, *args)``) and hands it its state (BUILD);
    both are only recorded. Attributes: ``type_name`` (``'models.yolo.Model'``), ``args``, ``state``.
    """

    type_name = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> PickledObject:  # not Self: Python 3.10
        obj = object.__new__(cls)
        obj.args, obj.state = args, {}
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        # Pickle passes a dict, or (dict, slot_dict) for classes with __slots__; anything else is kept as is.
        parts = state if isinstance(state, tuple) and len(state) == 2 else (state,)
        for part in parts:
            if isinstance(part, dict):
                self.state.update(part)
            elif part is not None:
                self.state.setdefault("__state__", part)

    def __repr__(self) -> str:
        return f"<pickled {self.type_name}>"


class _StorageType:
    """What a ``torch.XStorage`` global resolves to: just its dtype."""

    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype


def _rebuild_tensor(storage: torch.Tensor, offset: int, size: tuple, stride: tuple, *_: Any) -> torch.Tensor:
    # Replaces torch._utils._rebuild_tensor(_v2): storage is our flat tensor; extra args (requires_grad,
    # hooks, metadata) are dropped, hooks being the one place a callable could hide.
    if not isinstance(storage, torch.Tensor):
        raise pickle.UnpicklingError("tensor rebuilt from something that is not a storage")
    try:
        return storage.as_strided(tuple(size), tuple(stride), int(offset))
    except RuntimeError as e:  # out-of-bounds view: a corrupt or hostile file
        raise pickle.UnpicklingError(f"bad tensor layout: {e}") from None


def _rebuild_parameter(data: torch.Tensor, *_: Any) -> torch.Tensor:
    return data  # a Parameter's data is all a state_dict needs


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    # Protocol-2 pickles store bytes as _codecs.encode(str, 'latin1'); nothing else is allowed through.
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


def _numpy_dtype(*args: Any) -> Any:
    import numpy as np
    return np.dtype(*args[:1])


def _numpy_scalar(dtype: Any, data: bytes = b"") -> Any:
    import numpy as np
    if not isinstance(dtype, np.dtype) or dtype.hasobject or not isinstance(data, bytes):
        raise pickle.UnpicklingError("numpy scalar with an object dtype")
    return np.frombuffer(data, dtype)[0]


# The only real callables a checkpoint may name, by "module.name".
_ALLOWED: dict[str, Callable[..., Any]] = {
    "collections.OrderedDict": OrderedDict,
    "builtins.set": set,
    "builtins.frozenset": frozenset,
    "torch._utils._rebuild_tensor": _rebuild_tensor,
    "torch._utils._rebuild_tensor_v2": _rebuild_tensor,
    "torch._utils._rebuild_parameter": _rebuild_parameter,
    "torch.Size": torch.Size,
    "torch.device": torch.device,
    "_codecs.encode": _latin1_encode,
    "numpy.dtype": _numpy_dtype,
    "numpy.core.multiarray.scalar": _numpy_scalar,
    "numpy._core.multiarray.scalar": _numpy_scalar,
}


class ForbiddenGlobal(pickle.UnpicklingError):
    """The pickle names a global that is neither allowed nor a model class."""

    def __init__(self, qualname: str):
        super().__init__(qualname)
        self.qualname = qualname


class _RestrictedUnpickler(pickle.Unpickler):
    """``find_class`` is the only way pickle reaches Python callables, so allowlisting it is enough."""

    def __init__(self, file: io.BufferedIOBase, records: Callable[[str], bytes] | None):
        super().__init__(file)
        self._records = records
        self._storages: dict[str, torch.Tensor] = {}
        self._stub_classes: dict[str, type] = {}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _compat_pickle.NAME_MAPPING:  # Python 2 names in protocol <= 2 pickles
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        qualname = f"{module}.{name}"
        if qualname in _ALLOWED:
            return _ALLOWED[qualname]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        if module.startswith(STUB_MODULE_PREFIXES) and name.isidentifier() and name[:1].isupper():
            if qualname not in self._stub_classes:
                self._stub_classes[qualname] = type(name, (PickledObject,), {"type_name": qualname})
            return self._stub_classes[qualname]
        raise ForbiddenGlobal(qualname)

    def persistent_load(self, pid: Any) -> torch.Tensor:
        if self._records is None:
            raise pickle.UnpicklingError("tensor data outside a zip checkpoint")
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType)):
            raise pickle.UnpicklingError(f"unsupported persistent id {str(pid)[:80]}")
        _, stype, key, _location, numel = pid
        key = str(key)
        if key not in self._storages:
            raw = self._records(key)
            itemsize = torch.empty((), dtype=stype.dtype).element_size()
            if len(raw) != int(numel) * itemsize:
                raise pickle.UnpicklingError(f"storage {key} holds {len(raw)} bytes, expected "
                                             f"{numel} x {itemsize}")
            # bytearray: torch.frombuffer wants a writable buffer; (numel,) flat, views come later.
            flat = (torch.frombuffer(bytearray(raw), dtype=stype.dtype) if raw
                    else torch.empty(0, dtype=stype.dtype))
            self._storages[key] = flat
        return self._storages[key]


def restricted_load(path: str | Path) -> Any:
    """Unpickle a torch checkpoint (zip) or a plain pickle file, running no code from it.

    Returns:
        The pickled object, with tensors as CPU ``torch.Tensor`` (original dtype) and instances of
        model classes as :class:`PickledObject`.

    Raises:
        InvismapError: missing/unreadable file, a forbidden global (named in the message), a legacy
            (pre-1.6) torch file, or corrupt data.
    """
    path = Path(path)
    if not path.is_file():
        raise file_error(path, "file not found")
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                return _load_zip(zf, path)
        with open(path, "rb") as f:
            obj = _RestrictedUnpickler(f, None).load()
    except ForbiddenGlobal as e:
        raise file_error(path, f"refused to load: the file asks to call {e.qualname}, which is not "
                               "a tensor, container or model class (possibly malicious)",
                         "only use checkpoints from a source you trust") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
            KeyError, RuntimeError, zipfile.BadZipFile, OSError) as e:
        raise file_error(path, f"not a readable torch checkpoint ({type(e).__name__}: {str(e)[:120]})",
                         "re-download or re-save it with torch.save") from None
    if isinstance(obj, int) and not isinstance(obj, bool):
        # The legacy format starts with a magic-number pickle; we do not read the rest.
        raise file_error(path, "legacy (pre torch 1.6) checkpoint format",
                         "re-save it with a recent torch: torch.save(torch.load(f), f)")
    return obj


def _load_zip(zf: zipfile.ZipFile, path: Path) -> Any:
    pkls = [n for n in zf.namelist() if n.endswith("data.pkl") and n.count("/") == 1]
    if len(pkls) != 1:
        raise zipfile.BadZipFile(f"expected one <prefix>/data.pkl, found {len(pkls)}")
    prefix = pkls[0][: -len("data.pkl")]
    if f"{prefix}byteorder" in zf.namelist() and zf.read(f"{prefix}byteorder").strip() != b"little":
        raise pickle.UnpicklingError("big-endian checkpoint")

    def records(key: str) -> bytes:
        if "/" in key or key.startswith("."):
            raise pickle.UnpicklingError(f"bad storage key {key!r}")
        try:
            return zf.read(f"{prefix}data/{key}")
        except KeyError:
            raise pickle.UnpicklingError(f"storage record {key} missing") from None

    return _RestrictedUnpickler(io.BytesIO(zf.read(pkls[0])), records).load()


def load_checkpoint(path: str | Path) -> Any:
    """Load a ``.pt`` file safely: ``torch.load(weights_only=True)`` when it allows, else
    :func:`restricted_load`.

    Plain state_dicts and invismap checkpoints (tensors, numbers, strings, containers) go through torch's
    own weights-only loader; pickled model objects (Ultralytics) fall back to the restricted unpickler.
    """
    path = Path(path)
    if not path.is_file():
        raise file_error(path, "file not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - refused (a model object, or worse) or not a torch zip
        # The restricted loader either reads it or raises an InvismapError that says why.
        return restricted_load(path)


def module_state_dict(module: PickledObject, prefix: str = "") -> OrderedDict[str, torch.Tensor]:
    """The ``state_dict`` an ``nn.Module`` would return, read off its pickled stand-in.

    Walks ``_modules`` recursively, collecting ``_parameters`` and persistent ``_buffers`` (``None``
    entries and ``_non_persistent_buffers_set`` skipped), keys ``'a.b.weight'`` as torch does.
    """
    if not isinstance(module, PickledObject):
        raise TypeError(f"expected a pickled module, got {type(module).__name__}")
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    st = module.state
    skip = st.get("_non_persistent_buffers_set") or set()
    for group in ("_parameters", "_buffers"):
        for name, t in (st.get(group) or {}).items():
            if t is None or (group == "_buffers" and name in skip):
                continue
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"{prefix}{name} is a {type(t).__name__}, not a tensor")
            out[prefix + name] = t.detach()
    for name, child in (st.get("_modules") or {}).items():
        if child is not None:
            out.update(module_state_dict(child, f"{prefix}{name}."))
    return out
