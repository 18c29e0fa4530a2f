#!/usr/bin/env python3
"""A Herald client that Herald did not write: Python's `redis` package plus the procedure of
docs/PROTOCOL.md (wire protocol version 3). Used by crates/herald/tests/interop.rs.

Subcommands (all output is JSON, one object per line, on standard output):

  publish URL NS TOPIC MESSAGES [--node ID] [--protocol V] [--defaults L A D S] [--notify CMD]
      MESSAGES is a JSON array of {"key": str, "data": str | "data_hex": hex, "headers": {..}};
      they are published in one atomic step (one EVALSHA of publish.lua). A message without
      "key" gets a generated one and is deduplicated through the call key. Prints
      {"epoch": int, "results": [{"offset": int, "duplicate": bool}, ...]}, or on a Redis error
      {"error": CODE, "message": text} and exits with status 3.
  read URL NS TOPIC FROM [--chunk N]
      Reads history from offset FROM with read.lua, N entries per call. Prints one object per
      entry, then {"event": "end", "epoch": .., "first": .., "last": ..}.
  subscribe URL NS TOPIC N [--timeout SECS]
      SUBSCRIBEs to the topic's live channel, prints {"event": "subscribed"} once the
      subscription is confirmed, then one {"event": "frame", ...} object per notification, and
      exits after N frames (status 4 if they do not arrive within SECS).

An entry is printed as {"epoch", "offset", "key", "node", "published_at", "headers",
"data_hex", "data"} ("data" only when the payload is UTF-8).

Only the standard library and `redis` are used.
"""

import argparse
import json
import os
import re
import sys
import time

try:
    import redis
except ImportError:  # pragma: no cover - reported to the Rust test
    sys.stderr.write("python module 'redis' is missing; run scripts/test.sh to install it\n")
    sys.exit(5)

PROTOCOL = "3"
LUA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "src", "broker", "lua")
# Defaults for a topic that has no settings hash yet (ARGV[4..7]): the library's defaults.
DEFAULTS = ["100000", "0", "120000", "1048576"]
ENTRY_ID = re.compile(rb"^([0-9]+)-0$")


# -- keys (docs/PROTOCOL.md, "Key layout") ------------------------------------------------

def key(ns, topic, what):
    return "%s:{%s}:%s" % (ns, topic, what)


# -- scripts -------------------------------------------------------------------------------

class Script:
    """SCRIPT LOAD once, then EVALSHA; reload on NOSCRIPT (e.g. after a Redis restart)."""

    def __init__(self, r, name):
        with open(os.path.join(LUA_DIR, name), "rb") as f:
            self.source = f.read()
        self.r = r
        self.sha = r.script_load(self.source)

    def __call__(self, keys, args):
        try:
            return self.r.evalsha(self.sha, len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:
            self.sha = self.r.script_load(self.source)
            return self.r.evalsha(self.sha, len(keys), *keys, *args)


def connect(url):
    # Bytes in, bytes out: payloads are arbitrary bytes.
    return redis.Redis.from_url(url, decode_responses=False, socket_timeout=10)


# -- decoding (docs/PROTOCOL.md, "Stream entries" and "Live notifications") ----------------

def decode_headers(raw):
    if raw == b"":
        return {}
    h = json.loads(raw.decode("utf-8"))
    if not isinstance(h, dict) or not all(isinstance(v, str) for v in h.values()):
        raise ValueError("headers are not a JSON object of strings")
    return h


def entry_json(epoch, offset, key_, node, published_at, headers, data):
    out = {
        "epoch": epoch,
        "offset": offset,
        "key": key_.decode("utf-8"),
        "node": node.decode("utf-8"),
        "published_at": published_at,
        "headers": headers,
        "data_hex": data.hex(),
    }
    try:
        out["data"] = data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    return out


def decode_entry(epoch, last, raw):
    """One XRANGE item -> list of message dicts. One entry holds one publish: fields
    n <node>, t <ms>, m <pieces>, each piece field(key) field(headers) field(data), the i-th at
    offset id + i. A foreign entry yields [] (skipped with a warning)."""
    entry_id, flat = raw[0], raw[1]
    m = ENTRY_ID.match(entry_id)
    first = int(m.group(1)) if m else 0
    if not (1 <= first <= last):
        sys.stderr.write("skipping foreign entry %r\n" % entry_id)
        return []
    if isinstance(flat, dict):
        flat = [x for kv in flat.items() for x in kv]
    if len(flat) != 6 or flat[0] != b"n" or flat[2] != b"t" or flat[4] != b"m":
        sys.stderr.write("skipping entry %r without Herald's fields\n" % entry_id)
        return []
    if not flat[3].isdigit():
        sys.stderr.write("skipping entry %r without Herald's fields\n" % entry_id)
        return []
    node, t, r = flat[1], int(flat[3]), FrameReader(flat[5])
    out = []
    offset = first
    while r.pos < len(r.buf):
        if offset > last:
            sys.stderr.write("entry %r holds messages past the last offset\n" % entry_id)
            break
        try:
            k, h, d = r.field(), r.field(), r.field()
        except ValueError as e:
            out.append({"epoch": epoch, "offset": offset, "corrupt": str(e)})
            break
        try:
            out.append(entry_json(epoch, offset, k, node, t, decode_headers(h), d))
        except (ValueError, UnicodeDecodeError) as e:
            out.append({"epoch": epoch, "offset": offset, "corrupt": str(e)})
        offset += 1
    return out


class FrameReader:
    def __init__(self, buf):
        self.buf, self.pos = buf, 0

    def field(self):
        colon = self.buf.find(b":", self.pos, self.pos + 12)
        if colon < 0:
            raise ValueError("no field length at byte %d" % self.pos)
        digits = self.buf[self.pos:colon]
        if not digits.isdigit():
            raise ValueError("bad field length at byte %d" % self.pos)
        start, end = colon + 1, colon + 1 + int(digits)
        if end > len(self.buf):
            raise ValueError("field at byte %d runs past the end" % self.pos)
        self.pos = end
        return self.buf[start:end]

    def number(self):
        f = self.field()
        if not f.isdigit():
            raise ValueError("%r is not a number" % f)
        return int(f)


def decode_frame(buf, split=None):
    """frame = field("h1") field(epoch) field(first) field(count) field(node) field(t) piece*,
    or a split notification: field("h2") and the same header fields, then the pieces alone as
    the next message on the channel (pass that header's result as `split`).
    Returns a frame dict, or {"event": "header", ...} for an h2 header."""
    r = FrameReader(buf)
    if split is None:
        tag = r.field()
        if tag not in (b"h1", b"h2"):
            raise ValueError("unknown frame version %r" % tag)
        epoch, first, count = r.number(), r.number(), r.number()
        node, t = r.field(), r.number()
        if tag == b"h2":
            if r.pos != len(buf):
                raise ValueError("trailing bytes after a split header")
            return {"event": "header", "epoch": epoch, "first": first, "count": count,
                    "node": node, "t": t, "raw": buf}
    else:
        epoch, first, count = split["epoch"], split["first"], split["count"]
        node, t = split["node"], split["t"]
    entries = []
    for i in range(count):
        k, h, d = r.field(), decode_headers(r.field()), r.field()
        entries.append(entry_json(epoch, first + i, k, node, t, h, d))
    if r.pos != len(buf):
        raise ValueError("trailing bytes after the last message")
    raw = buf if split is None else split["raw"] + buf
    return {"event": "frame", "epoch": epoch, "first": first, "count": count,
            "split": split is not None, "entries": entries, "raw_hex": raw.hex()}


def field(x):
    return str(len(x)).encode() + b":" + x


# -- subcommands ---------------------------------------------------------------------------

def emit(obj):
    sys.stdout.write(json.dumps(obj, sort_keys=True) + "\n")
    sys.stdout.flush()


# At most this many messages per ARGV group, i.e. per stream entry (docs/PROTOCOL.md §6.1).
GROUP = 1000
_generated = [None, 0]  # key prefix, counter


def generated_key(node):
    """A key for a message the caller gave none, like Herald's: <node>.<hex micros>.<hex n>."""
    if _generated[0] is None:
        _generated[0] = "%s.%x" % (node, time.time_ns() // 1000)
    key_ = "%s.%x" % (_generated[0], _generated[1])
    _generated[1] += 1
    return key_


def publish_args(messages, node):
    """ARGV[9..] of publish.lua, protocol 3: N, call key, largest payload size and its index,
    the pieces in groups of up to GROUP messages, then index, key, start, length per message
    with a key of its own. Messages without "key" get a generated key, covered by the call
    key (the first generated one)."""
    groups = [bytearray() for _ in range((len(messages) + GROUP - 1) // GROUP)]
    call_key = b""
    largest = (0, 0)
    keyed = []
    for i, m in enumerate(messages):
        headers = m.get("headers") or {}
        own = "key" in m
        k = (m["key"] if own else generated_key(node)).encode("utf-8")
        h = json.dumps(headers, separators=(",", ":"), sort_keys=True).encode() if headers else b""
        d = bytes.fromhex(m["data_hex"]) if "data_hex" in m else m["data"].encode("utf-8")
        if i == 0 or len(d) > largest[0]:
            largest = (len(d), i)
        g = i // GROUP
        start = len(groups[g])
        # piece = field(key) field(headers) field(payload)
        groups[g] += field(k) + field(h) + field(d)
        if own:
            keyed += [str(i), k, str(start), str(len(groups[g]) - start)]
        elif not call_key:
            call_key = k
    return ([str(len(messages)), call_key, str(largest[0]), str(largest[1])]
            + [bytes(g) for g in groups] + keyed)


def cmd_publish(a):
    r = connect(a.url)
    messages = json.loads(a.messages)
    keys = [key(a.ns, a.topic, w)
            for w in ("meta", "log", "settings", "dedup", "dedup-old", "epochs")]
    argv = [a.protocol, key(a.ns, a.topic, "live"), a.node] + list(a.defaults) + [a.notify]
    argv += publish_args(messages, a.node)
    try:
        reply = Script(r, "publish.lua")(keys, argv)
    except redis.exceptions.ResponseError as e:
        text = str(e)
        code = text.split(" ", 1)[0]
        # redis-py strips the generic "ERR " prefix; coded errors keep their code.
        emit({"error": code if re.fullmatch(r"[A-Z_]+", code) else "ERR", "message": text})
        return 3
    epoch = int(reply[0])
    if len(reply) == 2:
        # {epoch, first}: every message appended, offsets first .. first+N-1.
        first = int(reply[1])
        results = [{"offset": first + i, "duplicate": False} for i in range(len(messages))]
    else:
        # {epoch, offset_1, flag_1, ...}: flag 0 appended, 1 duplicate in `epoch`, else a
        # duplicate whose offset belongs to that older epoch.
        pairs = reply[1:]
        if len(pairs) != 2 * len(messages):
            emit({"error": "REPLY", "message": "unexpected publish reply %r" % (reply,)})
            return 3
        results = []
        for i in range(0, len(pairs), 2):
            flag = int(pairs[i + 1])
            res = {"offset": int(pairs[i]), "duplicate": flag != 0}
            if flag > 1:
                res["epoch"] = flag
            results.append(res)
    emit({"epoch": epoch, "results": results})
    return 0


def cmd_read(a):
    r = connect(a.url)
    read = Script(r, "read.lua")
    meta, log = key(a.ns, a.topic, "meta"), key(a.ns, a.topic, "log")
    epochs_key = key(a.ns, a.topic, "epochs")
    nxt = max(a.from_, 1)
    chunk = max(a.chunk, 1)
    for _ in range(100000):  # bounded: every round advances, or asks for more entries
        epoch, last, first, entries, at_end, history = read([meta, log, epochs_key], [nxt, chunk])
        epoch = None if epoch is None else int(epoch)
        last, first = int(last), int(first)
        if epoch is None:
            break
        # The epoch history: an offset belongs to the newest epoch beginning at or before it.
        starts = sorted((int(history[i]), int(history[i + 1].split(b":")[0]))
                        for i in range(0, len(history), 2))

        def epoch_at(offset):
            found = epoch
            for e, f in starts:
                if f <= offset:
                    found = e
            return found if starts else epoch

        before = nxt
        for raw in entries:
            id_m = ENTRY_ID.match(raw[0])
            entry_epoch = epoch_at(int(id_m.group(1))) if id_m else epoch
            for e in decode_entry(entry_epoch, last, raw):
                e["epoch"] = epoch_at(e["offset"])
                if e["offset"] >= nxt:
                    emit(e)
                    nxt = e["offset"] + 1
            # An entry past a hole (trimmed or foreign offsets) moves the reader on, too.
            m = ENTRY_ID.match(raw[0])
            if m and int(m.group(1)) > nxt:
                nxt = int(m.group(1))
        if int(at_end) == 1 or nxt > last:
            break
        if nxt == before:
            chunk *= 2  # the entry holding `nxt` came back alone: look further
    emit({"event": "end", "epoch": epoch, "first": first, "last": last})
    return 0


def cmd_subscribe(a):
    r = connect(a.url)
    p = r.pubsub()
    channel = key(a.ns, a.topic, "live").encode()
    p.subscribe(channel)
    deadline = time.monotonic() + a.timeout
    confirmed = False
    frames = 0
    header = None  # the header of a split notification whose pieces come next
    while frames < a.n:
        left = deadline - time.monotonic()
        if left <= 0:
            sys.stderr.write("timed out: %d of %d frames\n" % (frames, a.n))
            return 4
        msg = p.get_message(timeout=min(left, 1.0))
        if msg is None:
            continue
        if msg["type"] == "subscribe" and msg["channel"] == channel:
            confirmed = True
            emit({"event": "subscribed", "channel": channel.decode()})
        elif msg["type"] == "message" and confirmed:
            try:
                decoded = decode_frame(msg["data"], header)
                header = None
                if decoded["event"] == "header":
                    header = decoded  # the pieces are the next message
                    continue
                emit(decoded)
            except ValueError as e:
                header = None
                emit({"event": "bad_frame", "reason": str(e), "raw_hex": msg["data"].hex()})
            frames += 1
    p.close()
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("publish")
    p.add_argument("url")
    p.add_argument("ns")
    p.add_argument("topic")
    p.add_argument("messages")
    p.add_argument("--node", default="python-%d" % os.getpid())
    p.add_argument("--protocol", default=PROTOCOL)
    p.add_argument("--defaults", nargs=4, default=DEFAULTS,
                   metavar=("MAX_LEN", "MAX_AGE_MS", "DEDUP_MS", "MAX_SIZE"))
    p.add_argument("--notify", default="PUBLISH")
    p.set_defaults(run=cmd_publish)

    p = sub.add_parser("read")
    p.add_argument("url")
    p.add_argument("ns")
    p.add_argument("topic")
    p.add_argument("from_", metavar="FROM", type=int)
    p.add_argument("--chunk", type=int, default=100)
    p.set_defaults(run=cmd_read)

    p = sub.add_parser("subscribe")
    p.add_argument("url")
    p.add_argument("ns")
    p.add_argument("topic")
    p.add_argument("n", type=int)
    p.add_argument("--timeout", type=float, default=30.0)
    p.set_defaults(run=cmd_subscribe)

    a = ap.parse_args()
    return a.run(a)


if __name__ == "__main__":
    sys.exit(main())
