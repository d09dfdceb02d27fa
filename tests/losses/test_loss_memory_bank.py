import io
import random

import pytest
import torch

from facedistill.errors import CheckpointError
from facedistill.losses.memory_bank import MemoryBank


class RefQueue:
    """Obviously-correct FIFO: a Python list of (row, label), capped at `size`."""

    def __init__(self, size):
        self.size = size
        self.items = []

    def push(self, emb, labels):
        for i in range(emb.shape[0]):
            self.items.append((emb[i].clone(), int(labels[i])))
            if len(self.items) > self.size:
                self.items.pop(0)


def _assert_same(bank: MemoryBank, ref: RefQueue):
    emb, lab = bank.ordered()
    assert bank.filled == len(ref.items)
    assert emb.shape[0] == len(ref.items)
    for (r_emb, r_lab), e, l in zip(ref.items, emb, lab):
        assert torch.equal(r_emb, e)
        assert r_lab == int(l)
    # the valid slots hold exactly the queued items (as a multiset of labels)
    valid = bank.valid_mask()
    assert int(valid.sum()) == len(ref.items)
    assert sorted(bank.labels[valid].tolist()) == sorted(l for _, l in ref.items)


def test_empty_bank_is_masked():
    bank = MemoryBank(5, 3)
    assert bank.filled == 0 and not bank.valid_mask().any()
    assert bank.ordered()[0].shape == (0, 3)


def test_fills_in_order_and_masks_empty_slots():
    bank = MemoryBank(5, 3)
    emb = torch.randn(3, 3)
    bank.enqueue(emb, torch.tensor([7, 8, 9]))
    assert bank.valid_mask().tolist() == [True, True, True, False, False]
    assert torch.equal(bank.embeddings[:3], emb)
    assert bank.labels.tolist() == [7, 8, 9, -1, -1]
    assert int(bank.ptr) == 3


def test_wrap_around_overwrites_oldest_first():
    bank = MemoryBank(5, 2)
    a = torch.arange(8, dtype=torch.float32).view(4, 2)
    b = 100 + torch.arange(6, dtype=torch.float32).view(3, 2)
    bank.enqueue(a, torch.tensor([0, 1, 2, 3]))
    bank.enqueue(b, torch.tensor([4, 5, 6]))  # slots 4, 0, 1
    assert bank.labels.tolist() == [5, 6, 2, 3, 4]
    assert torch.equal(bank.embeddings[0], b[1]) and torch.equal(bank.embeddings[4], b[0])
    emb, lab = bank.ordered()
    assert lab.tolist() == [2, 3, 4, 5, 6]
    assert torch.equal(emb, torch.cat([a[2:], b]))
    assert int(bank.ptr) == 2 and bank.is_full and bank.valid_mask().all()


def test_batch_larger_than_bank_keeps_newest():
    bank = MemoryBank(5, 2)
    bank.enqueue(torch.zeros(2, 2), torch.tensor([-5, -6]))
    big = torch.randn(12, 2)
    labels = torch.arange(12)
    bank.enqueue(big, labels)
    emb, lab = bank.ordered()
    assert lab.tolist() == list(range(7, 12))
    assert torch.equal(emb, big[7:])
    assert int(bank.ptr) == (2 + 12) % 5
    bank.enqueue(torch.ones(1, 2), torch.tensor([99]))
    assert bank.ordered()[1].tolist() == [8, 9, 10, 11, 99]


def test_random_stream_matches_reference_queue():
    rng = random.Random(0)
    bank, ref = MemoryBank(7, 4), RefQueue(7)
    for _ in range(25):
        n = rng.randint(0, 10)
        emb, labels = torch.randn(n, 4), torch.randint(-1, 50, (n,))
        bank.enqueue(emb, labels)
        ref.push(emb, labels)
        _assert_same(bank, ref)


def test_memory_formula():
    assert MemoryBank(8192, 512).memory_bytes() == 8192 * (512 * 4 + 8) == 16_842_752
    bank = MemoryBank(10, 6)
    held = sum(b.numel() * b.element_size() for n, b in bank.named_buffers() if n in ("embeddings", "labels"))
    assert held == bank.memory_bytes()


def test_gather_fn_applied_before_enqueue():
    calls = []

    def fake_all_gather(x):  # two ranks holding the same batch
        calls.append(x.shape)
        return torch.cat([x, x])

    bank = MemoryBank(8, 2, gather_fn=fake_all_gather)
    bank.enqueue(torch.randn(3, 2), torch.tensor([1, 2, 3]))
    assert len(calls) == 2 and bank.filled == 6
    assert bank.ordered()[1].tolist() == [1, 2, 3, 1, 2, 3]


def test_state_dict_round_trip_and_shape_check():
    bank = MemoryBank(6, 3)
    bank.enqueue(torch.randn(8, 3), torch.arange(8))
    buf = io.BytesIO()
    torch.save(bank.state_dict(), buf)
    buf.seek(0)
    other = MemoryBank(6, 3)
    other.load_state_dict(torch.load(buf))
    for name in ("embeddings", "labels", "ptr", "count"):
        assert torch.equal(getattr(bank, name), getattr(other, name))
    emb, lab = torch.randn(2, 3), torch.tensor([50, 51])
    bank.enqueue(emb, lab)
    other.enqueue(emb, lab)
    assert torch.equal(bank.ordered()[0], other.ordered()[0])
    with pytest.raises(CheckpointError, match="bank_size"):
        MemoryBank(4, 3).load_state_dict(bank.state_dict())


def test_enqueue_validates_shapes_and_detaches():
    bank = MemoryBank(4, 3)
    with pytest.raises(ValueError):
        bank.enqueue(torch.randn(2, 5), torch.tensor([0, 1]))
    with pytest.raises(ValueError):
        bank.enqueue(torch.randn(2, 3), torch.tensor([0]))
    x = torch.randn(2, 3, requires_grad=True)
    bank.enqueue(x, torch.tensor([0, 1]))
    assert not bank.embeddings.requires_grad
    bank.enqueue(torch.randn(0, 3), torch.zeros(0, dtype=torch.long))
    assert bank.filled == 2
