"""What each replica's KV cache probably holds: an index of prompt-prefix blocks.

Engines do not tell us what they cache (llama.cpp publishes no cache events), so the index
is an estimate built from what we sent them. A prompt is cut into blocks of `block_bytes`
bytes; block i is named by a chained hash of bytes `[0, (i+1)·block_bytes)`, so equal names
mean equal prefixes and a prompt's cached prefix is its longest run of known names. It is
bytes, not tokens: the engine tokenizes, and a byte prefix approximates a token prefix to
within a token per block boundary.

Two shapes of cache:
- *per slot* (llama.cpp): a slot keeps the KV of the last prompt it processed, and a new
  prompt reuses the common prefix only on that slot. The index keeps each slot's blocks.
- *shared* (vLLM, SGLang, TGI with prefix caching, the mock engine): any sequence reuses any
  cached block. The index keeps an LRU set of block names per replica.

Memory is bounded: at most `capacity` names per replica, in either shape. The index is
updated on dispatch and forgotten when a replica restarts, reloads or leaves.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

#: Measured on CPython 3.11: one name in an LRU (dict entry, key int, order links), or in a
#: slot's tuple — what `capacity` is derived from when the budget is given in bytes.
NAME_BYTES = 120

BlockNames = tuple[int, ...]


def block_names(text: bytes, block_bytes: int, max_blocks: int) -> BlockNames:
    """The chained names of the whole blocks of `text` (a partial last block is not named:
    engines cache whole blocks, and a short prompt has nothing worth routing for)."""
    count = min(len(text) // block_bytes, max_blocks)
    hasher = hashlib.blake2b(digest_size=8)
    view = memoryview(text)
    names: list[int] = []
    for i in range(count):
        hasher.update(view[i * block_bytes : (i + 1) * block_bytes])
        names.append(int.from_bytes(hasher.copy().digest(), "little"))
    return tuple(names)


def _common(a: BlockNames, b: BlockNames) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


@dataclass(frozen=True, slots=True)
class CacheHit:
    """How many leading blocks of a prompt a replica probably holds, and on which slot (for
    per-slot caches; None for shared ones)."""

    blocks: int
    slot: int | None = None


class _Slots:
    """A per-slot cache: each slot's last prompt, and when it was last used (a counter)."""

    __slots__ = ("names", "used")

    def __init__(self) -> None:
        self.names: dict[int, BlockNames] = {}
        self.used: dict[int, int] = {}


class PrefixIndex:
    """Prefix blocks per replica (one index per pool). Pure: no clock, no I/O."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        #: Names kept per replica.
        self.capacity = capacity
        self._shared: dict[str, OrderedDict[int, None]] = {}
        self._slots: dict[str, _Slots] = {}
        self._uses = 0

    def record(self, replica_id: str, names: BlockNames, slot: int | None = None) -> None:
        """`names` were just sent to `replica_id` (on `slot`, for a per-slot cache)."""
        if slot is not None:
            slots = self._slots.setdefault(replica_id, _Slots())
            self._uses += 1
            slots.used[slot] = self._uses
            # each slot gets an even share of the replica's budget
            share = max(self.capacity // max(len(slots.used), 1), 1)
            slots.names[slot] = names[:share]
            for other, kept in slots.names.items():
                if len(kept) > share:
                    slots.names[other] = kept[:share]
            return
        lru = self._shared.setdefault(replica_id, OrderedDict())
        for name in names:
            lru[name] = None
            lru.move_to_end(name)
        while len(lru) > self.capacity:
            lru.popitem(last=False)

    def hit(self, replica_id: str, names: BlockNames, free_slots: Iterable[int] = ()) -> CacheHit:
        """The best hit for `names` on `replica_id`: in its shared cache, or on one of
        `free_slots` (longest common prefix; ties go to the least recently used slot, whose
        content is worth least, then the lowest index)."""
        slots = self._slots.get(replica_id)
        if slots is None:
            lru = self._shared.get(replica_id)
            if not lru or not names:
                return CacheHit(0, min(free_slots, default=None))
            n = 0
            for name in names:  # chained names: the first miss ends the prefix
                if name not in lru:
                    break
                n += 1
            return CacheHit(n, min(free_slots, default=None))
        best: tuple[int, int, int] | None = None
        for slot in free_slots:
            kept = slots.names.get(slot, ())
            key = (-_common(names, kept), slots.used.get(slot, 0), slot)
            if best is None or key < best:
                best = key
        if best is None:
            return CacheHit(0, None)
        return CacheHit(-best[0], best[2])

    def best_anywhere(self, replica_id: str, names: BlockNames, slots_total: int) -> int:
        """The longest prefix `replica_id` probably holds on any slot, busy or free (what a
        task would find there once a slot frees)."""
        if replica_id in self._slots:
            return self.hit(replica_id, names, range(slots_total)).blocks
        return self.hit(replica_id, names).blocks

    def forget(self, replica_id: str) -> None:
        """The replica's cache is gone (restart, reload, removal)."""
        self._shared.pop(replica_id, None)
        self._slots.pop(replica_id, None)

    def size(self, replica_id: str) -> int:
        """Names held for `replica_id` (for tests and the memory bound)."""
        slots = self._slots.get(replica_id)
        if slots is not None:
            return sum(len(n) for n in slots.names.values())
        return len(self._shared.get(replica_id, ()))
