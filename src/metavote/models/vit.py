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

    empty_ok = True  # with no head left it adds nothing: the residual path carries the tokens

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

    def forward_received(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The output, and the attention each token receives from the others (b, n): the sum over
        heads and queries of its attention probability, its own (the diagonal) left out (PoWER-BERT's
        significance score). Attention is computed explicitly here, since fused attention hides it."""
        b, n, _ = x.shape
        heads = self.num_heads
        if heads == 0:
            return torch.zeros_like(x), x.new_zeros(b, n)
        q, k, v = self.qkv(x).reshape(b, n, 3, heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        probs = ((q * self.head_dim**-0.5) @ k.transpose(-2, -1)).softmax(dim=-1)
        received = probs.sum(dim=(1, 2)) - probs.diagonal(dim1=-2, dim2=-1).sum(dim=1)
        out = self.proj((probs @ v).transpose(1, 2).reshape(b, n, heads * self.head_dim))
        return out, received


class Mlp(nn.Module):
    empty_ok = True

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fc1.out_features == 0:
            return torch.zeros_like(x)
        return self.fc2(self.act(self.fc1(x)))


def top_tokens(x: torch.Tensor, received: torch.Tensor, keep: int) -> torch.Tensor:
    """The class token and the ``keep - 1`` patch tokens that receive the most attention, in their
    original order (PoWER-BERT's hard extract, the class token always kept)."""
    top = received[:, 1:].topk(keep - 1, dim=1).indices.sort(dim=1).values + 1
    index = torch.cat([top.new_zeros(x.shape[0], 1), top], dim=1)
    return x.gather(1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


class Block(nn.Module):
    """A pre-norm transformer block. ``keep_tokens`` (None: all): after the attention sublayer, only
    the class token and the patch tokens that received the most attention go on (token pruning)."""

    def __init__(self, dim: int, num_heads: int, head_dim: int, hidden: int, keep_tokens: int | None = None) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, head_dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, hidden)
        self.keep_tokens = keep_tokens

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.keep_tokens is None or self.keep_tokens >= x.shape[1]:
            x = x + self.attn(self.norm1(x))
        else:
            out, received = self.attn.forward_received(self.norm1(x))
            x = top_tokens(x + out, received, self.keep_tokens)
        return x + self.mlp(self.norm2(x))


class VisionTransformer(Backbone):
    """A ViT with class-token pooling whose parameter names are timm's.

    ``embed_dim`` must be a multiple of ``num_heads`` (head_dim = embed_dim / num_heads);
    the MLP has ``round(mlp_ratio · embed_dim)`` hidden nodes. ``tokens_kept`` (None: all, every
    block): per block, the tokens (class token included) that go on after its attention sublayer.
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
        tokens_kept: Sequence[int] | None = None,
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
        if tokens_kept is not None:
            self.set_tokens_kept(tokens_kept)

    @property
    def num_tokens(self) -> int:
        """Tokens entering the first block: the patches and the class token."""
        return self.patch_embed.num_patches + 1

    @property
    def tokens_kept(self) -> list[int] | None:
        kept = [getattr(b, "keep_tokens", None) for b in self.blocks]
        return None if all(k is None for k in kept) else [self.num_tokens if k is None else k for k in kept]

    def set_tokens_kept(self, tokens_kept: Sequence[int] | None) -> None:
        """Keep, after each block's attention, this many tokens (None: all of them)."""
        if tokens_kept is None:
            for block in self.blocks:
                block.keep_tokens = None
            return
        tokens_kept = [int(k) for k in tokens_kept]
        if len(tokens_kept) != self.depth or not all(1 <= k <= self.num_tokens for k in tokens_kept):
            raise ConfigError(f"tokens_kept needs {self.depth} counts in 1..{self.num_tokens}, got {tokens_kept}")
        for block, k in zip(self.blocks, tokens_kept):
            block.keep_tokens = k

    def capabilities(self) -> set[str]:
        return super().capabilities() | {"tokens"}

    def flops_key(self) -> tuple:
        return super().flops_key() + (("tokens_kept", tuple(self.tokens_kept or ())),)

    @property
    def num_features(self) -> int:
        return self.embed_dim

    @property
    def config(self) -> dict:
        return {"arch": "vit", "img_size": self.img_size, "patch_size": self.patch_size, "embed_dim": self.embed_dim,
                "depth": self.depth, "num_heads": self.heads_per_block, "mlp_ratio": self.mlp_ratio,
                "mean": self.mean.flatten().tolist(), "std": self.std.flatten().tolist()} | (
                    {"tokens_kept": self.tokens_kept} if self.tokens_kept else {})

    def body_blocks(self) -> list[list[nn.Parameter]]:
        embedding = [*self.patch_embed.parameters(), self.cls_token, self.pos_embed]
        return [embedding] + [list(block.parameters()) for block in self.blocks] + [list(self.norm.parameters())]

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
                                    (Slot(f"{p}.mlp.fc1"), Slot(f"{p}.mlp.fc2", IN)), probes=(f"{p}.mlp.fc1",), can_be_empty=True,
                                    kind="node"))
        return groups


@register_model("vit")
def vision_transformer(img_size: int = 224, patch_size: int = 16, embed_dim: int = 384, depth: int = 12, num_heads: int = 6,
                       mlp_ratio: float = 4.0, num_classes: int = 1000, mean: Sequence[float] = IMAGENET_MEAN,
                       std: Sequence[float] = IMAGENET_STD, tokens_kept: Sequence[int] | None = None) -> VisionTransformer:
    """A ViT of any size (defaults: ViT-S/16 at 224, timm's ``vit_small_patch16_224``)."""
    return VisionTransformer(img_size, patch_size, embed_dim, depth, num_heads, mlp_ratio, num_classes, mean, std, tokens_kept)


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
