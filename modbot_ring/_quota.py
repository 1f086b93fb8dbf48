"""The ``quota`` algorithm's placement: every unit of the key space has a written owner.

Why a written table rather than a function of the pod set: when ownership must be a pure
function of the pods and removing a pod may move only that pod's keys, each slot ranks
the pods in one fixed order, so a pod's share is a sum of random pieces (peak/mean 1.026
at best over 100 pods with 2**20 slots; see :mod:`modbot_ring.hashring`). Here the
previous table is an input instead, as in AnchorHash, MementoHash or Redis Cluster's
16,384 slots: the key space is cut into UNITS units, each pod is owed an exact number of
them, and a change of pods or weights moves the fewest units that settle the new counts.

* **Counts**: Webster/Sainte-Laguë apportionment of UNITS seats by weight (highest
  averages ``w / (k + 1/2)``, ties by a hash of the name). A divisor method, so it is
  *population monotone*: adding a pod or raising a pod's weight never gives another pod
  more units, removing a pod or lowering its weight never takes units from another.
  Each pod gets its exact share to within about one unit: 1/65,536 of the key space.
* **Moves**: a pod keeps its units that come first in ORDER up to its new count and
  releases the rest; released units and those of removed pods are dealt, in ORDER, to
  the pods still owed units (in name order). So units move only from pods that lost
  count to pods that gained it: exactly ``sum(max(0, new - old))`` units move, the
  minimum, and with the monotonicity above adding a pod moves units only *to* it,
  removing one only *its* units, and nothing moves between the other pods.
* **Determinism**: integers and correctly rounded float divisions only (see
  :func:`seats`), no dict or set ordering: the same previous table and the same change
  give the same table on every machine and Python version.
* **Cost**: one pass over the 65,536 units and a heap of pods; independent of weight.

The history lives in the table snapshot (``assignment``: the owners in ORDER, 16-bit
little-endian, zlib, base64; pods are numbered from 1 in name order). A table read back
is checked to give every pod exactly its count, so a snapshot cannot carry a skewed
table.
"""

from __future__ import annotations

import array
import base64
import binascii
import hashlib
import heapq
import sys
import zlib
from collections import Counter
from collections.abc import Sequence
from functools import lru_cache
from itertools import repeat
from operator import and_, mul

UNIT_BITS = 16
UNITS = 1 << UNIT_BITS
_MASK = UNITS - 1
# ORDER visits the units a Fibonacci-hashing stride apart (an odd multiplier is a
# bijection mod 2**16): neighbouring positions in ORDER are far apart in the key space.
_STEP = 40_503
_STEP_INV = pow(_STEP, -1, UNITS)
_TIE_SEED = b"modbot-ring/quota/v1\x00"
_ENCODED_MAX = 4 * UNITS  # a base64 assignment longer than this is refused unread


@lru_cache(maxsize=1)
def order() -> array.array[int]:
    """Position -> unit: the fixed order in which units are kept, released and dealt."""
    return array.array("H", map(and_, map(mul, range(UNITS), repeat(_STEP)), repeat(_MASK)))


@lru_cache(maxsize=1)
def position_of_unit() -> array.array[int]:
    """Unit -> position in :func:`order` (its inverse)."""
    return array.array("H", map(and_, map(mul, range(UNITS), repeat(_STEP_INV)), repeat(_MASK)))


def tie_ranks(names: Sequence[str]) -> list[int]:
    """Each node's place in a fixed, name-hashed order: which of two equal averages
    wins a seat. Hashing, not the name itself, so that ``gateway-0`` is not always
    the pod that gets the odd unit."""
    keyed = sorted(
        (hashlib.blake2b(_TIE_SEED + n.encode(), digest_size=8).digest(), n) for n in names
    )
    rank = {n: r for r, (_, n) in enumerate(keyed)}
    return [rank[n] for n in names]


def seats(scaled: Sequence[int], ranks: Sequence[int], total: int = UNITS) -> list[int]:
    """Webster apportionment of ``total`` seats to integer weights ``scaled``.

    The seats are the ``total`` highest averages ``w / (k + 0.5)`` (k = 0, 1, ...), ties
    going to the lower rank. Averages are compared as doubles: for weights below 2**31
    and k below 2**17 two different fractions ``2w / (2k + 1)`` differ by more than
    2**-48 relatively, and division is correctly rounded (IEEE 754), so the comparison
    is exact and the same everywhere. Starts from the lower Hamilton quotas and swaps
    seats until no average outside beats one inside: a handful of steps per pod."""
    n = len(scaled)
    if n == 0:
        return []
    whole = sum(scaled)
    count = [w * total // whole for w in scaled]
    have = sum(count)
    nxt: list[tuple[float, int, int, int]] = []  # (-average of the next seat, rank, i, count)
    last: list[tuple[float, int, int, int]] = []  # (average of the last seat, -rank, i, count)

    def push(i: int) -> None:
        c, w = count[i], scaled[i]
        heapq.heappush(nxt, (-(w / (c + 0.5)), ranks[i], i, c))
        if c:
            heapq.heappush(last, (w / (c - 0.5), -ranks[i], i, c))

    for i in range(n):
        push(i)

    def top(heap: list[tuple[float, int, int, int]]) -> tuple[float, int, int, int] | None:
        while heap and heap[0][3] != count[heap[0][2]]:
            heapq.heappop(heap)  # stale: that pod's count changed since
        return heap[0] if heap else None

    while True:
        best, worst = top(nxt), top(last)
        assert best is not None
        if have < total:
            i = best[2]
            count[i] += 1
            have += 1
            push(i)
        elif have > total:
            assert worst is not None
            j = worst[2]
            count[j] -= 1
            have -= 1
            push(j)
        elif worst is not None and (-best[0], -best[1]) > (worst[0], worst[1]):
            i, j = best[2], worst[2]  # an outside average beats an inside one: swap
            count[i] += 1
            count[j] -= 1
            push(i)
            push(j)
        else:
            return count


def assign(
    previous: Sequence[int] | None, carry: Sequence[int], owed: Sequence[int]
) -> array.array[int]:
    """Owners in ORDER (1-based node numbers) for nodes owed ``owed`` units each.

    ``previous`` is the old table in ORDER (old node numbers), ``carry`` maps an old
    node number to its new one (0: gone). ``None``: a first table, dealt in ORDER."""
    out = array.array("H", bytes(2 * UNITS))
    free: list[int] = []
    if previous is None:
        free = list(range(UNITS))
        kept = [0] * (len(owed) + 1)
    else:
        kept = [0] * (len(owed) + 1)
        quota = [0, *owed]
        for pos, old in enumerate(previous):
            new = carry[old]
            if new and kept[new] < quota[new]:
                kept[new] += 1
                out[pos] = new
            else:
                free.append(pos)
    start = 0
    for node, want in enumerate(owed, 1):
        need = want - kept[node]
        if need > 0:
            for pos in free[start : start + need]:
                out[pos] = node
            start += need
    assert start == len(free), "the counts must add up to UNITS"
    return out


def by_unit(in_order: array.array[int]) -> array.array[int]:
    """Owners indexed by unit (what lookups read), from owners in ORDER."""
    return array.array("H", map(in_order.__getitem__, position_of_unit()))


def encode(in_order: array.array[int]) -> str:
    data = array.array("H", in_order)
    if sys.byteorder == "big":
        data.byteswap()
    return base64.b64encode(zlib.compress(data.tobytes(), 9)).decode("ascii")


def decode(text: object, scaled: Sequence[int], ranks: Sequence[int]) -> array.array[int]:
    """The owners in ORDER from a snapshot's ``assignment``; ``ValueError`` unless it is
    well-formed and gives every node exactly its count for these weights."""
    if not isinstance(text, str) or len(text) > _ENCODED_MAX:
        raise ValueError("assignment: expected a base64 string of at most 256 KiB")
    try:
        packed = base64.b64decode(text.encode("ascii"), validate=True)
        inflate = zlib.decompressobj()
        raw = inflate.decompress(packed, 2 * UNITS + 1)  # a zip bomb stops here
    except (binascii.Error, zlib.error, UnicodeEncodeError) as exc:
        raise ValueError(f"assignment: not base64 zlib data ({exc})") from None
    if len(raw) != 2 * UNITS or inflate.unconsumed_tail or not inflate.eof:
        raise ValueError(f"assignment: expected {UNITS} 16-bit owners")
    owners = array.array("H")
    owners.frombytes(raw)
    if sys.byteorder == "big":
        owners.byteswap()
    n = len(scaled)
    tally = Counter(owners)  # C speed
    if max(tally) > n:
        raise ValueError(f"assignment: names node {max(tally)} of {n}")
    if tally[0]:
        raise ValueError(f"assignment: {tally[0]} units have no owner")
    if [tally[i] for i in range(1, n + 1)] != seats(scaled, ranks):
        raise ValueError("assignment: the owners' counts do not match the weights")
    return owners
