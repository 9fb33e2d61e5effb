"""DPT: Vision Transformers for Dense Prediction (Ranftl, Bochkovskiy, Koltun, ICCV 2021).

Built as the official code (``isl-org/DPT``) builds it, on timm backbones:

    image ─► ViT (taps at 4 blocks; Hybrid: ResNet stages 1-2 + ViT blocks 8, 11)
          ─► Reassemble: Read (ignore | add | project) → grid → 1x1 conv → resample ×4 / ×2 / ×1 / ×½
          ─► 3x3 conv to ``features`` (256) ─► 4 RefineNet-style fusion blocks (each ×2) ─► depth | seg head

Differences from the official code that do not change the function:
- Intermediate tokens are collected by this instance's own forward (no module-level hook dict), so two
  models in one process and DDP replicas are independent.
- Module names are descriptive; :func:`checkpoint_filter_fn` renames the official ``pretrained.*`` /
  ``scratch.*`` / ``auxlayer.*`` keys (and HuggingFace ``DPTForDepthEstimation`` keys) to them.
- Parameters the official checkpoints carry but the forward never uses (the ImageNet head, the final
  LayerNorm, ``refinenet4``'s first residual unit, blocks after the last tap) exist so that checkpoints load
  strictly, but are created with ``requires_grad=False``, so DDP needs no ``find_unused_parameters``.
  Calling ``model.requires_grad_(True)`` undoes that; :meth:`DPT.freeze_unused` restores it.

Known numeric difference: the Hybrid's ResNet uses timm 1.0's weight standardisation (eps inside the
sqrt, 1e-8) where the released weights were trained with timm 0.4.5's ``(w - mean) / (std + 1e-5)``;
outputs differ by about 2e-4 relative (``../shared/reference/dpt.md`` §2.6).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange
from timm.models import generate_default_cfgs, register_model, resolve_pretrained_cfg
from timm.models._manipulate import checkpoint

from lvit.models.convert import load_pretrained, pretrained_cfg_modules

READOUTS: tuple[str, ...] = ("ignore", "add", "project")
TASKS: tuple[str, ...] = ("depth", "segmentation")


# --------------------------------------------------------------------------------------------- Read


class ReadIgnore(nn.Module):
    """Drop the prefix (class) tokens."""

    def __init__(self, num_prefix_tokens: int = 1) -> None:
        super().__init__()
        self.num_prefix_tokens = num_prefix_tokens

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens[:, self.num_prefix_tokens :]


class ReadAdd(nn.Module):
    """Add the readout token to every patch token (the mean of cls and dist tokens for DeiT-distilled)."""

    def __init__(self, num_prefix_tokens: int = 1) -> None:
        super().__init__()
        self.num_prefix_tokens = num_prefix_tokens

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        readout = tokens[:, : self.num_prefix_tokens].mean(dim=1, keepdim=True)
        return tokens[:, self.num_prefix_tokens :] + readout


class ReadProject(nn.Module):
    """GELU(Linear(cat[patch, cls])): patch first, cls second, as the official weight layout expects."""

    def __init__(self, dim: int, num_prefix_tokens: int = 1) -> None:
        super().__init__()
        self.num_prefix_tokens = num_prefix_tokens
        self.project = nn.Sequential(nn.Linear(2 * dim, dim), nn.GELU())

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        patches = tokens[:, self.num_prefix_tokens :]
        readout = tokens[:, :1].expand_as(patches)  # the official code always reads token 0
        return self.project(torch.cat([patches, readout], dim=-1))


def create_read(readout: str, dim: int, num_prefix_tokens: int = 1) -> nn.Module:
    if readout == "ignore":
        return ReadIgnore(num_prefix_tokens)
    if readout == "add":
        return ReadAdd(num_prefix_tokens)
    if readout == "project":
        return ReadProject(dim, num_prefix_tokens)
    raise ValueError(f"unknown readout {readout!r}; valid readouts: {', '.join(READOUTS)}")


# --------------------------------------------------------------------------------------- Reassemble


def create_resample(channels: int, factor: float) -> nn.Module:
    """×4 / ×2: transposed conv with kernel = stride (as coded; the paper says 3x3); ×1: none; ×½: 3x3/s2."""
    if factor > 1:
        k = int(factor)
        return nn.ConvTranspose2d(channels, channels, kernel_size=k, stride=k)
    if factor == 1:
        return nn.Identity()
    return nn.Conv2d(channels, channels, kernel_size=3, stride=round(1 / factor), padding=1)


class ReassembleStage(nn.Module):
    """Tokens (B, P+N, D) → Read → image (B, D, h, w) → 1x1 conv to ``out_channels`` → resample."""

    def __init__(
        self, dim: int, out_channels: int, factor: float, readout: str, num_prefix_tokens: int
    ) -> None:
        super().__init__()
        self.read = create_read(readout, dim, num_prefix_tokens)
        self.project = nn.Conv2d(dim, out_channels, kernel_size=1)
        self.resample = create_resample(out_channels, factor)

    def forward(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        x = rearrange(self.read(tokens), "b (h w) c -> b c h w", h=grid[0], w=grid[1])
        return self.resample(self.project(x))


# ------------------------------------------------------------------------------------------- Fusion


class ResidualConvUnit(nn.Module):
    """Pre-activation residual unit: x + [BN](conv(act([BN](conv(act(x))))))."""

    def __init__(self, features: int, use_bn: bool) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, kernel_size=3, padding=1, bias=not use_bn)
        self.conv2 = nn.Conv2d(features, features, kernel_size=3, padding=1, bias=not use_bn)
        if use_bn:
            self.bn1 = nn.BatchNorm2d(features)
            self.bn2 = nn.BatchNorm2d(features)
        else:
            self.bn1 = self.bn2 = nn.Identity()
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn1(self.conv1(self.act(x)))
        out = self.bn2(self.conv2(self.act(out)))
        return out + x


class FeatureFusionBlock(nn.Module):
    """out = RCU2(x + RCU1(skip)), bilinear ×2 (align_corners=True), 1x1 conv.

    ``residual_unit1`` of the deepest block is never called (it has no skip input) but the official
    checkpoints carry it.
    """

    def __init__(self, features: int, use_bn: bool) -> None:
        super().__init__()
        self.residual_unit1 = ResidualConvUnit(features, use_bn)
        self.residual_unit2 = ResidualConvUnit(features, use_bn)
        self.out_conv = nn.Conv2d(features, features, kernel_size=1)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        if skip is not None:
            x = x + self.residual_unit1(skip)
        x = self.residual_unit2(x)
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        return self.out_conv(x)


# -------------------------------------------------------------------------------------------- Heads


class Interpolate(nn.Module):
    def __init__(self, scale_factor: float, mode: str = "bilinear", align_corners: bool = True) -> None:
        super().__init__()
        self.scale_factor, self.mode, self.align_corners = scale_factor, mode, align_corners

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.scale_factor == 1:
            return x
        return F.interpolate(
            x, scale_factor=self.scale_factor, mode=self.mode, align_corners=self.align_corners
        )

    def extra_repr(self) -> str:
        return f"scale_factor={self.scale_factor}, mode={self.mode}, align_corners={self.align_corners}"


def depth_head(features: int, upsample: float, head_features: int = 32) -> nn.Sequential:
    """Indices as the official ``scratch.output_conv``: conv, ×2, conv, ReLU, conv, ReLU (non-negative)."""
    return nn.Sequential(
        nn.Conv2d(features, features // 2, kernel_size=3, padding=1),
        Interpolate(upsample),
        nn.Conv2d(features // 2, head_features, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.Conv2d(head_features, 1, kernel_size=1),
        nn.ReLU(),
        nn.Identity(),
    )


# Position of the 1x1 classifier conv in both segmentation heads: the official ``scratch.output_conv.4`` and
# ``auxlayer.4``, so checkpoints load by index.
CLASSIFIER_INDEX = 4


def classifier_conv(features: int, num_classes: int) -> nn.Module:
    """The per-pixel classifier; with ``num_classes=0`` none (timm's convention): the head gives features."""
    return nn.Conv2d(features, num_classes, kernel_size=1) if num_classes > 0 else nn.Identity()


def segmentation_head(features: int, num_classes: int, upsample: float | None) -> nn.Sequential:
    """Conv-BN-ReLU-Dropout(0.1)-Conv; the main head ends with ×2, the auxiliary head does not."""
    layers: list[nn.Module] = [
        nn.Conv2d(features, features, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(features),
        nn.ReLU(),
        nn.Dropout(0.1),
        classifier_conv(features, num_classes),
    ]
    if upsample is not None:
        layers.append(Interpolate(upsample))
    return nn.Sequential(*layers)


# --------------------------------------------------------------------------------------------- Model


def resize_pos_embed(pos_embed: torch.Tensor, grid: tuple[int, int], num_prefix_tokens: int) -> torch.Tensor:
    """Official ``_resize_pos_embed``: bilinear (align_corners=False, no antialias) on the square grid."""
    prefix, posemb = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    old = int(posemb.shape[1] ** 0.5)
    posemb = rearrange(posemb, "b (h w) c -> b c h w", h=old, w=old)
    posemb = F.interpolate(posemb, size=grid, mode="bilinear", align_corners=False)
    return torch.cat([prefix, rearrange(posemb, "b c h w -> b (h w) c")], dim=1)


def nearest_multiples(value: int, multiple: int) -> list[int]:
    below = max(multiple, value // multiple * multiple)
    return sorted({below, below + multiple} if value % multiple else {value})


class DPT(nn.Module):
    """Dense Prediction Transformer over a timm ViT (or ViT-hybrid) backbone.

    Args:
        backbone: timm model name of the ViT (any ``VisionTransformer``-like model: ``patch_embed.proj``,
            ``cls_token``, ``pos_embed``, ``blocks``; hybrid models expose ``patch_embed.backbone``).
        block_taps: indices of the ViT blocks whose output tokens feed the Reassemble stages.
        conv_taps: Hybrid only: ResNet stage indices whose feature maps feed the first stages directly.
        reassemble_channels: the four Reassemble widths (official ``features`` list of ``_make_encoder``).
        features: fusion width D̂ (256 in every official model).
        task: ``"depth"`` or ``"segmentation"``.
        readout: ``"ignore"``, ``"add"`` or ``"project"``.
        num_classes: segmentation classes (ADE20K: 150; 0: no classifier, the heads give the fusion
            features); a depth model ignores it. :meth:`reset_classifier` changes it after construction.
        backbone_kwargs: passed to ``timm.create_model`` for the backbone (img_size, patch_size, ...).
    """

    def __init__(
        self,
        backbone: str,
        block_taps: Sequence[int],
        reassemble_channels: Sequence[int],
        conv_taps: Sequence[int] = (),
        features: int = 256,
        task: str = "depth",
        readout: str = "project",
        num_classes: int = 150,
        backbone_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; valid tasks: {', '.join(TASKS)}")
        if readout not in READOUTS:
            raise ValueError(f"unknown readout {readout!r}; valid readouts: {', '.join(READOUTS)}")
        if len(conv_taps) + len(block_taps) != 4 or len(reassemble_channels) != 4:
            raise ValueError("DPT needs four taps (conv_taps + block_taps) and four reassemble_channels")
        self.task, self.readout = task, readout
        self.num_features = features  # the width of the fusion maps the heads read
        self.num_classes = num_classes if task == "segmentation" else 0
        self.block_taps, self.conv_taps = tuple(block_taps), tuple(conv_taps)
        self.backbone = timm.create_model(backbone, pretrained=False, **dict(backbone_kwargs or {}))
        skip_pointwise_same_padding(self.backbone)
        if self.conv_taps:
            self._check_conv_tap_channels(backbone, reassemble_channels)
        self.patch_stride = int(self.backbone.patch_embed.feat_ratio())
        dim, prefix = self.backbone.embed_dim, self.backbone.num_prefix_tokens

        # Conv taps go straight to the 3x3 convs; token taps get ×4, ×2, ×1, ×½ by their stage position.
        factors = (4, 2, 1, 0.5)
        self.reassemble = nn.ModuleList(
            nn.Identity() if stage < len(self.conv_taps)
            else ReassembleStage(dim, reassemble_channels[stage], factors[stage], readout, prefix)
            for stage in range(4)
        )
        self.feature_convs = nn.ModuleList(
            nn.Conv2d(c, features, kernel_size=3, padding=1, bias=False) for c in reassemble_channels
        )
        use_bn = task == "segmentation"
        self.fusion = nn.ModuleList(FeatureFusionBlock(features, use_bn) for _ in range(4))
        # Fusion ends at stride patch/8 (½ for patch 16); the head's upsample brings it to input size.
        head_upsample = self.patch_stride / 8
        if task == "depth":
            self.head = depth_head(features, head_upsample)
        else:
            self.head = segmentation_head(features, num_classes, head_upsample)
            self.aux_head = segmentation_head(features, num_classes, None)
        self.freeze_unused()

    def _check_conv_tap_channels(self, backbone: str, reassemble_channels: Sequence[int]) -> None:
        """Conv-tap stages feed ResNet maps straight to the 3x3 convs, so their widths are the ResNet's."""
        resnet = getattr(self.backbone.patch_embed, "backbone", None)
        if resnet is None:
            raise ValueError(f"conv_taps need a hybrid backbone (patch_embed.backbone); {backbone} has none")
        widths = {info["module"]: info["num_chs"] for info in resnet.feature_info}
        expected = [widths[f"stages.{i}"] for i in self.conv_taps]
        if list(reassemble_channels[: len(expected)]) != expected:
            raise ValueError(
                f"reassemble_channels {tuple(reassemble_channels)} start with the widths of ResNet stages "
                f"{self.conv_taps} of {backbone}, {tuple(expected)}"
            )

    # -- parameters the forward never uses --------------------------------------------------------
    def unused_parameter_names(self) -> list[str]:
        """Parameters kept only so official checkpoints load: ImageNet head, final norm, refinenet4's RCU1,
        blocks after the last tap (and the conv backbone's head, if any)."""
        unused = ["backbone.norm.", "backbone.fc_norm.", "backbone.head.", "fusion.3.residual_unit1."]
        after_last_tap = range(max(self.block_taps) + 1, len(self.backbone.blocks))
        unused += [f"backbone.blocks.{i}." for i in after_last_tap]
        return [n for n, _ in self.named_parameters() if n.startswith(tuple(unused))]

    def freeze_unused(self) -> None:
        """Set ``requires_grad=False`` on :meth:`unused_parameter_names` so DDP sees no unused parameters."""
        unused = set(self.unused_parameter_names())
        for name, param in self.named_parameters():
            if name in unused:
                param.requires_grad_(False)

    def load_backbone(self, path_or_state_dict: str | os.PathLike | Mapping[str, Any]) -> None:
        """Load a classification checkpoint (a file or a state_dict) into the backbone: strictly but for its
        classifier, which DPT does not use (the backbone keeps its own, frozen), through
        :func:`lvit.load_pretrained`. So the backbone family's checkpoint filter converts it, as timm's does
        for pretrained weights: the position embedding is resampled to the backbone's grid and, for timm's
        ViTs, a patch-embedding kernel of another patch size is resampled too; an RGB stem is adapted to a
        backbone built with another ``in_chans``. Parameters DPT does not use are frozen again afterwards."""
        load_pretrained(self.backbone, path_or_state_dict, new_head=True)
        self.freeze_unused()

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """The backbone's no-decay parameters (position embedding, class token, ...) under their names in
        this model, for timm's optimizer factory. lvit's DPT training builds its own groups (engine.tasks)."""
        return {f"backbone.{name}" for name in self.backbone.no_weight_decay()}

    # -- classifier (timm's API) ----------------------------------------------------------------------
    def get_classifier(self) -> nn.Module:
        """The main segmentation head's final 1x1 conv; ``nn.Identity`` where there is none (a depth model,
        or a segmentation model reset to 0 classes)."""
        if self.task == "depth":
            return nn.Identity()
        return self.head[CLASSIFIER_INDEX]

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the classifier conv of the main and the auxiliary segmentation head by a freshly
        initialised one for ``num_classes`` (0: none, the heads then give ``num_features`` maps); every other
        weight stays. A fine-tuning start: then ``lvit.load_pretrained(model, file, new_head=True)``.

        A depth model has no classifier: ``num_classes=0`` changes nothing, more classes raise ValueError.
        ``global_pool`` is accepted for timm's signature and has no effect (a dense model pools nothing).
        """
        if self.task == "depth":
            if num_classes > 0:
                raise ValueError(f"a depth DPT has no classifier to reset to {num_classes} classes; "
                                 "build it with task='segmentation'")
            return
        self.num_classes = num_classes
        for head in (self.head, self.aux_head):
            reference = head[0].weight  # the new conv lives where the head does
            conv = classifier_conv(self.num_features, num_classes).to(reference.device, reference.dtype)
            head[CLASSIFIER_INDEX] = conv.train(head.training)

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each backbone block (and, in the Hybrid, each ResNet stage) in the backward pass
        instead of storing its activations; the decoder is not checkpointed. The batch norms of a LocalViT
        backbone's feed-forwards, recomputed in train mode, update their running statistics twice per step."""
        self.backbone.set_grad_checkpointing(enable)

    # -- forward ------------------------------------------------------------------------------------
    def check_input_size(self, height: int, width: int) -> None:
        multiple = 2 * self.patch_stride  # the ×½ stage and the ×2 fusion need an even token grid
        if height % multiple or width % multiple:
            hs, ws = nearest_multiples(height, multiple), nearest_multiples(width, multiple)
            nearest = ", ".join(f"{h}x{w}" for h in hs for w in ws)
            raise ValueError(
                f"DPT input height and width must be multiples of {multiple}; got {height}x{width}. "
                f"Nearest valid sizes (HxW): {nearest}"
            )

    def forward_taps(self, x: torch.Tensor) -> tuple[list[torch.Tensor], tuple[int, int]]:
        """Backbone forward as the official ``forward_flex``: ResNet feature maps for ``conv_taps``, then
        tokens (B, prefix+N, D) of ``block_taps`` (before the final norm), and the token grid (h, w)."""
        vit = self.backbone
        taps: list[torch.Tensor] = []
        if self.conv_taps:
            resnet = vit.patch_embed.backbone
            x = resnet.stem(x)
            for index, stage in enumerate(resnet.stages):
                x = stage(x)
                if index in self.conv_taps:
                    taps.append(x)
            x = resnet.norm(x)
        x = vit.patch_embed.proj(x)
        grid = (x.shape[-2], x.shape[-1])
        x = rearrange(x, "b c h w -> b (h w) c")
        prefix = [vit.cls_token.expand(x.shape[0], -1, -1)]
        if getattr(vit, "dist_token", None) is not None:
            prefix.append(vit.dist_token.expand(x.shape[0], -1, -1))
        x = torch.cat([*prefix, x], dim=1)
        x = vit.pos_drop(x + resize_pos_embed(vit.pos_embed, grid, vit.num_prefix_tokens))
        for block in vit.blocks:  # LocalViT's locality blocks rebuild the image from the tokens
            if hasattr(block, "grid_size"):
                block.grid_size = grid
        for index, block in enumerate(vit.blocks[: max(self.block_taps) + 1]):
            # The blocks are run here, not by the backbone's forward, so its checkpointing flag is read here.
            x = checkpoint(block, x) if vit.grad_checkpointing else block(x)
            if index in self.block_taps:
                taps.append(x)
        return taps, grid

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The four fusion outputs, deepest first (paths 4, 3, 2, 1 of the official code)."""
        self.check_input_size(x.shape[-2], x.shape[-1])
        taps, grid = self.forward_taps(x)
        layers = [
            conv(tap if isinstance(stage, nn.Identity) else stage(tap, grid))
            for stage, conv, tap in zip(self.reassemble, self.feature_convs, taps, strict=True)
        ]
        paths = [self.fusion[3](layers[3])]
        for stage in (2, 1, 0):
            paths.append(self.fusion[stage](paths[-1], layers[stage]))
        return paths

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Depth: (B, H, W) non-negative inverse depth. Segmentation: (B, C, H, W) logits, and in training
        mode also the auxiliary logits of the penultimate fusion output (``path_2``) upsampled to (H, W)."""
        paths = self.forward_features(x)
        out = self.head(paths[-1])
        if self.task == "depth":
            return out.squeeze(dim=1)
        if self.training:
            aux = self.aux_head(paths[-2])
            aux = F.interpolate(aux, size=x.shape[-2:], mode="bilinear", align_corners=True)
            return out, aux
        return out


def skip_pointwise_same_padding(model: nn.Module) -> int:
    """Turn off the dynamic "SAME" padding of every 1x1 convolution in ``model`` that has it (timm's
    ``StdConv2dSame``: the Hybrid's strided shortcut convs); returns how many were turned off.

    SAME padding is ``max((ceil(i / s) - 1) * s + k - i, 0)``, which for ``k = 1`` is 0 at every input size,
    but timm's ``pad_same`` passes the input through ``F.pad`` anyway, which copies it. The output is the
    same bit for bit.
    """
    convs = [m for m in model.modules()
             if isinstance(m, nn.Conv2d) and getattr(m, "same_pad", False) and m.kernel_size == (1, 1)]
    for conv in convs:
        conv.same_pad = False
    return len(convs)


def set_low_precision_norms(model: nn.Module, enabled: bool = True) -> int:
    """Run the timm GroupNorm and LayerNorm layers of ``model`` in autocast's dtype (or, ``enabled=False``,
    in fp32 again); returns how many layers were switched. Outside autocast nothing changes.

    CUDA's autocast runs ``group_norm`` and ``layer_norm`` in fp32: a bf16 input is copied to fp32,
    normalised, and handed on in fp32, so the ReLU after it and the cast back before the next convolution
    move fp32 too. In DPT-Hybrid's BiT ResNet (52 GroupNorms, each on a whole feature map) that is more than
    a third of an inference forward's bytes at batch 32 (``benchmarks/step_traffic.py --dpt --bf16``; the
    figures are in ``benchmarks/RESULTS.md``). timm's fast-norm path normalises in the autocast
    dtype instead; PyTorch's kernels still accumulate the statistics in fp32, but the output, the affine
    weights and, in the ResNet, the residual stream are rounded to bf16. An inference setting: training keeps
    PyTorch's default. The switch is timm's own per-layer flag, which timm otherwise sets only at
    construction (``timm.layers.set_fast_norm``).
    """
    norms = (nn.GroupNorm, nn.LayerNorm)
    layers = [m for m in model.modules() if isinstance(m, norms) and hasattr(m, "_fast_norm")]
    for layer in layers:
        layer._fast_norm = enabled
    return len(layers)


# ----------------------------------------------------------------------------- checkpoint conversion

Rule = tuple[str, Callable[[re.Match[str]], str]]


def _rule(pattern: str, template: str, index_offset: int = 0, reverse_index: bool = False) -> Rule:
    """A rename rule: ``template`` gets the regex groups; group 1 (a stage index) is shifted by
    ``index_offset`` (official 1-based → 0-based) or reversed (HF fusion layer j is refinenet 4 - j)."""

    def replace(match: re.Match[str]) -> str:
        groups = list(match.groups())
        if groups and (index_offset or reverse_index):
            index = int(groups[0])
            groups[0] = str(3 - index if reverse_index else index + index_offset)
        return template.format(*groups)

    return pattern, replace


_OFFICIAL_RULES: tuple[Rule, ...] = (
    _rule(r"^pretrained\.model\.", "backbone."),
    _rule(r"^pretrained\.act_postprocess(\d)\.0\.project\.", "reassemble.{0}.read.project.", -1),
    _rule(r"^pretrained\.act_postprocess(\d)\.3\.", "reassemble.{0}.project.", -1),
    _rule(r"^pretrained\.act_postprocess(\d)\.4\.", "reassemble.{0}.resample.", -1),
    _rule(r"^scratch\.layer(\d)_rn\.", "feature_convs.{0}.", -1),
    _rule(r"^scratch\.refinenet(\d)\.resConfUnit(\d)\.", "fusion.{0}.residual_unit{1}.", -1),
    _rule(r"^scratch\.refinenet(\d)\.out_conv\.", "fusion.{0}.out_conv.", -1),
    _rule(r"^scratch\.output_conv\.", "head."),
    _rule(r"^auxlayer\.", "aux_head."),
)

# HuggingFace ``DPTForDepthEstimation`` / ``DPTForSemanticSegmentation`` (ViT backbones; dpt.md §7).
_HF_RULES: tuple[Rule, ...] = (
    _rule(r"^dpt\.embeddings\.cls_token", "backbone.cls_token"),
    _rule(r"^dpt\.embeddings\.position_embeddings", "backbone.pos_embed"),
    _rule(r"^dpt\.embeddings\.patch_embeddings\.projection\.", "backbone.patch_embed.proj."),
    _rule(r"^dpt\.encoder\.layer\.(\d+)\.layernorm_before\.", "backbone.blocks.{0}.norm1."),
    _rule(r"^dpt\.encoder\.layer\.(\d+)\.layernorm_after\.", "backbone.blocks.{0}.norm2."),
    _rule(r"^dpt\.encoder\.layer\.(\d+)\.attention\.attention\.(query|key|value)\.",
          "backbone.blocks.{0}.attn.qkv.{1}."),
    _rule(r"^dpt\.encoder\.layer\.(\d+)\.attention\.output\.dense\.", "backbone.blocks.{0}.attn.proj."),
    _rule(r"^dpt\.encoder\.layer\.(\d+)\.intermediate\.dense\.", "backbone.blocks.{0}.mlp.fc1."),
    _rule(r"^dpt\.encoder\.layer\.(\d+)\.output\.dense\.", "backbone.blocks.{0}.mlp.fc2."),
    _rule(r"^dpt\.layernorm\.", "backbone.norm."),
    _rule(r"^neck\.reassemble_stage\.readout_projects\.(\d)\.", "reassemble.{0}.read.project."),
    _rule(r"^neck\.reassemble_stage\.layers\.(\d)\.projection\.", "reassemble.{0}.project."),
    _rule(r"^neck\.reassemble_stage\.layers\.(\d)\.resize\.", "reassemble.{0}.resample."),
    _rule(r"^neck\.convs\.(\d)\.", "feature_convs.{0}."),
    _rule(r"^neck\.fusion_stage\.layers\.(\d)\.projection\.", "fusion.{0}.out_conv.", reverse_index=True),
    _rule(r"^neck\.fusion_stage\.layers\.(\d)\.residual_layer(\d)\.convolution(\d)\.",
          "fusion.{0}.residual_unit{1}.conv{2}.", reverse_index=True),
    _rule(r"^neck\.fusion_stage\.layers\.(\d)\.residual_layer(\d)\.batch_norm(\d)\.",
          "fusion.{0}.residual_unit{1}.bn{2}.", reverse_index=True),
    _rule(r"^head\.head\.", "head."),
    _rule(r"^auxiliary_head\.head\.", "aux_head."),
)


def _rename(key: str, rules: Sequence[Rule]) -> str:
    for pattern, replace in rules:
        match = re.match(pattern, key)
        if match:
            return replace(match) + key[match.end() :]
    return key


def _merge_hf_qkv(state_dict: dict[str, Any]) -> dict[str, Any]:
    """HF splits timm's fused qkv into query/key/value (rows [0:D], [D:2D], [2D:3D]): fuse them back."""
    merged = {k: v for k, v in state_dict.items() if ".attn.qkv." not in k}
    parts = {k for k in state_dict if ".attn.qkv." in k}
    for prefix in sorted({k.split(".attn.qkv.")[0] for k in parts}):
        for kind in ("weight", "bias"):
            names = [f"{prefix}.attn.qkv.{p}.{kind}" for p in ("query", "key", "value")]
            missing = [n for n in names if n not in state_dict]
            if missing:
                raise ValueError(f"HF checkpoint has an incomplete query/key/value set: missing {missing}")
            merged[f"{prefix}.attn.qkv.{kind}"] = torch.cat([state_dict[n] for n in names])
    return merged


def checkpoint_filter_fn(state_dict: Mapping[str, torch.Tensor], model: DPT | None = None) -> dict[str, Any]:
    """Foreign DPT state_dicts → this module's names.

    - Official ``.pt`` files (``pretrained.model.*``, ``pretrained.act_postprocess*``, ``scratch.*``,
      ``auxlayer.*``): renamed one to one.
    - HuggingFace ``DPTForDepthEstimation`` / ``DPTForSemanticSegmentation`` (ViT backbones): renamed,
      query/key/value fused. HF drops the backbone's unused ImageNet head, so it is taken from ``model``
      (it never enters the forward). HF's DPT-Hybrid (BiT backbone) layout is refused.
    - Keys already in lvit layout, and unknown keys, pass unchanged, so a strict load reports strays.
    """
    if "model" in state_dict and isinstance(state_dict["model"], Mapping):  # {"model": sd} wrappers
        state_dict = state_dict["model"]
    if not any(k.startswith(("dpt.", "neck.")) for k in state_dict):
        return {_rename(k, _OFFICIAL_RULES): v for k, v in state_dict.items()}
    if any(k.startswith("dpt.embeddings.backbone.") for k in state_dict):
        raise ValueError("HuggingFace DPT-Hybrid (BiT backbone) state_dicts are not supported; "
                         "load the official dpt_hybrid .pt release file instead")
    converted = _merge_hf_qkv({_rename(k, _HF_RULES): v for k, v in state_dict.items()})
    if model is not None:
        for key, value in model.state_dict().items():
            if key.startswith("backbone.head."):
                converted.setdefault(key, value)
    return converted


# ----------------------------------------------------------------------------------------- variants

_VARIANTS: dict[str, dict[str, Any]] = {
    # official models (dpt.md §2.1)
    "dpt_base": dict(backbone="vit_base_patch16_384", block_taps=(2, 5, 8, 11),
                     reassemble_channels=(96, 192, 384, 768)),
    "dpt_large": dict(backbone="vit_large_patch16_384", block_taps=(5, 11, 17, 23),
                      reassemble_channels=(256, 512, 1024, 1024)),
    "dpt_hybrid": dict(backbone="vit_base_r50_s16_384", conv_taps=(0, 1), block_taps=(8, 11),
                       reassemble_channels=(256, 512, 768, 768)),
    # proxy variants: the same taps relative to depth, widths scaled with the backbone
    "dpt_tiny": dict(backbone="vit_tiny_patch16_224", block_taps=(2, 5, 8, 11),
                     reassemble_channels=(24, 48, 96, 192), features=64),
    "dpt_small": dict(backbone="vit_small_patch16_224", block_taps=(2, 5, 8, 11),
                      reassemble_channels=(48, 96, 192, 384), features=128),
    "dpt_localvit_tiny": dict(backbone="localvit_tiny", block_taps=(2, 5, 8, 11),
                              reassemble_channels=(24, 48, 96, 192), features=64),
}


def dpt_model_names() -> list[str]:
    """The registered DPT variants: the official models and the proxy stand-ins."""
    return sorted(_VARIANTS)


# Preprocessing of the official inference scripts (dpt.md §2.8): mean = std = 0.5, bicubic, 384 px for depth
# and 480 px for segmentation, no centre crop. Tagged by task: the task, not a weight set, decides them.
_NET_SIZE = {"depth": 384, "segmentation": 480}


# The official segmentation weights are ADE20K's 150 classes; a depth model has no classifier.
_CLASSIFIER = {"depth": dict(num_classes=0, classifier=None),
               "segmentation": dict(num_classes=150, classifier=tuple(
                   f"{head}.{CLASSIFIER_INDEX}" for head in ("head", "aux_head")))}


def _cfg(task: str) -> dict[str, Any]:
    size = _NET_SIZE[task]
    return {
        "url": "", "input_size": (3, size, size), "pool_size": None, "crop_pct": 1.0,
        "interpolation": "bicubic", "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), **_CLASSIFIER[task],
        # Other sizes run too: the position embeddings are resampled in every forward.
        "fixed_input_size": False,
        "paper_ids": "arXiv:2103.13413", "origin_url": "https://github.com/isl-org/DPT", "license": "mit",
    }


default_cfgs = generate_default_cfgs({
    f"{variant}.{task}": _cfg(task) for variant in _VARIANTS for task in TASKS
})


# timm's model keywords that configure DPT's backbone: timm.create_model("dpt_large", drop_path_rate=0.1)
_BACKBONE_KEYWORDS = ("in_chans", "drop_path_rate", "img_size")


def _create_dpt(
    variant: str,
    pretrained: bool = False,
    pretrained_cfg: str | dict[str, Any] | None = None,
    pretrained_cfg_overlay: dict[str, Any] | None = None,
    **kwargs: Any,
) -> DPT:
    if pretrained:
        raise ValueError(f"{variant}: nothing is downloaded; build, then lvit.load_pretrained(model, file)")
    kwargs.pop("cache_dir", None)
    if isinstance(pretrained_cfg, str):  # a tag, as in timm.create_model("dpt_large.segmentation")
        task = kwargs.setdefault("task", pretrained_cfg)
        if task != pretrained_cfg:  # refused before the backbone (up to ViT-L) is built for nothing
            raise ValueError(f"{variant}.{pretrained_cfg} is the {pretrained_cfg} preprocessing, "
                             f"but task={task!r}")
    config = {**_VARIANTS[variant], **kwargs}
    for_backbone = {k: config.pop(k) for k in _BACKBONE_KEYWORDS if k in config}
    if for_backbone:
        config["backbone_kwargs"] = {**config.get("backbone_kwargs", {}), **for_backbone}
    model = DPT(**config)
    # timm's data config (resolve_data_config, create_transform) reads these; build_model_with_cfg is not
    # used (no features_only, no weights to fetch), so they are set as it sets them.
    model.pretrained_cfg = resolve_pretrained_cfg(
        variant, pretrained_cfg or model.task, pretrained_cfg_overlay).to_dict()
    # The input conv is the backbone's stem, which the backbone keyword can change, so it is read off the
    # backbone built; timm's (and load_pretrained's) in_chans adaptation looks for it here.
    model.pretrained_cfg["first_conv"] = model.pretrained_cfg.get("first_conv") or _backbone_first_conv(model)
    model.default_cfg = model.pretrained_cfg
    return model


def _backbone_first_conv(model: DPT) -> str | tuple[str, ...] | None:
    """The backbone's ``first_conv`` (its timm ``pretrained_cfg``) under its name in ``model``."""
    names = tuple(f"backbone.{name}" for name in pretrained_cfg_modules(model.backbone, "first_conv"))
    return names[0] if len(names) == 1 else names or None


@register_model
def dpt_base(pretrained: bool = False, **kwargs: Any) -> DPT:
    """DPT-Base: ViT-B/16-384, taps at blocks 3, 6, 9, 12 (1-based). No official weights were released."""
    return _create_dpt("dpt_base", pretrained, **kwargs)


@register_model
def dpt_large(pretrained: bool = False, **kwargs: Any) -> DPT:
    """DPT-Large: ViT-L/16-384, taps at blocks 5, 12, 18, 24 (1-based)."""
    return _create_dpt("dpt_large", pretrained, **kwargs)


@register_model
def dpt_hybrid(pretrained: bool = False, **kwargs: Any) -> DPT:
    """DPT-Hybrid: ResNet-50 stages 1-2 + ViT-B/16 blocks 9, 12 (1-based), project readout."""
    return _create_dpt("dpt_hybrid", pretrained, **kwargs)


@register_model
def dpt_tiny(pretrained: bool = False, **kwargs: Any) -> DPT:
    """Proxy: ViT-Ti/16 backbone, fusion width 64."""
    return _create_dpt("dpt_tiny", pretrained, **kwargs)


@register_model
def dpt_small(pretrained: bool = False, **kwargs: Any) -> DPT:
    """Proxy: ViT-S/16 backbone, fusion width 128."""
    return _create_dpt("dpt_small", pretrained, **kwargs)


@register_model
def dpt_localvit_tiny(pretrained: bool = False, **kwargs: Any) -> DPT:
    """Proxy crossing both papers: DPT on LocalViT-T (locality feed-forward in every block), width 64."""
    return _create_dpt("dpt_localvit_tiny", pretrained, **kwargs)
