"""Batch rounds through the OpenAI Batch API: a side task of ``runner work``.

``executor``  chunks of a batch round's runs, each a provider batch, advanced step by step
              (claim, upload, create, poll, store) and taken over when a worker dies;
``results``   a provider batch's result files stored as attempts, the rest queued again;
``lines``     a chunk's input file, and result lines turned into outcomes.
"""

from __future__ import annotations

from runner.work.batches.executor import BatchExecutor

__all__ = ["BatchExecutor"]
