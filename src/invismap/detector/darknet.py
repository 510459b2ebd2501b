"""Darknet ``.cfg`` + ``.weights`` detectors (YOLOv3, YOLOv3-tiny, Yolo-Fastest) as a :class:`Detector`.

The ``.cfg`` is parsed by the pure :func:`parse_cfg` (text in, list of typed section dicts out), built
into a :class:`DarknetDetector` and filled from a ``.weights`` file by :func:`load_darknet_weights`,
which must consume every float of the file. :func:`save_darknet_weights` writes the same format back.

Neck taps (what the student learns; the paper's layers 79/91/103 of yolov3.cfg). For each ``[yolo]``
layer ``y`` the head is found by walking back from ``y``:

1. layer ``y - 1`` must be the prediction conv: linear, ``filters == (5 + classes) * len(mask)``,
   read only by the ``[yolo]`` layer;
2. keep walking back over ``[convolutional]`` layers that belong to the head: a conv belongs to the
   head when nothing but the next layer of the chain reads it (no route or shortcut elsewhere does)
   and it is not a 1x1 conv with a non-linear activation (such a 1x1 conv is the neck's last layer:
   YOLOv3's five-conv block ends with one). Spatial convs (3x3, depthwise 5x5) and linear 1x1
   projections (Yolo-Fastest's bottlenecks) belong to the head;
3. the first layer that stops the walk (a non-conv layer, a conv read elsewhere, or a 1x1 non-linear
   conv) is the tap: its output is the input of the head.

A head is therefore a chain of convs, each reading the layer before it: it reads only its tap (checked
when the model is built), so ``heads(features)`` needs nothing but the tap outputs, and no neck layer
reads a head layer. Taps on the shipped cfgs (index: channels @ stride -> ``[yolo]`` index; spatial
sizes at a 416 input are 416 / stride):

- yolov3.cfg: 103: 128 @ s8 -> 106, 91: 256 @ s16 -> 94, 79: 512 @ s32 -> 82 (the paper's layers);
  each head is ``3x3 conv, 1x1 prediction conv``.
- yolov3-tiny.cfg: 20: 384 @ s16 -> 23 (the ``route -1, 8`` concat), 13: 256 @ s32 -> 16 (1x1 conv,
  also read by ``route -4``); each head is ``3x3 conv, 1x1 prediction conv``.
- yolo-fastest-1.1-xl.cfg: 124: 144 @ s16 -> 130 (the ``route -1, 80`` concat of the upsampled
  layer 115 and the stride-16 shortcut 80), 115: 96 @ s32 -> 121 (the 1x1 leaky conv after SPP, also
  read by ``route -7``); each head is ``dw5x5, 1x1 linear, dw5x5, 1x1 linear, 1x1 prediction conv``.
  Layer 124 depends on layer 115, so the neck computes both before any head runs.

Decode is Darknet's: ``xy = (sigmoid(t) * s - 0.5 * (s - 1) + grid) * stride`` with ``s = scale_x_y``,
``wh = exp(t) * anchor`` (anchors in input pixels), objectness and classes through a sigmoid.
Input is RGB in 0..1 (Darknet's convention); letterboxing is done by the caller.

Usage:
    det = load_darknet("yolo-fastest-1.1-xl.cfg", "yolo-fastest-1.1-xl.weights")
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from invismap.detector.base import Detector
from invismap.errors import InvismapError, file_error
from invismap.io import atomic_write

log = logging.getLogger(__name__)

__all__ = [
    "DarknetDetector",
    "load_darknet",
    "load_darknet_weights",
    "parse_cfg",
    "save_darknet_weights",
]

ACTIVATIONS = ("leaky", "linear", "relu", "mish", "swish", "logistic")

# ---------------------------------------------------------------------------------------------
# .cfg parsing (pure)
# ---------------------------------------------------------------------------------------------


def _ints(v: str) -> list[int]:
    return [int(x) for x in _items(v)]


def _floats(v: str) -> list[float]:
    return [float(x) for x in _items(v)]


def _items(v: str) -> list[str]:
    items = [x for x in v.split(",") if x != ""]  # Darknet tolerates a trailing comma
    if not items:
        raise ValueError("empty list")
    return items


def _activation(v: str) -> str:
    if v not in ACTIVATIONS:
        raise ValueError(v)
    return v


_EXPECTED = {int: "an integer", float: "a number", _ints: "a comma-separated list of integers",
             _floats: "a comma-separated list of numbers",
             _activation: "one of " + ", ".join(ACTIVATIONS)}

# Section -> {key: (parser, default)}. ``None`` defaults are resolved when the model is built.
_SPEC: dict[str, dict[str, tuple[Callable[[str], Any], Any]]] = {
    "net": {"width": (int, 416), "height": (int, 416), "channels": (int, 3)},
    "convolutional": {
        "batch_normalize": (int, 0), "filters": (int, 1), "size": (int, 1), "stride": (int, 1),
        "pad": (int, 0), "padding": (int, 0), "groups": (int, 1), "activation": (_activation, "logistic"),
    },
    "shortcut": {"from": (int, None), "activation": (_activation, "linear")},
    "route": {"layers": (_ints, None), "groups": (int, 1), "group_id": (int, 0)},
    "upsample": {"stride": (int, 2), "scale": (float, 1.0)},
    "maxpool": {"size": (int, None), "stride": (int, 1), "padding": (int, None)},
    "dropout": {"probability": (float, 0.5)},
    "yolo": {"mask": (_ints, None), "anchors": (_floats, None), "classes": (int, 20), "num": (int, None),
             "scale_x_y": (float, 1.0), "new_coords": (int, 0)},
}

# Training-only keys: accepted and dropped (they do not change the network's outputs).
_IGNORED: dict[str, frozenset[str]] = {
    "net": frozenset("""batch subdivisions momentum decay angle saturation exposure hue learning_rate burn_in
        max_batches policy steps scales step gamma power mosaic mosaic_bound letter_box flip blur
        gaussian_noise mixup cutmix max_chart_loss sequential_subdivisions adam B1 B2 eps track time_steps
        augment_speed min_crop max_crop aspect inputs label_smooth_eps use_cuda_graph optimized_memory
        workspace_size_limit_MB dynamic_minibatch loss_scale ema_alpha seq_scales num_boxes train_only_bn
        attention adversarial_lr contrastive contrastive_jit_flip contrastive_color unsupervised
        random""".split()),
    "yolo": frozenset("""jitter ignore_thresh truth_thresh random iou_thresh cls_normalizer iou_normalizer
        obj_normalizer iou_loss iou_thresh_kind nms_kind beta_nms max_delta counters_per_class
        label_smooth_eps resize objectness_smooth max focal_loss beta1 uc_normalizer delta_normalizer
        map show_details""".split()),
    "dropout": frozenset({"dropblock", "dropblock_size_rel", "dropblock_size_abs"}),
}

_REQUIRED = {"shortcut": ("from",), "route": ("layers",), "yolo": ("anchors",)}


def _cfg_error(path: str | Path, line: int, section: str | None, problem: str,
               fix: str = "") -> InvismapError:
    where = f"{path}:{line}: " + (f"[{section}] " if section else "")
    return InvismapError(where + problem + (f" ({fix})" if fix else ""))


def parse_cfg(text: str, path: str | Path = "<cfg>") -> list[dict[str, Any]]:
    """Parse Darknet ``.cfg`` text into typed sections, defaults filled in.

    Args:
        text: the file's content.
        path: the file's name, used only in error messages.

    Returns:
        One dict per section, in file order, each with ``type`` (section name), ``line`` (1-based line
        of the header) and its keys, typed. Training-only keys are dropped. The first is ``[net]``.

    Raises:
        InvismapError: unknown section, unknown key, malformed or repeated key, missing required key,
            file not starting with ``[net]``; the message names the file, line and section.

    Example:
        >>> parse_cfg("[net]\\nwidth=32\\n[maxpool]\\nsize=2\\nstride=2\\n")[1]
        {'type': 'maxpool', 'line': 3, 'size': 2, 'stride': 2, 'padding': None}
    """
    sections: list[dict[str, Any]] = []
    seen: set[str] = set()
    cur: dict[str, Any] | None = None
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].split(";", 1)[0]
        line = "".join(line.split())  # Darknet strips all whitespace: "mask = 3, 4" == "mask=3,4"
        if not line:
            continue
        if line.startswith("["):
            if not line.endswith("]") or len(line) < 3:
                raise _cfg_error(path, lineno, None, f"malformed section header '{raw.strip()}'",
                                 "write it as [name]")
            name = line[1:-1]
            if name not in _SPEC:
                raise _cfg_error(path, lineno, None, f"unknown section [{name}]",
                                 "supported: " + ", ".join(f"[{s}]" for s in _SPEC))
            if not sections and name != "net":
                raise _cfg_error(path, lineno, name, "the first section must be [net]")
            if sections and name == "net":
                raise _cfg_error(path, lineno, name, "[net] given twice", "keep only the first section's")
            _finish(cur, path)
            cur = {"type": name, "line": lineno}
            cur.update({k: d for k, (_, d) in _SPEC[name].items()})
            sections.append(cur)
            seen = set()
            continue
        if cur is None:
            raise _cfg_error(path, lineno, None, f"'{raw.strip()}' outside any section",
                             "start the file with [net]")
        name = cur["type"]
        if "=" not in line:
            raise _cfg_error(path, lineno, name, f"malformed line '{raw.strip()}'", "expected key=value")
        key, value = line.split("=", 1)
        if key in seen:
            raise _cfg_error(path, lineno, name, f"key '{key}' given twice", "keep one")
        seen.add(key)
        if key in _IGNORED.get(name, ()):
            continue
        if key not in _SPEC[name]:
            raise _cfg_error(path, lineno, name, f"unknown key '{key}'",
                             "supported: " + ", ".join(_SPEC[name]))
        parser = _SPEC[name][key][0]
        try:
            cur[key] = parser(value)
        except ValueError:
            raise _cfg_error(path, lineno, name, f"bad value '{value}' for '{key}'",
                             f"expected {_EXPECTED[parser]}") from None
    _finish(cur, path)
    if not sections:
        raise file_error(path, "no sections found (empty or not a Darknet .cfg)", "pass a Darknet .cfg file")
    return sections


def _finish(sec: dict[str, Any] | None, path: str | Path) -> None:
    if sec is None:
        return
    for key in _REQUIRED.get(sec["type"], ()):
        if sec[key] is None:
            raise _cfg_error(path, sec["line"], sec["type"], f"missing required key '{key}'")


# ---------------------------------------------------------------------------------------------
# Layers
# ---------------------------------------------------------------------------------------------


def _make_activation(name: str) -> nn.Module:
    return {"leaky": lambda: nn.LeakyReLU(0.1), "linear": nn.Identity, "relu": nn.ReLU, "mish": nn.Mish,
            "swish": nn.SiLU, "logistic": nn.Sigmoid}[name]()


class _Conv(nn.Module):
    """Darknet [convolutional]: conv (bias only without BN) -> BN -> activation."""

    def __init__(self, c_in: int, filters: int, size: int, stride: int, padding: int, groups: int,
                 batch_normalize: bool, activation: str):
        super().__init__()
        self.conv = nn.Conv2d(c_in, filters, size, stride, padding, groups=groups, bias=not batch_normalize)
        # Darknet computes (x - mean) / sqrt(var + 1e-5) (AlexeyAB); pjreddie adds 1e-6 outside the sqrt.
        self.bn = nn.BatchNorm2d(filters, eps=1e-5, momentum=0.01) if batch_normalize else None
        self.act = _make_activation(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        return self.act(x)


class _MaxPool(nn.Module):
    """Darknet [maxpool]: pads ``padding // 2`` before and the rest after, with -inf.

    Darknet's default ``padding = size - 1`` makes ``size=2 stride=1`` keep the size (yolov3-tiny
    layer 11) and ``size=3/5/9 stride=1`` centred (SPP).
    """

    def __init__(self, size: int, stride: int, padding: int):
        super().__init__()
        self.size, self.stride = size, stride
        self.pad = (padding // 2, padding - padding // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if any(self.pad):
            lo, hi = self.pad
            x = F.pad(x, (lo, hi, lo, hi), value=float("-inf"))
        return F.max_pool2d(x, self.size, self.stride)


class _Upsample(nn.Module):
    def __init__(self, stride: int, scale: float):
        super().__init__()
        self.stride, self.scale = stride, scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=self.stride, mode="nearest")
        return x * self.scale if self.scale != 1.0 else x


class _Route(nn.Module):
    """Darknet [route]: channel concat of the listed layers, optionally one channel group of each."""

    def __init__(self, groups: int, group_id: int):
        super().__init__()
        self.groups, self.group_id = groups, group_id

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        if self.groups > 1:
            xs = tuple(x.chunk(self.groups, dim=1)[self.group_id] for x in xs)
        return xs[0] if len(xs) == 1 else torch.cat(xs, dim=1)


class _Shortcut(nn.Module):
    def __init__(self, activation: str):
        super().__init__()
        self.act = _make_activation(activation)

    def forward(self, prev: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        return self.act(prev + other)


class _Passthrough(nn.Module):
    """[dropout] at inference, and the [yolo] placeholder (decoding is :meth:`DarknetDetector.decode`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


# ---------------------------------------------------------------------------------------------
# Detector
# ---------------------------------------------------------------------------------------------


class DarknetDetector(Detector):
    """A Darknet YOLO network split into neck (up to the taps), heads and decode.

    Args:
        sections: output of :func:`parse_cfg` (``[net]`` first).
        path: the cfg's name, for error messages.
        names: class names; numbered ``"0", "1", ...`` when ``None``.

    Attributes:
        taps: layer index of each neck output, fine to coarse.
        yolo_layers: index of the ``[yolo]`` layer each tap feeds, same order.
        head_layers: the conv layer indices from tap to ``[yolo]`` (exclusive), same order.
        tap_channels: channels of each neck output.
        strides: stride of each neck output, from shape propagation through the graph.
        input_size: ``(height, width)`` from ``[net]``.
        in_channels: image channels from ``[net]``.
        header: ``(major, minor, revision, seen)`` of the ``.weights`` file (written back on save).

    Shape:
        - images: :math:`(B, C, H, W)`, ``C`` from ``[net] channels`` (3), RGB in 0..1, ``H, W``
          multiples of ``max_stride``.
        - decode output: :math:`(B, N, 5 + nc)`, ``N = sum(A * h * w)`` over scales, fine to coarse.
    """

    def __init__(self, sections: list[dict[str, Any]], path: str | Path = "<cfg>",
                 names: list[str] | None = None):
        super().__init__()
        if not sections or sections[0]["type"] != "net":
            raise file_error(path, "the first section must be [net]")
        net, blocks = sections[0], sections[1:]
        self.cfg_path = str(path)
        self.input_size = (net["height"], net["width"])
        self.in_channels = net["channels"]
        self.header = (0, 2, 0, 0)
        self.sections = [dict(b) for b in blocks]
        self.layers = nn.ModuleList()
        self._inputs: list[list[int]] = []  # absolute input indices of each layer; -1 is the image
        chans: list[int] = []
        strides: list[Fraction] = []
        img_c, img_s = net["channels"], Fraction(1)

        def shape(j: int) -> tuple[int, Fraction]:
            return (img_c, img_s) if j < 0 else (chans[j], strides[j])

        for i, b in enumerate(blocks):
            err = _LayerErrors(path, b)
            t = b["type"]
            prev = i - 1
            if t == "convolutional":
                c_in, s_in = shape(prev)
                k, st, g, f = b["size"], b["stride"], b["groups"], b["filters"]
                if min(k, st, g, f) < 1:
                    raise err("size, stride, groups and filters must be >= 1")
                if c_in % g or f % g:
                    raise err(f"groups={g} must divide input channels {c_in} and filters {f}")
                padding = k // 2 if b["pad"] else b["padding"]
                if padding < 0:
                    raise err(f"padding={padding} must be >= 0")
                layer: nn.Module = _Conv(c_in, f, k, st, padding, g, bool(b["batch_normalize"]),
                                         b["activation"])
                ins, c, s = [prev], f, s_in * st
            elif t == "maxpool":
                st = b["stride"]
                size = b["size"] if b["size"] is not None else st
                padding = b["padding"] if b["padding"] is not None else size - 1
                if size < 1 or st < 1 or padding < 0:
                    raise err("size and stride must be >= 1, padding >= 0")
                layer = _MaxPool(size, st, padding)
                (c, s_in), ins = shape(prev), [prev]
                s = s_in * st
            elif t == "upsample":
                if b["stride"] < 1:
                    raise err("stride must be >= 1")
                layer = _Upsample(b["stride"], b["scale"])
                (c, s_in), ins = shape(prev), [prev]
                s = s_in / b["stride"]
            elif t == "dropout":
                layer = _Passthrough()
                (c, s), ins = shape(prev), [prev]
            elif t == "shortcut":
                other = _absolute(b["from"], i, err, "from")
                (c, s), (c2, s2) = shape(prev), shape(other)
                if (c, s) != (c2, s2):
                    raise err(f"adds layer {prev} ({c} ch, stride {s}) to layer {other} "
                              f"({c2} ch, stride {s2})", "shapes must match")
                layer, ins = _Shortcut(b["activation"]), [prev, other]
            elif t == "route":
                ins = [_absolute(j, i, err, "layers") for j in b["layers"]]
                g, gid = b["groups"], b["group_id"]
                if g < 1 or not 0 <= gid < g:
                    raise err(f"need groups >= 1 and 0 <= group_id < groups, got {g}, {gid}")
                parts = [shape(j) for j in ins]
                if len({s for _, s in parts}) > 1:
                    raise err(f"concatenates layers {ins} of different strides {[str(s) for _, s in parts]}")
                if any(cj % g for cj, _ in parts):
                    raise err(f"groups={g} must divide the channels of every routed layer")
                layer = _Route(g, gid)
                c, s = sum(cj // g for cj, _ in parts), parts[0][1]
            elif t == "yolo":
                layer, ins = _Passthrough(), [prev]
                c, s = shape(prev)
            else:  # parse_cfg only lets known sections through
                raise err(f"unsupported section [{t}]")
            for j in ins:
                if j >= 0 and blocks[j]["type"] == "yolo" and t != "yolo":
                    raise err(f"reads the output of [yolo] layer {j}", "not supported")
            self.layers.append(layer)
            self._inputs.append(ins)
            chans.append(c)
            strides.append(s)

        self._find_heads(blocks, chans, strides, path)
        self.names = list(names) if names is not None else [str(k) for k in range(self.num_classes)]
        if len(self.names) != self.num_classes:
            raise file_error(path, f"{len(self.names)} class names for {self.num_classes} classes")

    # -- structure ---------------------------------------------------------------------------

    def _find_heads(self, blocks: list[dict], chans: list[int], strides: list[Fraction], path) -> None:
        n = len(blocks)
        consumers: list[set[int]] = [set() for _ in range(n)]
        for i, ins in enumerate(self._inputs):
            for j in ins:
                if j >= 0:
                    consumers[j].add(i)
        yolos = [i for i, b in enumerate(blocks) if b["type"] == "yolo"]
        if not yolos:
            raise file_error(path, "no [yolo] layer", "invismap reads Darknet YOLO detectors only")
        scales = []
        classes = {blocks[y]["classes"] for y in yolos}
        if len(classes) != 1:
            raise file_error(path, f"[yolo] layers disagree on classes: {sorted(classes)}")
        self.num_classes = classes.pop()
        for y in yolos:
            b = blocks[y]
            err = _LayerErrors(path, b)
            anchors = b["anchors"]
            num = b["num"] if b["num"] is not None else len(anchors) // 2
            if len(anchors) != 2 * num:
                raise err(f"{len(anchors)} anchor values for num={num}", "need 2 * num values")
            mask = b["mask"] if b["mask"] is not None else list(range(num))
            if any(not 0 <= m < num for m in mask):
                raise err(f"mask {mask} out of range for num={num}")
            if b["new_coords"]:
                raise err("new_coords=1 (scaled-YOLOv4 decode) is not supported")
            if consumers[y]:
                raise err(f"its output is read by layer(s) {sorted(consumers[y])}", "not supported")
            pred = y - 1
            want = (5 + self.num_classes) * len(mask)
            pb = blocks[pred] if pred >= 0 else {"type": "none"}
            if (pb["type"] != "convolutional" or pb["filters"] != want or pb["activation"] != "linear"
                    or consumers[pred] != {y}):
                raise err(f"layer {pred} before it must be a linear conv with filters={want} "
                          f"((5 + {self.num_classes} classes) * {len(mask)} masks) read only by the [yolo]")
            head = [pred]
            j = pred - 1
            while j >= 0 and blocks[j]["type"] == "convolutional" and consumers[j] == {j + 1}:
                if blocks[j]["size"] == 1 and blocks[j]["activation"] != "linear":
                    break
                head.insert(0, j)
                j -= 1
            if j < 0:
                raise err("no neck layer before its head")
            if strides[j].denominator != 1:
                raise err(f"neck output {j} has non-integer stride {strides[j]}")
            # The head is a chain of convs, each reading the layer before it: it reads only its tap.
            assert all(self._inputs[h] == [h - 1] for h in head) and head[0] - 1 == j
            anchor_px = torch.tensor([anchors[2 * m:2 * m + 2] for m in mask], dtype=torch.float32)
            scales.append((int(strides[j]), j, y, head, anchor_px, b["scale_x_y"], chans[j]))
        scales.sort(key=lambda sc: sc[0])  # fine to coarse
        if len({sc[0] for sc in scales}) != len(scales):
            raise file_error(path, f"two [yolo] heads share a stride: {[sc[0] for sc in scales]}")
        self.strides = tuple(sc[0] for sc in scales)
        self.taps = tuple(sc[1] for sc in scales)
        self.yolo_layers = tuple(sc[2] for sc in scales)
        self.head_layers = tuple(tuple(sc[3]) for sc in scales)
        self.scale_x_y = tuple(float(sc[5]) for sc in scales)
        self.tap_channels = tuple(sc[6] for sc in scales)
        for k, sc in enumerate(scales):
            self.register_buffer(f"anchors{k}", sc[4], persistent=False)  # (A, 2) pixels

        # Neck = every ancestor of a tap; head and [yolo] layers must not be among them.
        need: set[int] = set()
        stack = list(self.taps)
        while stack:
            j = stack.pop()
            if j >= 0 and j not in need:
                need.add(j)
                stack.extend(self._inputs[j])
        head_set = {h for hs in self.head_layers for h in hs} | set(self.yolo_layers)
        assert not need & head_set, "a neck layer depends on a head layer"
        self._neck_order = sorted(need)
        last_use: dict[int, int] = {}
        for i in self._neck_order:
            for j in self._inputs[i]:
                last_use[j] = i
        self._free_after = {i: [j for j, u in last_use.items() if u == i and j not in self.taps]
                            for i in self._neck_order}

    @property
    def anchors(self) -> list[torch.Tensor]:
        """Anchors ``(A, 2)`` in input pixels for each scale, fine to coarse."""
        return [getattr(self, f"anchors{k}") for k in range(len(self.taps))]

    @property
    def conv_layers(self) -> list[_Conv]:
        """Conv layers in file order: the order of their parameters in a ``.weights`` file."""
        return [m for m in self.layers if isinstance(m, _Conv)]

    # -- Detector interface ------------------------------------------------------------------

    def neck_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """``(B, C, H, W)`` RGB in 0..1 -> the tap outputs, fine to coarse."""
        if images.ndim != 4 or images.shape[1] != self.in_channels:
            raise ValueError(f"expected images (B, {self.in_channels}, H, W), got {tuple(images.shape)}")
        out: dict[int, torch.Tensor] = {-1: images}
        for i in self._neck_order:
            out[i] = self.layers[i](*(out[j] for j in self._inputs[i]))
            for j in self._free_after[i]:
                del out[j]
        return [out[t] for t in self.taps]

    def heads(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """Tap outputs -> raw prediction maps ``(B, A * (5 + nc), h, w)``, one per scale."""
        if len(features) != len(self.taps):
            raise ValueError(f"expected {len(self.taps)} neck features, got {len(features)}")
        raw = []
        for x, chain in zip(features, self.head_layers):
            for i in chain:
                x = self.layers[i](x)
            raw.append(x)
        return raw

    def decode(self, raw: list[torch.Tensor]) -> torch.Tensor:
        """Raw maps -> ``(B, N, 5 + nc)``: cx, cy, w, h in input pixels, objectness, class probs."""
        nc = self.num_classes
        preds = []
        for r, anchors, stride, sxy in zip(raw, self.anchors, self.strides, self.scale_x_y):
            b, _, h, w = r.shape
            a = anchors.shape[0]
            if r.shape[1] != a * (5 + nc):
                raise ValueError(f"raw head output has {r.shape[1]} channels, expected {a * (5 + nc)}")
            p = r.reshape(b, a, 5 + nc, h, w).permute(0, 1, 3, 4, 2)  # (B, A, h, w, 5+nc)
            gy, gx = torch.meshgrid(torch.arange(h, device=r.device, dtype=r.dtype),
                                    torch.arange(w, device=r.device, dtype=r.dtype), indexing="ij")
            grid = torch.stack((gx, gy), dim=-1)  # (h, w, 2)
            xy = (p[..., :2].sigmoid() * sxy - 0.5 * (sxy - 1.0) + grid) * stride
            wh = p[..., 2:4].exp() * anchors.to(r.dtype).view(1, a, 1, 1, 2)
            preds.append(torch.cat((xy, wh, p[..., 4:].sigmoid()), dim=-1).reshape(b, a * h * w, 5 + nc))
        return torch.cat(preds, dim=1)


class _LayerErrors:
    """Builds one-line errors that point at a layer's section in the cfg."""

    def __init__(self, path: str | Path, block: dict):
        self.path, self.block = path, block

    def __call__(self, problem: str, fix: str = "") -> InvismapError:
        return _cfg_error(self.path, self.block["line"], self.block["type"], problem, fix)


def _absolute(j: int, i: int, err: _LayerErrors, key: str) -> int:
    a = i + j if j < 0 else j
    if not 0 <= a < i:
        raise err(f"{key}={j} points at layer {a}, which is not an earlier layer (this is layer {i})")
    return a


# ---------------------------------------------------------------------------------------------
# .weights I/O
# ---------------------------------------------------------------------------------------------


def _conv_tensors(layer: _Conv) -> list[torch.Tensor]:
    """A conv's tensors in ``.weights`` order: BN (bias, scale, mean, var) or conv bias, then weights."""
    if layer.bn is not None:
        bn = layer.bn
        return [bn.bias, bn.weight, bn.running_mean, bn.running_var, layer.conv.weight]
    return [layer.conv.bias, layer.conv.weight]


def _header_layout(major: int, minor: int) -> tuple[int, type]:
    """Header size in bytes and the type of ``seen``: int64 from version 0.2 on, int32 before."""
    return (20, np.int64) if major * 10 + minor >= 2 else (16, np.int32)


def load_darknet_weights(model: DarknetDetector, path: str | Path) -> None:
    """Fill ``model`` from a Darknet ``.weights`` file; every float of the file must be used.

    Raises:
        InvismapError: missing or unreadable file, truncated file, extra floats (cfg mismatch),
            NaN or inf values.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise file_error(path, "weights file not found", "check the path") from None
    except OSError as e:
        raise file_error(path, f"cannot read: {e.strerror}") from None
    tensors = [t for layer in model.conv_layers for t in _conv_tensors(layer)]
    expected = sum(t.numel() for t in tensors)
    if len(data) < 12:
        raise file_error(path, f"truncated .weights file: {len(data)} bytes, shorter than the header",
                         "re-download it")
    major, minor, revision = (int(v) for v in np.frombuffer(data, "<i4", count=3))
    hsize, seen_t = _header_layout(major, minor)
    if len(data) < hsize:
        raise file_error(path, f"truncated .weights file: {len(data)} bytes, shorter than the header",
                         "re-download it")
    seen = int(np.frombuffer(data, "<i8" if seen_t is np.int64 else "<i4", count=1, offset=12)[0])
    body = len(data) - hsize
    found = body // 4
    if found < expected:
        raise file_error(path, f"truncated .weights file: expected {expected} floats, found {found}",
                         f"re-download it, or use the .cfg it was trained with (cfg: {model.cfg_path})")
    if found > expected or body % 4:
        raise file_error(path, f"has extra floats — cfg does not match: expected {expected} floats, "
                         f"found {found}" + (f" and {body % 4} stray bytes" if body % 4 else ""),
                         f"use the .cfg these weights were trained with, not {model.cfg_path}")
    floats = np.frombuffer(data, "<f4", count=expected, offset=hsize)
    if not np.isfinite(floats).all():
        raise file_error(path, "holds NaN or inf values (corrupt or diverged weights)", "re-download it")
    offset = 0
    with torch.no_grad():
        for t in tensors:
            n = t.numel()
            t.copy_(torch.from_numpy(floats[offset:offset + n].copy()).view_as(t))
            offset += n
    model.header = (major, minor, revision, seen)


def save_darknet_weights(model: DarknetDetector, path: str | Path) -> None:
    """Write ``model`` as a Darknet ``.weights`` file (atomically), with the header it was loaded with."""
    major, minor, revision, seen = model.header
    _hsize, seen_t = _header_layout(major, minor)
    with atomic_write(path, "wb") as f:
        f.write(np.array([major, minor, revision], "<i4").tobytes())
        f.write(np.array([seen], "<i8" if seen_t is np.int64 else "<i4").tobytes())
        for layer in model.conv_layers:
            for t in _conv_tensors(layer):
                f.write(t.detach().to("cpu", torch.float32).numpy().astype("<f4").tobytes())


def _read_names(cfg_path: Path, num_classes: int) -> list[str] | None:
    """Class names from ``<cfg stem>.names`` or ``coco.names`` next to the cfg, if the count matches."""
    for cand in (cfg_path.with_suffix(".names"), cfg_path.parent / "coco.names"):
        if cand.is_file():
            names = [ln.strip() for ln in cand.read_text(encoding="utf-8", errors="replace").splitlines()]
            names = [n for n in names if n]
            if len(names) == num_classes:
                return names
            log.warning("%s has %d names but the cfg has %d classes; using numbers", cand, len(names),
                        num_classes)
    return None


def load_darknet(cfg_path: str | Path, weights_path: str | Path | None = None) -> DarknetDetector:
    """Build a Darknet detector from a ``.cfg`` and, if given, load its ``.weights``.

    Args:
        cfg_path: Darknet ``.cfg``; class names come from ``coco.names`` (or ``<stem>.names``) beside it,
            else they are numbered.
        weights_path: Darknet ``.weights``; ``None`` keeps PyTorch's random initialisation.

    Returns:
        The detector, in eval mode.

    Example:
        >>> det = load_darknet("yolov3-tiny.cfg")  # doctest: +SKIP
        >>> [f.shape for f in det.neck_features(torch.zeros(1, 3, 416, 416))]  # doctest: +SKIP
        [torch.Size([1, 384, 26, 26]), torch.Size([1, 256, 13, 13])]
    """
    cfg_path = Path(cfg_path)
    try:
        text = cfg_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise file_error(cfg_path, "cfg file not found", "check the path") from None
    except UnicodeDecodeError:
        raise file_error(cfg_path, "not a text file", "pass the Darknet .cfg, not the .weights") from None
    except OSError as e:
        raise file_error(cfg_path, f"cannot read: {e.strerror}") from None
    sections = parse_cfg(text, cfg_path)
    model = DarknetDetector(sections, cfg_path)
    names = _read_names(cfg_path, model.num_classes)
    if names is not None:
        model.names = names
    if weights_path is not None:
        load_darknet_weights(model, weights_path)
    return model.eval()
