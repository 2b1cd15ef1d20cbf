"""Softserve: a multi-task LLM inference server with hot-swappable soft prompts."""

__version__ = "0.1.0"
