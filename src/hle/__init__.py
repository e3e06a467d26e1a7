"""hle: proposal-free panoptic segmentation with Hierarchical Lovász Embeddings."""
from __future__ import annotations

__version__ = "0.1.0"
