"""The one inference path: images and captions in, float32 unit vectors out.

Everything that encodes for inference goes through here: ``TwinEncoder.encode_images`` /
``encode_texts``, the :class:`~retrieval.search.Searcher` (and through it the service), the
embed engines (local and Ray), :func:`~retrieval.evaluate.evaluate_model` and the validation of
a training run. What it does, once for all of them:

* **batches**: ``batch_size`` items per forward pass (defaults :data:`IMAGE_BATCH_SIZE`,
  :data:`TEXT_BATCH_SIZE`); streaming callers take one :class:`Encoded` per batch
  (:func:`image_batches`, :func:`text_batches`), the others the whole result
  (:func:`encode_images`, :func:`encode_texts`).
* **prefetches**: while a batch runs its forward pass, the next image batches are read,
  decoded and transformed in a helper thread (or in ``DataLoader`` worker processes with
  ``num_workers > 0``) and the next caption batches are tokenized in a helper thread.
* **device**: ``device=None`` encodes where the model is; another device moves the model there
  for the call and back afterwards. :func:`pick_device` is the toolkit's one choice of a default
  device: CUDA when present, else the CPU.
* **mode**: a model in train mode is put in eval mode for the call and back in train mode
  afterwards; a model in eval mode is never touched, so concurrent calls on it are safe.
* **broken items**: with ``skip_broken=True`` an image that cannot be decoded or transformed is
  left out and reported (:class:`Skipped`: its position, reason, detail); otherwise its error
  (:class:`~retrieval.data.ImageDecodeError` for an unreadable file) propagates.

* **runtime**: a :class:`~retrieval.model.TwinEncoder` runs its towers on ``runtime`` ("torch",
  "onnx" or "auto"; None: the model's own ``runtime`` attribute, which ``load_model(runtime=)``
  sets, else "torch") and its heads on torch: see :mod:`~retrieval.encoding.towers` (ONNX graphs
  exported once per tower, checked against torch, looked up by the tower's fingerprint).
* **feature cache**: with ``feature_cache`` (a :class:`FeatureCache`, or True for the default one)
  image tower outputs are read by content (image bytes, tower, transform) instead of computed, and
  the computed ones are added: training stores its locked tower's features there, and ``embed`` /
  ``eval`` of the same images run only the heads. See :mod:`~retrieval.encoding.feature_cache`.

A model offers ``image_transform()`` + ``image_features(pixels [B, 3, H, W])`` and
``tokenize(texts)`` + ``text_features(tokens)``, and ``embed_dim`` (a
:class:`~retrieval.model.TwinEncoder` does). A model that only offers
``encode_images(items, batch_size=, device=)`` / ``encode_texts(...)`` (a black box, e.g. the
service's shared model runner) is called batch by batch instead; with ``skip_broken`` a batch
that fails with ``ValueError`` / ``OSError`` is retried one item at a time to find the culprits.

This package's ``__init__`` is its public API; the modules behind it:

* :mod:`~retrieval.encoding.images` -- :func:`encode_images`, :func:`image_batches`,
  :func:`encode_image_features`, :func:`image_feature_batches` (tower outputs, before the head),
  :func:`decoded_batches`.
* :mod:`~retrieval.encoding.texts` -- :func:`encode_texts`, :func:`text_batches`,
  :func:`encode_text_features`.
* :mod:`~retrieval.encoding.towers` -- the runtime of each tower (torch or ONNX Runtime).
* :mod:`~retrieval.encoding.feature_cache` -- :class:`FeatureCache`.
* :mod:`~retrieval.encoding.features` -- :func:`encode_grids`, :func:`encode_tokens` (features
  before pooling, for the cross-attention match head).
* :mod:`~retrieval.encoding.runtime` -- :func:`pick_device` and :func:`inference` (device and
  mode), :func:`prefetch` (the helper thread).
* :mod:`~retrieval.encoding.batches` -- :class:`Encoded`, :class:`Skipped`, the default batch
  sizes, models that are black boxes.
"""

from __future__ import annotations

from retrieval.encoding.batches import IMAGE_BATCH_SIZE, TEXT_BATCH_SIZE, Encoded, Skipped
from retrieval.encoding.feature_cache import FeatureCache
from retrieval.encoding.features import encode_grids, encode_tokens
from retrieval.encoding.images import (
    decoded_batches,
    encode_image_features,
    encode_images,
    image_batches,
    image_feature_batches,
)
from retrieval.encoding.runtime import inference, pick_device, prefetch
from retrieval.encoding.texts import encode_text_features, encode_texts, text_batches, text_feature_batches

__all__ = [
    "IMAGE_BATCH_SIZE",
    "TEXT_BATCH_SIZE",
    "Encoded",
    "FeatureCache",
    "Skipped",
    "decoded_batches",
    "encode_grids",
    "encode_image_features",
    "encode_images",
    "encode_text_features",
    "encode_texts",
    "encode_tokens",
    "image_batches",
    "image_feature_batches",
    "inference",
    "pick_device",
    "prefetch",
    "text_batches",
    "text_feature_batches",
]
