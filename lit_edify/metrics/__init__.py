"""Image-generation metrics: FID / KID (TF Inception pool3, offline), CLIP score (open_clip, local weights),
classifier-accuracy adherence, and :func:`evaluate_generator` tying them to a generator.

Images are float in [-1, 1], NCHW, throughout; no Lightning imports here (the Lightning callback is
``lit_edify.callbacks.metrics.GenerationMetrics``).
"""

from .classifier import CaptionClassifier, load_or_train_classifier, train_caption_classifier
from .clip_score import ClipScorer, clip_preprocess
from .evaluate import GeneratorEvaluator, evaluate_generator, generate_batches, normalize_prompts
from .fid import DEFAULT_CACHE_DIR, cached_features, fid_from_features, iter_reference_batches, kid_from_features
from .inception import FEATURE_DIM, InceptionPool3, extract_features, images_to_uint8, resize_bilinear_tf1

__all__ = [
    "DEFAULT_CACHE_DIR",
    "FEATURE_DIM",
    "CaptionClassifier",
    "ClipScorer",
    "GeneratorEvaluator",
    "InceptionPool3",
    "cached_features",
    "clip_preprocess",
    "evaluate_generator",
    "extract_features",
    "fid_from_features",
    "generate_batches",
    "images_to_uint8",
    "iter_reference_batches",
    "kid_from_features",
    "load_or_train_classifier",
    "normalize_prompts",
    "resize_bilinear_tf1",
    "train_caption_classifier",
]
