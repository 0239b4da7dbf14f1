"""engine.train_one_epoch and engine.evaluate on a toy linear model: the sums, the kept outputs, the checks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from resnetlab.engine import EpochTotals, Step, evaluate, train_one_epoch
from resnetlab.errors import NonFiniteLossError


def _batches(count: int = 3, size: int = 4) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    return [(torch.randn(size, 6, generator=generator), torch.randint(0, 3, (size,), generator=generator),
             torch.arange(i * size, (i + 1) * size)) for i in range(count)]


def test_evaluate_sums_loss_and_hits_keeps_outputs_in_order_and_leaves_the_weights():
    torch.manual_seed(0)
    model, batches = nn.Linear(6, 3), _batches()
    before = [p.detach().clone() for p in model.parameters()]
    result = evaluate(model, batches, Step(nn.CrossEntropyLoss(), torch.device("cpu"), steps=3), keep_outputs=True)
    x, y = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    with torch.no_grad():
        logits = model(x)
    assert result.images == 12 and result.steps == 3
    assert result.loss == pytest.approx(float(nn.functional.cross_entropy(logits, y)), abs=1e-6)
    assert result.accuracy == pytest.approx(float((logits.argmax(1) == y).float().mean()))
    assert torch.allclose(result.logits, logits) and torch.equal(result.targets, y)
    assert torch.equal(result.indices, torch.arange(12))
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_train_one_epoch_steps_from_a_resumed_position_and_names_the_first_bad_step():
    torch.manual_seed(0)
    model = nn.Linear(6, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    step = Step(nn.CrossEntropyLoss(), torch.device("cpu"), steps=3, optimizer=optimizer)
    done: list[int] = []
    totals = EpochTotals(torch.device("cpu"), {"loss_sum": 4.0, "correct": 1, "seen": 4})
    before = model.weight.detach().clone()
    result = train_one_epoch(model, _batches()[1:], step, start=1, totals=totals, on_step=done.append)
    assert done == [2, 3] and result.steps == 2 and result.images == 12  # the saved 4 images count too
    assert not torch.equal(before, model.weight)
    with pytest.raises(ValueError, match="optimizer"):
        train_one_epoch(model, _batches(), Step(nn.CrossEntropyLoss(), torch.device("cpu")))
    bad = [(x.clone(), y, index) for x, y, index in _batches()]
    bad[1][0][0, 0] = float("nan")
    with pytest.raises(NonFiniteLossError, match="at epoch 4, step 2"):
        train_one_epoch(model, bad, step, epoch=4)
