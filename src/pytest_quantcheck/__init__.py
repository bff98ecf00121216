"""pytest-quantcheck: quantization regression testing for GGUF models, as pytest tests.

Importing this package does not load llama.cpp; the backend is imported when a model is needed.
"""

from __future__ import annotations

__version__ = "0.1.0.dev0"
