"""Internals of :mod:`retrieval.embed`: corpus items and their keys, encoding engines, committed shards."""

from __future__ import annotations
