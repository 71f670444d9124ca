"""Host-side layout of scoring requests into packed rows, contexts and prefixes shared.

A scoring request is (context ids, continuation ids); its answer is log p of each
continuation token given everything before it. Requests with the same context (the
choices of one multiple-choice question) become one *item*: the context, then the trie of
the continuations' input tokens (each continuation but its last token, which is only a
target), in depth-first order. Choices " #### 12" (tokens #### 1 2) and " #### 5" (#### 5)
have the inputs "#### 1" and "####": the trie #### -> 1, two nodes, the " ####" shared:

    row:       c0 c1 c2 | ####  1 | ...next item...
    position:   0  1  2 |    3  4 |
    reach:      4  4  4 |    4  4 |
    scored:    "####" at c2 (once for both); "1" at ####, "2" at 1; "5" at ####

In depth-first order a token's descendants are the columns right after it, up to its
`reach` (the last column of its subtree), so one rule gives the attention mask: query q
sees key k iff both are in the same item and k <= q <= reach[k] (plus the sliding window by
position; `tree_attention_mask`). The context runs once, a shared prefix runs once, and a
(column, target) pair that several requests score is projected onto the vocabulary once.
RoPE positions are those of each virtual sequence (context + continuation).

Items are packed first-fit into rows of one width, chosen for the whole request set
(`_best_packing`), so padding stays small and a request set compiles one or two shapes.
Every request is truncated as lm-evaluation-harness truncates it: the last max_len + 1
tokens of context + continuation.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator, Sequence

import numpy as np


def bucket(n: int, max_len: int, smallest: int = 32) -> int:
    """The power of two >= n (at least `smallest`), capped at max_len."""
    size = smallest
    while size < n:
        size *= 2
    return min(size, max_len)


@dataclasses.dataclass
class Item:
    """One context and the continuations scored against it (each >= 1 token)."""
    context: list[int]
    continuations: list[list[int]] = dataclasses.field(default_factory=list)
    owners: list[int] = dataclasses.field(default_factory=list)  # request index per continuation
    prefixes: set[tuple[int, ...]] = dataclasses.field(default_factory=set)  # the trie's nodes

    @property
    def length(self) -> int:  # columns the item takes in a row
        return len(self.context) + len(self.prefixes)

    def added_length(self, continuation: list[int]) -> int:
        inputs = continuation[:-1]
        return sum(tuple(inputs[:i]) not in self.prefixes for i in range(1, len(inputs) + 1))

    def add(self, continuation: list[int], owner: int) -> None:
        inputs = continuation[:-1]
        self.prefixes.update(tuple(inputs[:i]) for i in range(1, len(inputs) + 1))
        self.continuations.append(continuation)
        self.owners.append(owner)

    @property
    def scored(self) -> int:  # distinct (column, target) pairs
        return len(self.prefixes | {tuple(c) for c in self.continuations})


def make_items(requests: Sequence[tuple[Sequence[int], Sequence[int]]], max_len: int) -> list[Item]:
    """(context, continuation) token requests -> items. The context must be non-empty (the
    caller puts the prefix token in front of an empty one). Empty continuations score nothing
    and get no item. Requests with equal (truncated) contexts share an item while it fits in
    max_len columns."""
    by_context: dict[tuple[int, ...], Item] = {}
    items: list[Item] = []
    for index, (context, continuation) in enumerate(requests):
        if not continuation:
            continue
        seq = (list(context) + list(continuation))[-(max_len + 1):]
        n_cont = min(len(continuation), len(seq) - 1)
        ctx, cont = seq[:len(seq) - n_cont], seq[len(seq) - n_cont:]
        item = by_context.get(tuple(ctx))
        if item is None or item.length + item.added_length(cont) > max_len:
            item = by_context[tuple(ctx)] = Item(ctx)
            items.append(item)
        item.add(cont, index)
    return items


@dataclasses.dataclass
class Batch:
    """Arrays for one forward pass, rows [B, W] and scored pairs [B, P], and where each
    request's token log-probs are among the pairs."""
    tokens: np.ndarray     # int32 [B, W]
    positions: np.ndarray  # int32 [B, W]
    items: np.ndarray      # int32 [B, W]: item number inside its row (1, 2, ...), 0 = padding
    reach: np.ndarray      # int32 [B, W]: last column that may attend to this one
    columns: np.ndarray    # int32 [B, P]: column whose prediction is scored
    targets: np.ndarray    # int32 [B, P]: the token it should predict
    requests: list[tuple[int, int, np.ndarray]] = dataclasses.field(default_factory=list)
    # (request index, row, pair indices [n tokens]): its continuation's log-probs, in order


def _pack_rows(items: list[Item], width: int) -> list[list[Item]]:
    """First-fit decreasing into rows of `width` columns. A row with less room than the
    shortest item can take nothing more: it leaves the scan (same rows, and a request set of
    thousands of questions is no longer scanned items x rows)."""
    rows: list[list[Item]] = []
    free: list[int] = []
    open_rows: list[int] = []  # rows that may still take an item, in first-fit order
    shortest = min((it.length for it in items), default=0)
    for item in sorted(items, key=lambda it: -it.length):
        for r in open_rows:
            if item.length <= free[r]:
                break
        else:
            r = len(rows)
            rows.append([])
            free.append(width)
            open_rows.append(r)
        rows[r].append(item)
        free[r] -= item.length
        if free[r] < shortest:
            open_rows.remove(r)
    return rows


def _fill_row(b: Batch, r: int, row: list[Item]) -> None:
    col = 0
    pairs: dict[tuple[int, int], int] = {}  # (column, target) -> pair index in this row

    def pair(column: int, target: int) -> int:
        if (column, target) not in pairs:
            p = pairs[column, target] = len(pairs)
            b.columns[r, p], b.targets[r, p] = column, target
        return pairs[column, target]

    for number, item in enumerate(row, start=1):
        c, start = len(item.context), col
        nodes = sorted(item.prefixes)  # depth-first (pre-order) for a trie of tuples
        end = start + c + len(nodes) - 1
        b.tokens[r, col:col + c] = item.context
        b.positions[r, col:col + c] = np.arange(c)
        b.reach[r, col:col + c] = end
        col += c
        column_of = {node: col + i for i, node in enumerate(nodes)}
        open_nodes: list[tuple[int, ...]] = []  # the path from the root to the current node
        for node in nodes:
            while open_nodes and node[:len(open_nodes[-1])] != open_nodes[-1]:
                b.reach[r, column_of[open_nodes.pop()]] = column_of[node] - 1
            open_nodes.append(node)
            b.tokens[r, column_of[node]] = node[-1]
            b.positions[r, column_of[node]] = c + len(node) - 1
        for node in open_nodes:
            b.reach[r, column_of[node]] = end
        b.items[r, start:end + 1] = number
        for cont, owner in zip(item.continuations, item.owners):
            at = [start + c - 1] + [column_of[tuple(cont[:i])] for i in range(1, len(cont))]
            b.requests.append((owner, r, np.asarray([pair(a, t) for a, t in zip(at, cont)], np.int32)))
        col = end + 1


def _best_packing(items: list[Item], rows_per_batch: int, max_len: int) -> tuple[int, list[list[Item]]]:
    """The row width (a multiple of 16, at least the longest item) that minimises the
    estimated cost of the whole request set, and its rows: cost = batches x rows x width x
    (1 + width / 475). The last factor is attention, whose cost per token grows with the row
    width (fitted on SmolLM2-135M, float32, 2 CPU cores: 2.8 ms/token at width 64, 3.8 at
    256). Wider rows pack more items and waste less on padding; narrower rows attend over less."""
    longest = -(-max(it.length for it in items) // 16) * 16
    candidates = sorted({min(max_len, -(-int(longest * f) // 16) * 16) for f in (1, 1.25, 1.5, 2, 3, 4, 6, 8)})

    def cost(packing: tuple[int, list[list[Item]]]) -> float:
        width, rows = packing
        return -(-len(rows) // rows_per_batch) * rows_per_batch * width * (1 + width / 475)

    return min(((w, _pack_rows(items, w)) for w in candidates), key=cost)


def batches(items: list[Item], rows_per_batch: int, max_len: int, width: int | None = None) -> Iterator[Batch]:
    """Packs items into batches of rows_per_batch rows of one width (_best_packing's unless
    given)."""
    if not items:
        return
    width, rows = (width, _pack_rows(items, width)) if width else _best_packing(items, rows_per_batch, max_len)
    scored = {id(row): sum(it.scored for it in row) for row in rows}
    rows.sort(key=lambda row: -scored[id(row)])  # similar pair counts share a batch
    for start in range(0, len(rows), rows_per_batch):
        chunk = rows[start:start + rows_per_batch]
        pairs = bucket(max(scored[id(row)] for row in chunk), 1 << 30, smallest=8)
        shape, pair_shape = (rows_per_batch, width), (rows_per_batch, pairs)
        # Padding: item 0, reach the last column, so it attends earlier padding (no empty row).
        b = Batch(*(np.zeros(shape, np.int32) for _ in range(3)), np.full(shape, width - 1, np.int32),
                  np.zeros(pair_shape, np.int32), np.zeros(pair_shape, np.int32))
        for r, row in enumerate(chunk):
            _fill_row(b, r, row)
        yield b
