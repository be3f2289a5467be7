"""Tiny configs of every image classifier transformers can build, by ``model_type`` (random init).

Each is a dict of Hugging Face config settings (``model_type`` and what differs from its defaults)
and the input it runs on: 32x32 where the architecture allows, 64x64 where its strides need more.
Sizes are tens of thousands of parameters, so that tracing, the cut-out check and ONNX export take
well under a second or two each. ``NOT_BUILT`` names the types that cannot be built here, and why;
the walk in ``tests/test_hf_walk.py`` fails on a type transformers lists that is in neither table.

A ``*ForImageClassification`` class other than the first one its type maps to (DeiT and LeViT
"WithTeacher", Perceiver's three) is chosen by ``architectures``: :data:`VARIANTS`.
"""

from __future__ import annotations

VIT = {"image_size": 32, "patch_size": 8, "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 4, "intermediate_size": 64}
SWIN = {"image_size": 32, "patch_size": 2, "embed_dim": 16, "depths": [1, 1], "num_heads": [2, 4], "window_size": 4, "mlp_ratio": 2.0,
        "drop_path_rate": 0.0}
PERCEIVER = {"num_latents": 8, "d_latents": 32, "num_self_attends_per_block": 1, "num_self_attention_heads": 2, "num_cross_attention_heads": 1}
PVT = {"num_encoder_blocks": 2, "depths": [1, 1], "hidden_sizes": [16, 32], "patch_sizes": [7, 3], "strides": [4, 2],
       "num_attention_heads": [2, 4], "mlp_ratios": [2, 2]}

# model_type -> (config settings, input size)
TINY: dict[str, tuple[dict, int]] = {
    "beit": ({**VIT, "use_relative_position_bias": True}, 32),
    "bit": ({"embedding_size": 16, "hidden_sizes": [16, 32], "depths": [1, 1], "num_groups": 4, "out_features": None, "out_indices": None,
             "stage_names": ["stem", "stage1", "stage2"]}, 32),
    "clip": ({"vision_config": {**VIT, "model_type": "clip_vision_model"}}, 32),
    "convnext": ({"hidden_sizes": [8, 16], "depths": [1, 1], "num_stages": 2}, 32),
    "convnextv2": ({"hidden_sizes": [8, 16], "depths": [1, 1], "num_stages": 2}, 32),
    "cvt": ({"embed_dim": [8, 16, 32], "num_heads": [1, 2, 4], "depth": [1, 2, 3], "drop_path_rate": [0.0, 0.0, 0.0],
             "mlp_ratio": [2.0, 2.0, 2.0]}, 32),
    "data2vec-vision": ({**VIT, "use_relative_position_bias": True}, 32),
    "deit": (VIT, 32),
    "dinat": ({"embed_dim": 16, "depths": [1, 1], "num_heads": [2, 4], "kernel_size": 3, "dilations": [[1], [1]], "mlp_ratio": 2.0,
               "drop_path_rate": 0.0}, 32),
    "dinov2": ({"image_size": 32, "patch_size": 8, "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 4, "mlp_ratio": 2}, 32),
    "dinov2_with_registers": ({"image_size": 32, "patch_size": 8, "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 4,
                               "mlp_ratio": 2, "num_register_tokens": 2}, 32),
    "donut-swin": (SWIN, 32),
    "efficientnet": ({"image_size": 32, "width_coefficient": 0.25, "depth_coefficient": 0.1, "hidden_dim": 320}, 32),
    "focalnet": ({"image_size": 32, "patch_size": 4, "embed_dim": 16, "depths": [1, 1], "focal_levels": [2, 2], "focal_windows": [3, 3],
                  "mlp_ratio": 2.0, "drop_path_rate": 0.0, "hidden_sizes": [32, 64], "out_features": None, "out_indices": None,
                  "stage_names": ["stem", "stage1", "stage2"]}, 32),
    "hgnet_v2": ({"embedding_size": 16, "depths": [1, 1], "hidden_sizes": [32, 64], "stem_channels": [3, 8, 16],
                  "stage_in_channels": [16, 32], "stage_mid_channels": [8, 16], "stage_out_channels": [32, 64], "stage_num_blocks": [1, 1],
                  "stage_downsample": [False, True], "stage_downsample_strides": [2, 2], "stage_light_block": [False, True],
                  "stage_kernel_size": [3, 5], "stage_numb_of_layers": [2, 2], "out_features": None, "out_indices": None,
                  "stage_names": ["stem", "stage1", "stage2"]}, 32),
    "hiera": ({"embed_dim": 16, "image_size": [64, 64], "patch_size": [3, 3], "patch_stride": [2, 2], "patch_padding": [1, 1],
               "mlp_ratio": 2.0, "depths": [1, 1], "num_heads": [2, 4], "num_query_pool": 1, "query_stride": [2, 2],
               "masked_unit_size": [8, 8], "masked_unit_attention": [True, False], "out_features": None, "out_indices": None,
               "stage_names": ["stem", "stage1", "stage2"]}, 64),
    "ijepa": (VIT, 32),
    "imagegpt": ({"n_embd": 32, "n_layer": 1, "n_head": 4, "n_positions": 1024, "vocab_size": 513}, 32),
    "levit": ({"image_size": 64, "hidden_sizes": [16, 32, 48], "num_attention_heads": [2, 4, 6], "depths": [1, 1, 1], "key_dim": [4, 4, 4],
               "mlp_ratio": [2, 2, 2], "attention_ratio": [2, 2, 2],
               "down_ops": [["Subsample", 4, 4, 4, 2, 2], ["Subsample", 4, 8, 4, 2, 2]]}, 64),
    "metaclip_2": ({"vision_config": {**VIT, "model_type": "metaclip_2_vision_model"}}, 32),
    "mobilenet_v1": ({"image_size": 32, "depth_multiplier": 0.25}, 32),
    "mobilenet_v2": ({"image_size": 32, "depth_multiplier": 0.35, "finegrained_output": False}, 32),
    "mobilevit": ({"image_size": 32, "hidden_sizes": [16, 24, 32], "neck_hidden_sizes": [8, 8, 16, 16, 24, 32, 64],
                   "num_attention_heads": 2, "expand_ratio": 2.0}, 32),
    "mobilevitv2": ({"image_size": 64, "width_multiplier": 0.25, "n_attn_blocks": [1, 1, 1], "base_attn_unit_dims": [32, 48, 64]}, 64),
    "perceiver": ({**PERCEIVER, "d_model": 512, "image_size": 16}, 16),  # d_model: 256 conv channels + 256 position channels
    "poolformer": ({"hidden_sizes": [8, 16], "depths": [1, 1], "num_encoder_blocks": 2, "patch_sizes": [7, 3], "strides": [4, 2],
                    "padding": [2, 1], "mlp_ratio": 2.0}, 32),
    "pp_lcnet": ({"scale": 0.25, "class_expand": 64}, 32),
    "pvt": ({**PVT, "image_size": 32, "sequence_reduction_ratios": [2, 1], "patch_sizes": [4, 2]}, 32),
    "pvt_v2": ({**PVT, "image_size": [32, 32], "sr_ratios": [2, 1], "out_features": None, "out_indices": None,
                "stage_names": ["stage1", "stage2"]}, 32),
    "regnet": ({"embedding_size": 16, "hidden_sizes": [32, 64], "depths": [1, 1], "groups_width": 8, "layer_type": "y"}, 32),
    "resnet": ({"embedding_size": 16, "hidden_sizes": [16, 16, 32, 32], "depths": [1, 1, 1, 1], "layer_type": "bottleneck"}, 32),
    "segformer": ({**PVT, "sr_ratios": [2, 1], "decoder_hidden_size": 16, "drop_path_rate": 0.0}, 32),
    "shieldgemma2": ({}, 32),
    "siglip": ({"vision_config": {**VIT, "model_type": "siglip_vision_model"}}, 32),
    "siglip2": ({"vision_config": {"patch_size": 8, "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 4,
                                   "intermediate_size": 64, "num_patches": 16, "model_type": "siglip2_vision_model"}}, 32),
    "swiftformer": ({"depths": [1, 1, 1, 1], "embed_dims": [8, 16, 24, 32], "mlp_ratio": 2}, 32),
    "swin": (SWIN, 32),
    "swinv2": ({**SWIN, "pretrained_window_sizes": [0, 0], "out_features": None, "out_indices": None,
                "stage_names": ["stem", "stage1", "stage2"]}, 32),
    "textnet": ({"stem_out_channels": 8, "image_size": [32, 32], "hidden_sizes": [8, 8, 16, 16, 32], "depths": [1, 1, 1, 1],
                 "conv_layer_kernel_sizes": [[[3, 3]], [[3, 3]], [[3, 3]], [[3, 3]]], "conv_layer_strides": [[1], [2], [2], [2]]}, 32),
    "timm_wrapper": ({}, 32),
    "vit": (VIT, 32),
    "vit_msn": (VIT, 32),
}

# Classes other than the first of their type (chosen by the config's ``architectures``): settings
# over their type's, and input size
VARIANTS: dict[str, tuple[dict, int]] = {
    "DeiTForImageClassificationWithTeacher": ({}, 32),
    "LevitForImageClassificationWithTeacher": ({}, 64),
    "PerceiverForImageClassificationFourier": ({"d_model": 261, "image_size": 16}, 16),  # 3 colours + 258 Fourier features
    "PerceiverForImageClassificationConvProcessing": ({"d_model": 322, "image_size": 32}, 32),  # 64 conv channels + 258
}


def tiny(model_type: str, cls: str | None = None) -> tuple[dict, int]:
    """The tiny config (with ``model_type``, and ``architectures`` for a variant) and input size of a class."""
    settings, size = TINY[model_type]
    settings = {"model_type": model_type, **settings}
    if cls is not None and cls in VARIANTS:
        extra, size = VARIANTS[cls]
        settings |= extra | {"architectures": [cls]}
    return settings, size
