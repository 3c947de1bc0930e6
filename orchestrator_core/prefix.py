"""What each replica's KV cache probably holds: an index of prompt-prefix blocks.

Engines do not tell us what they cache (llama.cpp publishes no cache events), so the index
is an estimate built from what we sent them. A prompt is cut into blocks of `block_bytes`
bytes; block i is named by a chained hash of bytes `[0, (i+1)·block_bytes)`, so equal names
mean equal prefixes and a prompt's cached prefix is its longest run of known names. It is
bytes, not tokens: the engine tokenizes, and a byte prefix approximates a token prefix to
within a token per block boundary.

Every replica has a cache its sequences share — vLLM's and SGLang's prefix caches, TGI's
radix, llama.cpp's prompt cache in host RAM (`--cache-ram`, on by default since late 2025) —
kept as an LRU set of block names. Engines with slots (llama.cpp) also keep the KV of the
last prompt in each slot, which is reused without a restore when the next prompt is sent to
that slot (`id_slot`): for them the index also keeps each slot's last prompt.

Memory is bounded: at most `capacity` names in a replica's LRU and `capacity` in its slots
together. The index is updated on dispatch and forgotten when a replica restarts, reloads or
leaves.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Iterable, Mapping
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
    """How many leading blocks of a prompt a replica probably holds, on which slot (for
    per-slot caches; None for shared ones), and when what that slot (or shared cache) holds
    was last used — a use counter, 0 for never: on a miss, the least recently used content
    is the cheapest to overwrite."""

    blocks: int
    slot: int | None = None
    used: int = 0


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
        #: When each shared cache was last sent a prompt (a use counter).
        self._shared_used: dict[str, int] = {}
        self._slots: dict[str, _Slots] = {}
        self._uses = 0

    def record(self, replica_id: str, names: BlockNames, slot: int | None = None) -> None:
        """`names` were just sent to `replica_id` (on `slot`, for a per-slot cache)."""
        self._uses += 1
        self._shared_used[replica_id] = self._uses
        lru = self._shared.setdefault(replica_id, OrderedDict())
        # deepest block first, so the first block is the freshest: eviction takes a prompt's
        # tail before its head, and what remains is still a prefix (as engines evict leaves)
        for name in reversed(names):
            lru[name] = None
            lru.move_to_end(name)
        while len(lru) > self.capacity:
            lru.popitem(last=False)
        if slot is not None:
            slots = self._slots.setdefault(replica_id, _Slots())
            slots.used[slot] = self._uses
            # the slots share one more `capacity` evenly
            share = max(self.capacity // len(slots.used), 1)
            slots.names[slot] = names[:share]
            for other, kept in slots.names.items():
                if len(kept) > share:
                    slots.names[other] = kept[:share]

    def hit(self, replica_id: str, names: BlockNames, free_slots: Iterable[int] = ()) -> CacheHit:
        """The best hit for `names` on `replica_id`, and the free slot to send it to: the
        one whose own KV shares the longest prefix (ties: the least recently used slot,
        whose content is worth least, then the lowest index). `used` is when the replica's
        cache was last sent a prompt: on a miss, the least recently used replica is the
        cheapest to overwrite."""
        lru: Mapping[int, None] = self._shared.get(replica_id) or {}
        n = 0
        for name in names:  # chained names: the first miss ends the prefix
            if name not in lru:
                break
            n += 1
        used = self._shared_used.get(replica_id, 0)
        slots = self._slots.get(replica_id)
        if slots is None:
            return CacheHit(n, min(free_slots, default=None), used)
        best: tuple[int, int, int] | None = None
        for slot in free_slots:
            key = (-_common(names, slots.names.get(slot, ())), slots.used.get(slot, 0), slot)
            if best is None or key < best:
                best = key
        if best is None:
            return CacheHit(n, None, used)
        return CacheHit(max(n, -best[0]), best[2], used)

    def forget(self, replica_id: str) -> None:
        """The replica's cache is gone (restart, reload, removal)."""
        self._shared.pop(replica_id, None)
        self._shared_used.pop(replica_id, None)
        self._slots.pop(replica_id, None)

    def size(self, replica_id: str) -> int:
        """Names held for `replica_id` (for tests and the memory bound)."""
        slots = self._slots.get(replica_id)
        in_slots = sum(len(n) for n in slots.names.values()) if slots is not None else 0
        return len(self._shared.get(replica_id, ())) + in_slots
