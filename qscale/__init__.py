"""qscale: a queue-depth autoscaler for GPU vLLM servers."""

__version__ = "0.1.0"
