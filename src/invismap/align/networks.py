"""AlignGAN networks: motion-cue generator Gm, image generator G, PatchGAN discriminators D and Dm.

Paper "Pixel Invisibility: Detect Object Unseen in Color Domain", Section 3.1: AlignGAN is pix2pix
(Isola et al. 2017) conditioned on an *edge map of the target position*. Given a color source image and
the edge map of where its content should be (the thermal image's edges, or a nearby color frame's), G
outputs the color image at the target position; a second generator Gm supplies *motion cues* to G, and
each generator has its own discriminator (D on ``(edge, image)``, Dm on ``(edge, motion cue)``).

Our interpretation (the paper does not spell out the layers):

* **Motion cue = a dense flow** ``m`` ``(B, 2, H, W)`` in pixels, the sampling offset with
  ``target(x) = source(x + m(x))`` (``m[:, 0]`` = dx, ``m[:, 1]`` = dy). That makes the cue supervisable
  (by the known synthetic misalignment, or by DIS flow between color frames) and directly usable.
* **Gm** (:class:`MotionNet`): a classical cue plus a learned correction. The cue is the registration
  baseline (DIS flow between edge images, filled from its trusted pixels, a homography fitted to it;
  :func:`invismap.align.data.motion_cues`); Gm's own part is two small encoders (color source + its edge
  map; target edge map) to stride ``2**corr_levels``, the source features warped by the cue, a local
  cost volume (radius ``corr_radius`` cells, as in FlowNet-C/PWC-Net) pooled over windows and read by a
  soft-argmax, and a U-Net that regresses the residual flow. With ``prior="none"`` Gm is purely
  learned. Learning cross-modal matching from scratch did not get below the zero-flow error in a few
  hundred CPU steps (measured); starting from the classical cue, Gm is never worse than it at
  initialisation and learns only the correction.
* **G** (:class:`AlignGenerator`): warps the source by ``m`` (``grid_sample``) and refines it with a
  U-Net that sees ``[source, target edge, warped source, m / flow_scale]``; its last conv starts at zero,
  so at initialisation G's output is the warped source.
* **D, Dm** (:class:`PatchDiscriminator`): pix2pix's 70x70-style PatchGAN (configurable depth/width) on
  ``(edge, image)`` and ``(edge, m / flow_scale)``.

Tensors: images in 0..1 (fed to the networks as ``2x - 1``), edge maps in 0..1 from
:func:`invismap.registration.displacement.edge_image`.

Example:
    >>> nets = build_aligngan(AlignNetConfig(prior="none"))
    >>> fake, flow = generate(nets, torch.rand(1, 3, 64, 64), torch.rand(1, 1, 64, 64))
    >>> fake.shape, flow.shape
    (torch.Size([1, 3, 64, 64]), torch.Size([1, 2, 64, 64]))
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "AlignGenerator",
    "AlignNetConfig",
    "MotionDiscriminator",
    "MotionNet",
    "PatchDiscriminator",
    "UNet",
    "build_aligngan",
    "edge_map",
    "generate",
    "warp",
]


@dataclass(frozen=True)
class AlignNetConfig:
    """Architecture of the four AlignGAN networks (stored in every checkpoint)."""

    g_width: int = 8  # G: channels of the first U-Net level (level i has g_width * 2**i, capped at 8x)
    g_depth: int = 4  # G: U-Net resolution levels (strides 1 .. 2**(depth-1))
    m_width: int = 16  # Gm: encoder width (features at the correlation stride have 2 * m_width channels)
    m_depth: int = 3  # Gm: U-Net levels above the correlation stride
    corr_levels: int = 2  # Gm: the cost volume is built at stride 2**corr_levels
    corr_radius: int = 5  # Gm: search radius in cells (pixels: corr_radius * 2**corr_levels)
    corr_windows: tuple[int, ...] = (7, 21)  # Gm: cells over which matching cost is pooled (soft-argmax)
    flow_scale: float = 4.0  # pixels per unit of the networks' flow output / input
    prior: str = "homography"  # Gm's classical motion cue: "homography" (edge flow + fit) | "none"
    d_width: int = 16  # D and Dm: channels of the first layer (pix2pix: 64)
    d_layers: int = 3  # D and Dm: stride-2 layers (3 = pix2pix's 70x70 PatchGAN)
    norm: str = "instance"  # "instance" | "batch" | "none" (G, Gm's U-Net, D)

    def __post_init__(self):
        if self.norm not in ("instance", "batch", "none"):
            raise ValueError(f"norm must be 'instance', 'batch' or 'none', got {self.norm!r}")
        for key in ("g_width", "g_depth", "m_width", "m_depth", "d_width", "d_layers"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")
        if self.prior not in ("homography", "none"):
            raise ValueError(f"prior must be 'homography' or 'none', got {self.prior!r}")
        if not self.corr_windows or any(k < 1 or k % 2 == 0 for k in self.corr_windows):
            raise ValueError(f"corr_windows must be odd sizes >= 1, got {self.corr_windows}")
        if self.corr_levels < 0 or self.corr_radius < 0 or self.flow_scale <= 0:
            raise ValueError("corr_levels and corr_radius must be >= 0 and flow_scale > 0")


def _norm(kind: str, c: int) -> nn.Module:
    if kind == "instance":
        return nn.InstanceNorm2d(c, affine=True)
    if kind == "batch":
        return nn.BatchNorm2d(c)
    return nn.Identity()


def _block(c_in: int, c_out: int, norm: str, stride: int = 1) -> nn.Sequential:
    """Two 3x3 convs (the first with ``stride``), each followed by norm and LeakyReLU(0.2)."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride, 1, bias=norm == "none"), _norm(norm, c_out),
        nn.LeakyReLU(0.2, True),
        nn.Conv2d(c_out, c_out, 3, 1, 1, bias=norm == "none"), _norm(norm, c_out),
        nn.LeakyReLU(0.2, True))


class UNet(nn.Module):
    """A plain U-Net: ``depth`` levels, stride-2 conv down, bilinear up + concat skip.

    Any input size works: skips are matched by upsampling to the skip's shape.

    Args:
        c_in: input channels.
        c_out: output channels (a 1x1 conv, initialised to zero when ``zero_out``).
        width: channels of level 0; level ``i`` has ``width * 2**min(i, 3)``.
        depth: number of levels.
        norm: normalisation kind.
        zero_out: start the output conv at zero (the network starts as "no change").

    Shape:
        ``(B, c_in, H, W)`` -> ``(B, c_out, H, W)``.
    """

    def __init__(self, c_in: int, c_out: int, width: int, depth: int, norm: str = "instance",
                 zero_out: bool = False):
        super().__init__()
        widths = [width * 2 ** min(i, 3) for i in range(depth)]
        self.down = nn.ModuleList([_block(c_in, widths[0], norm)] +
                                  [_block(widths[i - 1], widths[i], norm, stride=2) for i in range(1, depth)])
        self.up = nn.ModuleList([_block(widths[i + 1] + widths[i], widths[i], norm)
                                 for i in range(depth - 1)])
        self.out = nn.Conv2d(widths[0], c_out, 1)
        if zero_out:
            nn.init.zeros_(self.out.weight)
            nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
        x = skips.pop()
        for block in reversed(self.up):
            skip = skips.pop()
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], 1))
        return self.out(x)


def edge_map(rgb: torch.Tensor, sigma: float = 1.0, norm_window: int = 31) -> torch.Tensor:
    """Locally normalised gradient magnitude of an image, a torch twin of ``edge_image``.

    Same recipe as :func:`invismap.registration.displacement.edge_image` (Gaussian blur, Sobel, divide by
    the local mean plus a floor, ``m / (m + 1)``), differentiable and batched. Not bit-identical to it
    (border handling differs); Gm uses it for the source's own edges.

    Args:
        rgb: ``(B, 3, H, W)`` or ``(B, 1, H, W)`` in 0..1.

    Returns:
        ``(B, 1, H, W)`` in ``[0, 1)``.
    """
    g = rgb.mean(1, keepdim=True) if rgb.shape[1] != 1 else rgb
    g = g * 255.0  # edge_image works on 0..255 images; the floor below is relative, the eps is not
    r = max(1, round(3 * sigma))
    t = torch.arange(-r, r + 1, dtype=g.dtype, device=g.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    g = F.pad(g, (r, r, r, r), mode="replicate")
    g = F.conv2d(F.conv2d(g, k.view(1, 1, 1, -1)), k.view(1, 1, -1, 1))
    sx = torch.tensor([[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=g.dtype, device=g.device)
    gp = F.pad(g, (1, 1, 1, 1), mode="replicate")
    gx = F.conv2d(gp, sx.view(1, 1, 3, 3))
    gy = F.conv2d(gp, sx.t().reshape(1, 1, 3, 3))
    mag = torch.sqrt(gx * gx + gy * gy + 1e-12)
    p = norm_window // 2
    local = F.pad(mag, (p, p, p, p), mode="replicate")
    # separable
    local = F.avg_pool2d(F.avg_pool2d(local, (1, norm_window), stride=1), (norm_window, 1), stride=1)
    floor = 0.25 * mag.mean(dim=(1, 2, 3), keepdim=True) + 1e-6
    m = mag / (local + floor)
    return m / (m + 1.0)


def warp(image: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """``out(x) = image(x + flow(x))`` by bilinear sampling (border values repeat outside).

    Args:
        image: ``(B, C, H, W)``.
        flow: ``(B, 2, H, W)`` pixels, ``flow[:, 0]`` = dx, ``flow[:, 1]`` = dy.

    Returns:
        ``(B, C, H, W)``.
    """
    h, w = flow.shape[-2:]
    ys, xs = torch.meshgrid(torch.arange(h, dtype=flow.dtype, device=flow.device),
                            torch.arange(w, dtype=flow.dtype, device=flow.device), indexing="ij")
    px = xs + flow[:, 0]  # (B, H, W)
    py = ys + flow[:, 1]
    # align_corners=True: -1 and 1 are the centres of the first and last pixels.
    grid = torch.stack([2 * px / max(w - 1, 1) - 1, 2 * py / max(h - 1, 1) - 1], -1)  # (B, H, W, 2)
    return F.grid_sample(image, grid, mode="bilinear", padding_mode="border", align_corners=True)


def _encoder(c_in: int, width: int, levels: int) -> nn.Sequential:
    """Features ``(B, 2 * width, H / 2**levels, W / 2**levels)``: per level a stride-2 conv and a conv."""
    layers: list[nn.Module] = []
    c = c_in
    for i in range(max(levels, 1)):
        c_out = width * 2 if i == max(levels, 1) - 1 else width
        layers += [nn.Conv2d(c, c_out, 3, 2 if levels else 1, 1), nn.LeakyReLU(0.2, True),
                   nn.Conv2d(c_out, c_out, 3, 1, 1), nn.LeakyReLU(0.2, True)]
        c = c_out
    layers.pop()  # linear features: signed, so cosine similarities use the whole -1..1 range
    return nn.Sequential(*layers)


def correlation(a: torch.Tensor, b: torch.Tensor, radius: int) -> torch.Tensor:
    """Local cost volume: ``out[:, k](x) = mean_c a(x) * b(x + d_k)`` for every ``d_k`` in the window.

    Args:
        a: ``(B, C, h, w)`` features of the target.
        b: ``(B, C, h, w)`` features of the source.
        radius: window radius in cells; ``d_k`` runs over ``dy`` (outer) then ``dx`` in ``-r..r``.

    Returns:
        ``(B, (2r+1)**2, h, w)``; zero where ``x + d_k`` falls outside.
    """
    h, w = a.shape[-2:]
    bp = F.pad(b, (radius, radius, radius, radius))
    out = [(a * bp[:, :, dy:dy + h, dx:dx + w]).mean(1) for dy in range(2 * radius + 1)
           for dx in range(2 * radius + 1)]
    return torch.stack(out, 1)


def _box(x: torch.Tensor, k: int) -> torch.Tensor:
    """Mean over a ``k x k`` window (separable; only pixels inside the image count at the border)."""
    if k <= 1:
        return x
    x = F.avg_pool2d(x, (1, k), 1, (0, k // 2), count_include_pad=False)
    return F.avg_pool2d(x, (k, 1), 1, (k // 2, 0), count_include_pad=False)


class MotionNet(nn.Module):
    """Gm: flow ``(B, 2, H, W)`` (pixels) with ``target(x) ~ source(x + flow(x))``.

    1. Learned features of the source (RGB + its edge map) and of the target edge map, at stride
       ``s = 2**corr_levels``. With a prior (``cfg.prior="homography"``) the source features are first
       warped by it, so that matching searches only the prior's error.
    2. A cost volume: cosine similarity over displacements of up to ``corr_radius`` cells.
    3. For each window size in ``corr_windows`` (cells), the cost is averaged over the window and turned
       into a flow by a soft-argmax (learned temperature): matching evidence is pooled over a region,
       which is what makes cross-modal matches reliable, and the flow loss reaches the features directly.
    4. A U-Net sees those flows and their confidences, the target features and the classical cues
       (prior, filled edge flow, trust density), and regresses a residual at stride ``s``, upsampled
       bilinearly and added to the prior (or, without a prior, to the smallest window's flow).

    The classical cues come from :func:`invismap.align.data.motion_cues` (DIS flow on edge images, filled
    from its trusted pixels, and a homography fitted to it: the registration baseline).

    Args:
        cfg: architecture.

    Shape:
        source ``(B, 3, H, W)`` in 0..1, target_edge ``(B, 1, H, W)`` in 0..1, cues ``(B, 5, H, W)``
        (pixels: prior dx dy, filled flow dx dy, trust 0..1; only with a prior) -> ``(B, 2, H, W)``.
    """

    n_cues = 5

    def __init__(self, cfg: AlignNetConfig):
        super().__init__()
        self.cfg = cfg
        self.enc_src = _encoder(4, cfg.m_width, cfg.corr_levels)  # RGB + its own edge map
        self.enc_tgt = _encoder(1, cfg.m_width, cfg.corr_levels)
        r, stride = cfg.corr_radius, 2 ** cfg.corr_levels
        d = torch.arange(-r, r + 1, dtype=torch.float32) * stride
        dy, dx = torch.meshgrid(d, d, indexing="ij")  # (2r+1, 2r+1), dy outer as in correlation()
        self.register_buffer("disp", torch.stack([dx.reshape(-1), dy.reshape(-1)], 0)[:, :, None, None],
                             persistent=False)  # (2, K, 1, 1) pixels
        self.log_beta = nn.Parameter(torch.tensor(float(torch.log(torch.tensor(10.0)))))
        n_in = 3 * len(cfg.corr_windows) + 2 * cfg.m_width + (self.n_cues if cfg.prior != "none" else 0)
        self.decoder = UNet(n_in, 2, 2 * cfg.m_width, cfg.m_depth, cfg.norm, zero_out=True)

    def forward(self, source: torch.Tensor, target_edge: torch.Tensor, cues: torch.Tensor | None = None,
                aux: bool = False) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """The flow; with ``aux`` also the per-window log-probabilities ``(B, K, h, w)`` of the displacements
        (relative to the prior when there is one)."""
        h, w = source.shape[-2:]
        use_prior = self.cfg.prior != "none"
        if use_prior and (cues is None or cues.shape[1] != self.n_cues):
            raise ValueError(f"this Gm needs motion cues (B, {self.n_cues}, H, W) (prior '{self.cfg.prior}')")
        s = 2 ** self.cfg.corr_levels
        src = torch.cat([source * 2 - 1, edge_map(source) * 2 - 1], 1)
        f_src = self.enc_src(src)
        f_tgt = self.enc_tgt(target_edge * 2 - 1)
        extra = []
        if use_prior:
            cues_s = F.interpolate(cues, size=f_tgt.shape[-2:], mode="area")  # (B, 5, h, w)
            f_src = warp(f_src, cues_s[:, :2] / s)  # prior in cells of the feature grid
            extra = [cues_s[:, :4] / self.cfg.flow_scale, cues_s[:, 4:]]
        # Unit-length features: the cost is a cosine similarity in -1..1, independent of contrast.
        cost = correlation(F.normalize(f_tgt, dim=1), F.normalize(f_src, dim=1), self.cfg.corr_radius)
        cost = cost * f_src.shape[1]  # (B, K, h, w); correlation() averages over channels
        beta = self.log_beta.exp()
        feats, flows, logps = [], [], []
        for k in self.cfg.corr_windows:
            logp = torch.log_softmax(beta * _box(cost, k), 1)  # (B, K, h, w)
            p = logp.exp()
            logps.append(logp)
            flow_k = (p[:, None] * self.disp[None]).sum(2)  # (B, 2, h, w) pixels
            flows.append(flow_k)
            feats += [flow_k / self.cfg.flow_scale, p.max(1, keepdim=True).values]
        x = torch.cat(feats + [f_tgt] + extra, 1)
        residual = self.decoder(x) * self.cfg.flow_scale
        if not use_prior:
            residual = residual + flows[0]
        if residual.shape[-2:] != (h, w):
            residual = F.interpolate(residual, size=(h, w), mode="bilinear", align_corners=False)
        flow = cues[:, :2] + residual if use_prior else residual
        return (flow, logps) if aux else flow

    def displacement_targets(self, motion: torch.Tensor, cues: torch.Tensor | None = None) -> torch.Tensor:
        """Soft one-hot ``(B, K, h, w)`` of a flow over the cost volume's displacements (bilinear weights).

        ``motion`` ``(B, 2, H, W)`` (minus the prior, when Gm has one) is averaged to the cost volume's
        stride; displacements beyond the search window are clamped to its border.
        """
        s = 2 ** self.cfg.corr_levels
        if self.cfg.prior != "none" and cues is not None:
            motion = motion - cues[:, :2]
        m = F.avg_pool2d(motion, s) if s > 1 else motion  # (B, 2, h, w)
        r = self.cfg.corr_radius * s
        m = m.clamp(-r, r)
        wx = (1 - (m[:, None, 0] - self.disp[None, 0]).abs() / s).clamp_min(0)  # (B, K, h, w)
        wy = (1 - (m[:, None, 1] - self.disp[None, 1]).abs() / s).clamp_min(0)
        return wx * wy


class AlignGenerator(nn.Module):
    """G: the color image at the target position, from the source, the target edge map and the cue.

    Shape:
        source ``(B, 3, H, W)``, target_edge ``(B, 1, H, W)``, flow ``(B, 2, H, W)`` ->
        ``(B, 3, H, W)`` (0..1 up to the refinement; not clamped, so the L1 gradient never dies).
    """

    def __init__(self, cfg: AlignNetConfig):
        super().__init__()
        self.cfg = cfg
        self.unet = UNet(3 + 1 + 3 + 2, 3, cfg.g_width, cfg.g_depth, cfg.norm, zero_out=True)

    def forward(self, source: torch.Tensor, target_edge: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
        warped = warp(source, flow)
        x = torch.cat([source * 2 - 1, target_edge * 2 - 1, warped * 2 - 1, flow / self.cfg.flow_scale], 1)
        return warped + 0.5 * self.unet(x)


class PatchDiscriminator(nn.Module):
    """pix2pix PatchGAN: ``(B, c_in, H, W)`` -> ``(B, 1, h, w)`` real/fake logits per patch.

    ``layers`` stride-2 4x4 convs (widths ``width * 2**i``, capped at 8x), one stride-1 4x4 conv, one
    4x4 conv to a single channel; LeakyReLU(0.2), no norm on the first layer.
    """

    def __init__(self, c_in: int, width: int = 32, layers: int = 3, norm: str = "instance"):
        super().__init__()
        seq: list[nn.Module] = [nn.Conv2d(c_in, width, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        c = width
        for i in range(1, layers + 1):
            c_out = width * 2 ** min(i, 3)
            stride = 2 if i < layers else 1
            seq += [nn.Conv2d(c, c_out, 4, stride, 1, bias=norm == "none"), _norm(norm, c_out),
                    nn.LeakyReLU(0.2, True)]
            c = c_out
        seq.append(nn.Conv2d(c, 1, 4, 1, 1))
        self.model = nn.Sequential(*seq)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class MotionDiscriminator(nn.Module):
    """Dm: a PatchGAN on ``(edge, flow / flow_scale)`` average-pooled to Gm's correlation stride.

    Motion fields are smooth, so Dm judges them at the stride Gm predicts them at (cheaper, and it sees
    the whole field's structure with fewer layers).
    """

    def __init__(self, cfg: AlignNetConfig):
        super().__init__()
        self.pool = 2 ** cfg.corr_levels
        self.net = PatchDiscriminator(3, cfg.d_width, max(cfg.d_layers - cfg.corr_levels, 1), cfg.norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(F.avg_pool2d(x, self.pool) if self.pool > 1 else x)


def build_aligngan(cfg: AlignNetConfig) -> nn.ModuleDict:
    """The four networks as one module (what the training loop checkpoints): ``G``, ``Gm``, ``D``, ``Dm``.

    ``D`` sees ``(edge, image)`` as 1 + 3 channels, ``Dm`` sees ``(edge, flow / flow_scale)`` as 1 + 2
    (pooled to Gm's stride).
    """
    return nn.ModuleDict({
        "G": AlignGenerator(cfg),
        "Gm": MotionNet(cfg),
        "D": PatchDiscriminator(4, cfg.d_width, cfg.d_layers, cfg.norm),
        "Dm": MotionDiscriminator(cfg),
    })


def generate(nets: nn.ModuleDict, source: torch.Tensor, target_edge: torch.Tensor,
             cues: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Run Gm then G: ``(aligned image (B, 3, H, W), flow (B, 2, H, W))``; ``cues`` as :class:`MotionNet`."""
    flow = nets["Gm"](source, target_edge, cues)
    return nets["G"](source, target_edge, flow), flow
