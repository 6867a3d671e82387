"""The names of a training batch's columns, the contract between the datasets, the collators and
the trainer; each is written here once."""

PIXELS = "pixel_values"
LABELS = "labels"
BAD_IMAGES = "bad_images"
"""The images of a micro-batch that did not decode (the collator leaves them out)."""

DAD_IMAGE = "dad_image"
"""An offline DAD dataset's image column; prepared as ``DAD_PIXELS`` beside the clean image."""
DAD_PIXELS = "dad_pixel_values"
TEACHER_LOGITS_CLEAN = "teacher_logits_clean"
TEACHER_LOGITS_DAD = "teacher_logits_dad"
STORED_TEACHER_LOGITS = (TEACHER_LOGITS_CLEAN, TEACHER_LOGITS_DAD)
"""The teacher's logits an offline DAD dataset may store, on the clean and on the DAD image."""

TEACHER_CACHE_PREFIX = "teacher_"
"""Columns the teacher cache puts beside each batch: ``teacher_logits``, ``teacher_cls``,
``teacher_tokens_<layer>``, ``teacher_attention_<layer>``."""
