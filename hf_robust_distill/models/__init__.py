"""The models around the images: loading with ``from_pretrained``, pixels at the model's door,
feature taps, heads, LoRA glue, attention maps, token grids and the CLIP zero-shot teacher."""

from .attention_maps import SELECTIVE_ATTENTION, attention_rows, read_attention_maps
from .heads import (DIFFERENT, REORDER, SAME, align_head, describe_difference, detach_head_inputs, fit_to_classes,
                    freeze_unread_head, head_classes, is_image_classifier, match_classes, match_head, unwrap_adapters)
from .loading import (architecture_on_meta, check_drop_path, checkpoint_exists, config_classes, load_vision_model,
                      load_with_head, read_image_processor, read_model_config, save_image_processor,
                      student_load_kwargs, supports_drop_path, whole_weights)
from .lora import DEFAULT_TARGETS, is_lora, trained_share
from .pixels import PixelPreprocessor, PixelSpaceClassifier, as_pixel_classifier, model_dtype
from .prompts import OPENAI_IMAGENET_TEMPLATES, resolve_templates
from .taps import (AttentionMapsUnavailable, Features, FeatureTaps, check_compatible, check_feature_terms, map_layers,
                   transformer_blocks)
from .token_grids import align_attention, cls_and_grid, patch_grid, prefix_tokens, resample_attention, resample_tokens
from .timm_models import is_timm, timm_network
from .zero_shot import HEAD_WEIGHTS, CLIPZeroShotClassifier, load_pixel_classifier, saved_head_classes

__all__ = ["align_attention", "align_head", "architecture_on_meta", "as_pixel_classifier", "attention_rows",
           "AttentionMapsUnavailable", "check_compatible", "check_drop_path", "check_feature_terms",
           "checkpoint_exists", "CLIPZeroShotClassifier", "cls_and_grid", "config_classes", "DEFAULT_TARGETS",
           "describe_difference", "detach_head_inputs", "DIFFERENT", "Features", "FeatureTaps", "fit_to_classes",
           "freeze_unread_head", "head_classes", "HEAD_WEIGHTS", "is_image_classifier", "is_lora", "is_timm",
           "load_pixel_classifier", "load_vision_model", "load_with_head", "map_layers", "match_classes", "match_head",
           "model_dtype", "OPENAI_IMAGENET_TEMPLATES", "patch_grid", "PixelPreprocessor", "PixelSpaceClassifier",
           "prefix_tokens", "read_attention_maps", "read_image_processor", "read_model_config", "REORDER",
           "resample_attention", "resample_tokens", "resolve_templates", "SAME", "save_image_processor", "saved_head_classes",
           "SELECTIVE_ATTENTION", "student_load_kwargs", "supports_drop_path", "timm_network", "trained_share",
           "transformer_blocks",
           "unwrap_adapters", "whole_weights"]
