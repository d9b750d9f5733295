"""ViT_Astro: a timm-0.4.12 ViT branch, the inception+magnitude branch, and a head."""
from functools import partial

import torch
import torch.nn as nn
from timm.models.layers import PatchEmbed
from timm.models.vision_transformer import Block

from blocks.photoz import Input_Mix_Model


class ViT_Astro(nn.Module):
    """AstroMAE: concat(ViT 1096, inception 1096 + magnitudes 1024) -> 1024 -> 1."""

    def __init__(self, img_size=32, patch_size=4, in_chans=5, embed_dim=192, depth=12,
                 num_heads=3, mlp_ratio=4.0):
        super().__init__()
        norm_layer = partial(nn.LayerNorm, eps=1e-6)
        self.patch_embed = PatchEmbed(img_size=img_size, patch_size=patch_size,
                                      in_chans=in_chans, embed_dim=embed_dim)
        num_patches = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, embed_dim))
        self.pos_drop = nn.Dropout(p=0.0)
        self.blocks = nn.Sequential(*[
            Block(dim=embed_dim, num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=True,
                  norm_layer=norm_layer)
            for _ in range(depth)
        ])
        self.fc_norm = norm_layer(embed_dim)
        self.head = nn.Linear(embed_dim, embed_dim)
        self.vit_block = nn.Sequential(nn.Linear(embed_dim, 1096), nn.ReLU(),
                                       nn.Linear(1096, 1096))
        self.inception_model = Input_Mix_Model(in_chans=in_chans, img_size=img_size)
        self.concat_block = nn.Sequential(nn.Linear(1096 + 1096 + 1024, 1024), nn.ReLU(),
                                          nn.Linear(1024, 1))

    def forward_vit(self, x, trace=None):
        x = self.patch_embed(x)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + self.pos_embed
        x = self.pos_drop(x)
        if trace is not None:
            trace["vit.tokens"] = x
        for i, blk in enumerate(self.blocks):
            x = blk(x)
            if trace is not None:
                trace[f"vit.blocks.{i}"] = x
        x = x[:, 1:, :].mean(dim=1)  # mean over patch tokens, cls excluded; no final norm
        x = self.fc_norm(x)
        x = self.head(x)
        if trace is not None:
            trace["vit.head"] = x
        return self.vit_block(x)

    def forward(self, image, magnitudes, trace=None):
        v = self.forward_vit(image, trace)
        m = self.inception_model(image, magnitudes)
        if trace is not None:
            trace["vit_block"] = v
            trace["inception_model"] = m
        return self.concat_block(torch.cat([v, m], dim=1))
