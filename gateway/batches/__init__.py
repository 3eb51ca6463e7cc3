"""The batch API: files, batches and the driver that runs them (docs/batches.md)."""

from gateway.batches.store import BatchRecord, BatchStore, FileRecord
from gateway.batches.upstream import ProviderBatches, takes_batches
from gateway.batches.worker import BatchWorker

__all__ = [
    "BatchRecord",
    "BatchStore",
    "BatchWorker",
    "FileRecord",
    "ProviderBatches",
    "takes_batches",
]
