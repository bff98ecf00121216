"""Quality and speed metrics computed from logits and timings: pure NumPy, no pytest, no llama.cpp."""
