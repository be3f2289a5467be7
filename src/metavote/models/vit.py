"""Vision Transformers in timm's ``VisionTransformer`` key layout.

Keys: ``patch_embed.proj``, ``cls_token``, ``pos_embed``, ``blocks.N.norm1``, ``blocks.N.attn.qkv``,
``blocks.N.attn.proj``, ``blocks.N.norm2``, ``blocks.N.mlp.fc1``, ``blocks.N.mlp.fc2``, ``norm``,
``head``; pre-norm blocks, exact GELU, LayerNorm eps 1e-6, class-token pooling, no dropout, no layer
scale. A timm ``vit_small_patch16_224`` / ``deit_small_patch16_224`` state_dict loads as it is, and
so does the small CIFAR ViT of ``../shared/pretrained``.

Prunable units (:meth:`VisionTransformer.unit_groups`): the attention heads of each block
(``blocks.N.attn``: head_dim rows in each of q, k, v of ``qkv`` and head_dim input columns of
``proj``) and its MLP nodes (``blocks.N.mlp``: a row of ``fc1``, a column of ``fc2``). The
embedding width is not pruned. An attention with no heads left, or an MLP with no nodes, adds
nothing to its block: the residual path carries the tokens through.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .base import CIFAR100_MEAN, CIFAR100_STD, IMAGENET_MEAN, IMAGENET_STD, Backbone, register_model
from .units import IN, Slot, UnitGroup


class PatchEmbed(nn.Module):
    def __init__(self, img_size: int, patch_size: int, embed_dim: int) -> None:
        super().__init__()
        if img_size % patch_size:
            raise ConfigError(f"patch size {patch_size} does not divide image size {img_size}")
        self.num_patches = (img_size // patch_size) ** 2
        self.proj = nn.Conv2d(3, embed_dim, patch_size, patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention; the head count follows ``qkv``'s width, so pruning heads is slicing it."""

    def __init__(self, dim: int, num_heads: int, head_dim: int) -> None:
        super().__init__()
        self.head_dim = head_dim
        self.qkv = nn.Linear(dim, 3 * num_heads * head_dim)
        self.proj = nn.Linear(num_heads * head_dim, dim)

    @property
    def num_heads(self) -> int:
        return self.qkv.out_features // (3 * self.head_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        heads = self.num_heads
        if heads == 0:
            return torch.zeros_like(x)
        q, k, v = self.qkv(x).reshape(b, n, 3, heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        x = F.scaled_dot_product_attention(q, k, v)  # scale head_dim ** -0.5
        return self.proj(x.transpose(1, 2).reshape(b, n, heads * self.head_dim))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fc1.out_features == 0:
            return torch.zeros_like(x)
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, head_dim: int, hidden: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, head_dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(Backbone):
    """A ViT with class-token pooling whose parameter names are timm's.

    ``embed_dim`` must be a multiple of ``num_heads`` (head_dim = embed_dim / num_heads);
    the MLP has ``round(mlp_ratio · embed_dim)`` hidden nodes.
    """

    family = "vit"
    classifier_name = "head"

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        embed_dim: int = 384,
        depth: int = 12,
        num_heads: int = 6,
        mlp_ratio: float = 4.0,
        num_classes: int = 1000,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        if num_heads < 1 or embed_dim % num_heads:
            raise ConfigError(f"num_heads {num_heads} does not divide the embedding width {embed_dim}")
        if depth < 1 or mlp_ratio <= 0:
            raise ConfigError(f"depth must be >= 1 and mlp_ratio > 0, got {depth} and {mlp_ratio}")
        super().__init__(mean, std, (3, img_size, img_size))
        self.img_size, self.patch_size, self.embed_dim, self.depth = img_size, patch_size, embed_dim, depth
        self.heads_per_block, self.mlp_ratio = num_heads, mlp_ratio
        self.patch_embed = PatchEmbed(img_size, patch_size, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.randn(1, self.patch_embed.num_patches + 1, embed_dim) * 0.02)
        hidden = round(mlp_ratio * embed_dim)
        self.blocks = nn.Sequential(*[Block(embed_dim, num_heads, embed_dim // num_heads, hidden) for _ in range(depth)])
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes else nn.Identity()
        nn.init.trunc_normal_(self.cls_token, std=1e-6)

    @property
    def num_features(self) -> int:
        return self.embed_dim

    @property
    def config(self) -> dict:
        return {"arch": "vit", "img_size": self.img_size, "patch_size": self.patch_size, "embed_dim": self.embed_dim,
                "depth": self.depth, "num_heads": self.heads_per_block, "mlp_ratio": self.mlp_ratio,
                "mean": self.mean.flatten().tolist(), "std": self.std.flatten().tolist()}

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(self.normalize(x))
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        return self.norm(self.blocks(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x[:, 0]
        return x if pre_logits else self.head(x)

    def unit_groups(self) -> list[UnitGroup]:
        """Per block, in depth order: its heads (``blocks.N.attn``) and its MLP nodes (``blocks.N.mlp``)."""
        groups = []
        for i, block in enumerate(self.blocks):
            p, hd = f"blocks.{i}", block.attn.head_dim
            groups.append(UnitGroup(f"{p}.attn", block.attn.num_heads,
                                    (Slot(f"{p}.attn.qkv", width=hd, copies=3), Slot(f"{p}.attn.proj", IN, width=hd)),
                                    can_be_empty=True, kind="head"))
            groups.append(UnitGroup(f"{p}.mlp", block.mlp.fc1.out_features,
                                    (Slot(f"{p}.mlp.fc1"), Slot(f"{p}.mlp.fc2", IN)), can_be_empty=True, kind="node"))
        return groups


@register_model("vit")
def vision_transformer(img_size: int = 224, patch_size: int = 16, embed_dim: int = 384, depth: int = 12, num_heads: int = 6,
                       mlp_ratio: float = 4.0, num_classes: int = 1000, mean: Sequence[float] = IMAGENET_MEAN,
                       std: Sequence[float] = IMAGENET_STD) -> VisionTransformer:
    """A ViT of any size (defaults: ViT-S/16 at 224, timm's ``vit_small_patch16_224``)."""
    return VisionTransformer(img_size, patch_size, embed_dim, depth, num_heads, mlp_ratio, num_classes, mean, std)


@register_model("vit_small_patch16_224")
def vit_small_patch16_224(num_classes: int = 1000, **kw) -> VisionTransformer:
    """ViT-S/16 (DeiT-S): 384 wide, 12 blocks of 6 heads, MLP 1536, 224x224 input, ImageNet normalisation."""
    return vision_transformer(**({"num_classes": num_classes} | kw))


@register_model("cifar_vit")
def cifar_vit(num_classes: int = 100, **kw) -> VisionTransformer:
    """The small CIFAR ViT of ``../shared/pretrained``: 4x4 patches of 32x32 images, 192 wide,
    6 blocks of 6 heads of 32, MLP 384, CIFAR-100 normalisation."""
    settings = {"img_size": 32, "patch_size": 4, "embed_dim": 192, "depth": 6, "num_heads": 6, "mlp_ratio": 2.0,
                "mean": CIFAR100_MEAN, "std": CIFAR100_STD, "num_classes": num_classes}
    return vision_transformer(**(settings | kw))


def vit_config_from_state(state: dict[str, torch.Tensor], head_dim: int = 64) -> dict:
    """A ViT config read off a timm-layout state_dict's shapes. The head count is not in the shapes:
    it is ``embed_dim / head_dim`` (timm's ViTs use head_dim 64; pass the file's own otherwise)."""
    dim = state["cls_token"].shape[-1]
    patch = state["patch_embed.proj.weight"].shape[-1]
    patches = state["pos_embed"].shape[1] - 1
    side = round(patches**0.5)
    if side * side != patches:
        raise ConfigError(f"pos_embed holds {patches} patch positions, not a square grid")
    depth = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
    hidden = state["blocks.0.mlp.fc1.weight"].shape[0]
    return {"arch": "vit", "img_size": side * patch, "patch_size": patch, "embed_dim": dim, "depth": depth,
            "num_heads": max(1, dim // head_dim), "mlp_ratio": hidden / dim}
