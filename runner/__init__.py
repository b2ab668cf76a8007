"""seed-runner: an async batch-generation job runner for LLM chat completions.

Submit job files, run them through a durable queue (SQLite or PostgreSQL) with an
async worker, and keep every output with its seed and ``system_fingerprint``.
"""

__version__ = "0.1.0"
