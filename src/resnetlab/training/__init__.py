"""Training, in the order a run goes: ``data`` (open, decode, batches) -> ``setup`` (network, optimizer,
losses, EMA, DDP) -> ``schedule`` (LR per step, the time plan) -> ``loop`` (train_one_epoch -> validate ->
record -> checkpoint) with ``state`` (what resume needs) -> ``finish`` (figures, end-of-run evaluation).
``run`` ties them together; ``lr_find`` is the LR range test.

    result = train(data="photos/", epochs=5)
"""

from .run import RunResult, train

__all__ = ["RunResult", "train"]
