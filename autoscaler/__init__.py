"""The live autoscaler: discover vLLM pods, read their metrics, decide, scale, explain."""
