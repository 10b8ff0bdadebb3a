"""The best two Python processes can do on pipeline (b): a hand-written shuffle, no framework.

    .venv/bin/python bench/shuffle_floor.py               # 4,000,000 words, 5 rounds
    .venv/bin/python bench/shuffle_floor.py --words 2000000 --rounds 3

Pipeline (b) (``bench/distributed.py``: words from 16 seeded parts -> ``key_distribute(word)``
-> ``stateful_map(running count)`` -> a counting sink) written by hand three ways, each in
fresh processes that start, import and then wait for a "go" so that only the work is timed:

- **1 process**: one loop over all 16 parts (generate a batch of 2,048 words, count each
  word in a dict, sum the counts);
- **2 processes, shuffled**: each generates the words of its 8 parts, splits every batch by
  the owner of each word (malstrom's C router, one cache lookup per word), pickles the other
  process's share once per batch (keys, values and positions, as the framework does) and
  writes it to a Unix socket pair without blocking; between batches it reads what arrived,
  unpickles it and counts it. One thread, no locks, no credits, no epochs, no snapshots:
  the least a data-parallel shuffle costs in CPython, where a record can only reach another
  process as bytes;
- **2 processes, independent** (the ceiling): each runs the 1-process loop over its 8 parts
  and nothing crosses.

And in the same rounds the framework itself: ``MultiProcessRuntime`` at parallelism 1 and 2
on pipeline (b), net of the start-up (a 0-word run). Every result is checked against a
plain count. Ratios are medians of per-round ratios; the shuffled/1 ratio is the floor's
answer to "how much can a second worker give when every record is this cheap and half of
them cross", to set beside the framework's p2/p1.
"""

from __future__ import annotations

import argparse
import functools
import os
import pickle
import random
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import distributed as d

from malstrom import MultiProcessRuntime
from malstrom.keyed._route import split

BATCH = 2048
_LEN = struct.Struct("<Q")


def owner_of() -> dict[str, int]:
    """Which process owns each word (stable across processes: a byte sum, not ``hash``)."""
    return {w: sum(w.encode()) % 2 for w in d.pool()}


def parts_words(parts: list[int], n: int) -> Any:
    """Batches of words of ``parts``, in turn, exactly as ``WordsPart`` generates them."""
    pool = d.pool()
    left = {p: d.share(n, d.PARTS, p) for p in parts}
    rngs = {p: random.Random(d.PART_SEED + p) for p in parts}
    while left:
        for p in list(left):
            k = min(BATCH, left[p])
            start = d.share(n, d.PARTS, p) - left[p]
            yield rngs[p].choices(pool, k=k), start
            left[p] -= k
            if not left[p]:
                del left[p]


def count(counts: dict[str, int], words: list[str]) -> tuple[int, int]:
    """The stateful map and the sink: each word's running count; (records, sum of counts)."""
    get = counts.get
    total = 0
    for w in words:
        c = get(w, 0) + 1
        counts[w] = c
        total += c
    return len(words), total


def run_alone(parts: list[int], n: int) -> tuple[int, int]:
    counts: dict[str, int] = {}
    recs = total = 0
    for words, _ in parts_words(parts, n):
        a, b = count(counts, words)
        recs += a
        total += b
    return recs, total


def run_shuffled(me: int, sock: socket.socket, n: int) -> tuple[int, int]:
    owner = owner_of()
    peer = 1 - me
    counts: dict[str, int] = {}
    recs = total = 0
    out = bytearray()  # framed bytes not yet taken by the socket
    inbuf = bytearray()
    peer_done = False
    sock.setblocking(False)

    def pump(final: bool) -> None:
        nonlocal out, inbuf, peer_done, recs, total
        if out:
            try:
                sent = sock.send(out)
                del out[:sent]
            except BlockingIOError:
                pass
        while True:
            try:
                chunk = sock.recv(1 << 20)
            except BlockingIOError:
                break
            if not chunk:
                raise SystemExit("peer closed early")
            inbuf += chunk
        pos = 0
        while len(inbuf) - pos >= _LEN.size:
            (size,) = _LEN.unpack_from(inbuf, pos)
            if len(inbuf) - pos - _LEN.size < size:
                break
            if size == 0:
                peer_done = True
            else:
                keys, _values, _stamps = pickle.loads(
                    inbuf[pos + _LEN.size : pos + _LEN.size + size]
                )
                a, b = count(counts, keys)
                recs += a
                total += b
            pos += _LEN.size + size
        del inbuf[:pos]

    for words, start in parts_words([p for p in range(d.PARTS) if p % 2 == me], n):
        stamps = list(range(start, start + len(words)))
        parts = split(words, words, words, stamps, owner, [0, 1])
        if type(parts) is int:
            parts = [(parts, words, words, stamps)]
        for w, keys, values, ts in parts:  # type: ignore[union-attr]
            if w == me:
                a, b = count(counts, keys)
                recs += a
                total += b
            else:
                blob = pickle.dumps((keys, values, ts), 5)
                out += _LEN.pack(len(blob))
                out += blob
        pump(False)
    out += _LEN.pack(0)
    while out or not peer_done:
        pump(True)
        if out or not peer_done:
            time.sleep(0.0005)
    del peer
    return recs, total


def child(mode: str, n: int, me: int, fd: int) -> None:
    sys.stdin.readline()  # go
    t0 = time.perf_counter()
    if mode == "alone":
        got = run_alone(list(range(d.PARTS)), n)
    elif mode == "half":
        got = run_alone([p for p in range(d.PARTS) if p % 2 == me], n)
    else:
        got = run_shuffled(me, socket.socket(fileno=fd), n)
    print(f"{time.perf_counter() - t0:.6f} {got[0]} {got[1]}", flush=True)


def timed(mode: str, n: int) -> tuple[float, int, int]:
    """Start the processes of ``mode``, let them go at once; (slowest wall, records, sum)."""
    procs = 1 if mode == "alone" else 2
    a, b = socket.socketpair()
    fds = [a.fileno(), b.fileno()]
    ps = [
        subprocess.Popen(
            [sys.executable, __file__, "--child", mode, str(n), str(i), str(fds[i])],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            pass_fds=fds,
        )
        for i in range(procs)
    ]
    a.close()
    b.close()
    time.sleep(0.5)  # imports done
    for p in ps:
        p.stdin.write("go\n")  # type: ignore[union-attr]
        p.stdin.flush()  # type: ignore[union-attr]
    outs = [p.communicate()[0].split() for p in ps]
    return (
        max(float(o[0]) for o in outs),
        sum(int(o[1]) for o in outs),
        sum(int(o[2]) for o in outs),
    )


def framework(n: int, p: int) -> float:
    tmp = tempfile.mkdtemp()
    out = os.path.join(tmp, "out")
    os.mkdir(out)
    build = functools.partial(d.build_b, n=n, parts=d.PARTS, outdir=out, work=0)
    t0 = time.perf_counter()
    MultiProcessRuntime(build, parallelism=p, max_restarts=0).start().wait()
    wall = time.perf_counter() - t0
    if n and d.read_sinks(out)[:2] != d.expected(n, d.PARTS):
        raise SystemExit(f"framework p={p}: WRONG RESULT")
    return wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--words", type=int, default=4_000_000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        mode, n, me, fd = args.child
        child(mode, int(n), int(me), int(fd))
        return
    n = args.words
    want = d.expected(n, d.PARTS)
    print(f"pipeline (b), {n:,} words, {args.rounds} rounds; load {os.getloadavg()[0]:.2f}")
    res: dict[str, list[float]] = {k: [] for k in ("alone", "shuffled", "half", "fw1", "fw2")}
    for _ in range(args.rounds):
        for mode in ("alone", "shuffled", "half"):
            wall, recs, total = timed(mode, n)
            # Independent processes count their own parts' words (not a key's global count).
            if (recs, total) != want and not (mode == "half" and recs == n):
                raise SystemExit(f"{mode}: WRONG RESULT {(recs, total)}, expected {want}")
            res[mode].append(wall)
        for p in (1, 2):
            res[f"fw{p}"].append(framework(n, p) - framework(0, p))

    def ratio(a: str, b: str) -> float:
        return statistics.median(x / y for x, y in zip(res[a], res[b], strict=True))

    med = {k: statistics.median(v) for k, v in res.items()}
    floor, ceiling = ratio("alone", "shuffled"), ratio("alone", "half")
    scaled, slower = ratio("fw1", "fw2"), ratio("fw1", "alone")
    rows = [
        ("hand-written, 1 process", med["alone"], "1.00"),
        ("hand-written, 2 processes, shuffled (the floor)", med["shuffled"], f"{floor:.2f}x"),
        ("hand-written, 2 processes, independent (the ceiling)", med["half"], f"{ceiling:.2f}x"),
        ("malstrom p=1 (net of start-up)", med["fw1"], ""),
        ("malstrom p=2 (net of start-up)", med["fw2"], f"p2/p1 {scaled:.2f}x"),
    ]
    print("| | wall s (median) | vs 1 process |")
    print("|---|---|---|")
    for name, wall, vs in rows:
        print(f"| {name} | {wall:.3f} | {vs} |")
    print(f"malstrom p=1 / hand-written 1 process: {slower:.2f}; load {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
