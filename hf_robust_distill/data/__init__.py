"""Images in: datasets (Hub id, imagefolder, saved, streamed), decoding exactly as the pipeline decodes,
timm's training transform per image in the workers, 8-bit pixels, the collator, the ImageNet class tables."""

from .augmentation import AugmentationSettings, TrainingTransform, parse_rand_augment
from .datasets import (DEMO_DATASET, SPLIT_SEED, check_dataset_reachable, check_labels, class_names, collate_images,
                       demo_digits, encode_string_labels, find_columns, label_values, load_image_dataset,
                       prepare_dataset, read_class_names_file)
from .digest import images_digest
from .imagenet_classes import imagenet_classes, is_imagenet_1k, subset_names, zero_shot_names
from .images import (BadImage, BadImageLog, ImageNetCCrop, ImageResizer, TooManyBadImages, decode_rgb, input_size,
                     list_of, to_rgb, too_many_message)
from .pixel_levels import to_unit_range, unit_levels
from .splits import HELD_OUT, SplitSource, choose_splits, split_train_eval
from .streams import StreamCollator, load_stream, prepare_stream
from .training_set import AugmentedImages

__all__ = ["AugmentationSettings", "AugmentedImages", "BadImage", "BadImageLog", "check_dataset_reachable",
           "check_labels", "choose_splits", "class_names", "collate_images", "decode_rgb", "DEMO_DATASET",
           "demo_digits", "encode_string_labels", "find_columns", "HELD_OUT", "imagenet_classes", "ImageNetCCrop",
           "ImageResizer", "images_digest", "input_size", "is_imagenet_1k", "label_values", "list_of",
           "load_image_dataset", "load_stream", "parse_rand_augment", "prepare_dataset", "prepare_stream",
           "read_class_names_file", "SPLIT_SEED", "split_train_eval", "SplitSource", "StreamCollator", "subset_names",
           "to_rgb", "to_unit_range", "too_many_message", "TooManyBadImages", "TrainingTransform", "unit_levels",
           "zero_shot_names"]
