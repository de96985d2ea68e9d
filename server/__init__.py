"""The serving side: a vLLM-compatible emulated server and helpers to launch real vLLM."""
