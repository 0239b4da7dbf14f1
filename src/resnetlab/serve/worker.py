"""The model's own thread: requests wait in a bounded queue, and the images of all requests waiting when
the model frees up run as one forward pass.

    worker = InferenceWorker(classifier, max_batch=32, max_pending=64)
    logits = worker.submit_logits(uint8_batch).result()     # raises Busy at once when the queue is full
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from ..classifier import Classifier

_STOP = ("stop", None, None)  # the worker's last job


class Busy(Exception):
    """The inference queue is full: the client should retry later (HTTP 503)."""


class InferenceWorker:
    """One thread owns the model: requests wait in a bounded queue, and the images of all requests
    waiting when the model frees up run as one batch (throughput rises with load, memory stays bounded).

    Explanations run on the same thread, so Grad-CAM's forward hooks never see another request's forward.
    """

    def __init__(self, classifier: Classifier, *, max_batch: int, max_pending: int):
        self.classifier, self.max_batch = classifier, max_batch
        self._jobs: queue.Queue = queue.Queue(maxsize=max_pending)
        self._carry = None  # a job taken while filling a batch that must run on its own
        self.batches = self.images = 0
        self._thread = threading.Thread(target=self._loop, name="resnetlab-inference", daemon=True)
        self._thread.start()

    def submit_logits(self, images: torch.Tensor) -> Future:
        """uint8 N x 3 x S x S -> Future of logits N x K; raises Busy when the queue is full."""
        return self._put(("logits", images))

    def submit_call(self, function: Callable[[], object]) -> Future:
        """Run ``function()`` on the model's thread, alone."""
        return self._put(("call", function))

    def _put(self, job: tuple) -> Future:
        future: Future = Future()
        try:
            self._jobs.put_nowait((*job, future))
        except queue.Full:
            raise Busy from None
        return future

    def close(self) -> None:
        self._jobs.put(_STOP)  # blocks only while the queue is full; the worker drains it
        self._thread.join()

    def _next(self, block: bool):
        if self._carry is not None:
            job, self._carry = self._carry, None
            return job
        return self._jobs.get() if block else self._jobs.get_nowait()

    def _loop(self) -> None:
        while True:
            job = self._next(block=True)
            if job is _STOP:
                return
            kind, payload, future = job
            if kind == "call":
                _settle(future, payload)
                continue
            group, count = [job], len(payload)
            while count < self.max_batch:  # take whatever else is already waiting; never wait for more
                try:
                    extra = self._next(block=False)
                except queue.Empty:
                    break
                if extra[0] != "logits" or count + len(extra[1]) > self.max_batch:
                    self._carry = extra
                    break
                group.append(extra)
                count += len(extra[1])
            self._run_group(group)

    def _run_group(self, group: list) -> None:
        live = [(images, future) for _, images, future in group if future.set_running_or_notify_cancel()]
        if not live:
            return
        try:
            logits = self.classifier.logits(torch.cat([images for images, _ in live]))  # sum(N) x K
        except Exception as err:  # noqa: BLE001 - handed to the waiting requests, the thread lives on
            for _, future in live:
                future.set_exception(err)
            return
        self.batches += 1
        self.images += len(logits)
        start = 0
        for images, future in live:
            future.set_result(logits[start:start + len(images)])
            start += len(images)


def _settle(future: Future, function: Callable[[], object]) -> None:
    if not future.set_running_or_notify_cancel():
        return
    try:
        future.set_result(function())
    except Exception as err:  # noqa: BLE001 - the request reports it; the worker keeps serving
        future.set_exception(err)
