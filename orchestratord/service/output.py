"""A task's output as one growing buffer: every token's text, its token index and the
engine's token ids, without an object per token.

The text is kept as UTF-8 in one `bytearray` (its length is what the output cap counts),
the rest in typed arrays: about 20 bytes per token beyond its text, where a list entry per
token cost ~170. Entries are read back (journaling, rebuilding a stream) from any index.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterator
from typing import Any

#: (token index, text, token ids) — one entry, as journaled.
Entry = tuple[int, str, tuple[int, ...]]


class Output:
    __slots__ = ("_at", "_ends", "_id_ends", "_ids", "_text")

    def __init__(self) -> None:
        self._text = bytearray()
        self._ends = array("Q")  # where each entry's text ends in _text
        self._at = array("Q")  # each entry's token index
        self._ids = array("q")  # every entry's token ids, one after another
        self._id_ends = array("Q")  # where each entry's ids end in _ids

    def __len__(self) -> int:
        return len(self._ends)

    @property
    def text_bytes(self) -> int:
        """UTF-8 bytes of text kept."""
        return len(self._text)

    @property
    def footprint(self) -> int:
        """Bytes this buffer holds (what the memory budget counts)."""
        return len(self._text) + 8 * (3 * len(self._ends) + len(self._ids))

    @property
    def last_index(self) -> int | None:
        """The token index of the last entry (None: empty)."""
        return self._at[-1] if self._at else None

    def extend(self, entries: list[Entry], cap: int | None = None) -> bool:
        """Append `entries` (one engine read's, on the hot path) while the text kept is
        under `cap` UTF-8 bytes; whether all of them were kept."""
        text, ends, at, ids, id_ends = self._text, self._ends, self._at, self._ids, self._id_ends
        for index, piece, token_ids in entries:
            if cap is not None and len(text) >= cap:
                return False
            text += piece.encode()
            ends.append(len(text))
            at.append(index)
            if token_ids:
                ids.extend(token_ids)
            id_ends.append(len(ids))
        return True

    def text(self) -> str:
        return self._text.decode()

    def entry(self, i: int) -> Entry:
        """Entry `i` (0-based), in O(1)."""
        ends, id_ends = self._ends, self._id_ends
        begin = ends[i - 1] if i else 0
        id_begin = id_ends[i - 1] if i else 0
        ids = tuple(self._ids[id_begin : id_ends[i]])
        return self._at[i], self._text[begin : ends[i]].decode(), ids

    def columns(self, start: int = 0) -> dict[str, Any]:
        """The entries from `start` on as columns — their text in one string, where each
        ends (in UTF-8 bytes) and their ids in one list — built without a step per entry
        (what the journal writes; `from_columns` reads it back)."""
        text_from = self._ends[start - 1] if start else 0
        ids_from = self._id_ends[start - 1] if start else 0
        return {
            "at": self._at[start:].tolist(),
            "text": self._text[text_from:].decode(),
            "text_from": text_from,
            "ends": self._ends[start:].tolist(),
            "ids": self._ids[ids_from:].tolist(),
            "ids_from": ids_from,
            "id_ends": self._id_ends[start:].tolist(),
        }


def from_columns(columns: dict[str, Any]) -> Iterator[Entry]:
    """The entries `Output.columns` wrote."""
    text, ids = columns["text"].encode(), columns["ids"]
    text_from, ids_from = columns["text_from"], columns["ids_from"]
    begin, id_begin = 0, 0
    for at, end, id_end in zip(columns["at"], columns["ends"], columns["id_ends"], strict=True):
        end, id_end = end - text_from, id_end - ids_from
        yield at, text[begin:end].decode(), tuple(ids[id_begin:id_end])
        begin, id_begin = end, id_end
