"""Upstream faults, on every host: the emulator resets mid-stream, corrupts a frame's CRC, cuts a
frame short, answers 5xx or 429, stalls past the route timeout, trickles a byte at a time, or
sends a response larger than any buffer on the way (emulator directives, `emulator/src/directives.rs`).

Each case checks what the client got (a clean error, a terminal exception, or the whole answer),
and that billing, concurrency slots and budget reservations come out exactly right: the usage
record against the emulator's ledger, the key's budget against the record, no slot left held.
"""

from __future__ import annotations

import json
import socket
import ssl
import struct
import time
import zlib
from dataclasses import dataclass

import pytest

import harness
import pricing_oracle
from conftest import HAIKU, plugin_config, redis_for
from test_bedrock_api import Observed, ledger_usage, record_usage
from test_request_hardening import assert_next_request_succeeds, connect

FAULT_KEY = "tg-faults-key"


def fault_config(port: int) -> dict:
    cfg = plugin_config(port)
    cfg["api_keys"].append({"id": "faults", "sha256": harness.sha256_hex(FAULT_KEY), "models": ["*"],
                            "limits": {"budget": {"usd": "50", "period": "total"},
                                       "max_concurrent_requests": 4, "requests_per_minute": 100000}})
    return cfg


@pytest.fixture(scope="module")
def faulty(request, workdir, emulator, tls_dir, host_kind):
    gw = harness.start_gateway(host_kind, workdir / host_kind / "faults", fault_config(emulator.port), emulator.port,
                               tls_dir, concurrency=1, name="faults", redis=redis_for(request, host_kind))
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def timeout_gateway(request, workdir, emulator, tls_dir, host_kind, faulty):
    """Envoy with a 1 s route timeout; Spin has no route timeout, so there it is the same gateway."""
    if host_kind != "envoy":
        yield faulty
        return
    gw = harness.start_gateway("envoy", workdir / "envoy" / "faults-timeout", fault_config(emulator.port),
                               emulator.port, tls_dir, concurrency=1, name="faults-timeout", route_timeout="1s")
    yield gw
    gw.stop()


# ------------------------------------------------------------------ the client's side


@dataclass
class Got:
    status: int
    headers: dict
    body: bytes
    # The response ended as HTTP says it should (content-length reached, or the last chunk).
    clean_end: bool


def post(gw, op: str, text: str, max_tokens: int, timeout: float = 30) -> Got:
    """One request on a raw connection, read until the server ends or breaks the response."""
    body = json.dumps({"messages": [{"role": "user", "content": [{"text": text}]}],
                       "inferenceConfig": {"maxTokens": max_tokens}}).encode()
    head = (f"POST /model/claude-fast/{op} HTTP/1.1\r\nhost: gateway.test\r\ncontent-type: application/json\r\n"
            f"x-api-key: {FAULT_KEY}\r\ncontent-length: {len(body)}\r\nconnection: close\r\n\r\n").encode()
    data = b""
    with connect(gw, timeout) as s:
        s.sendall(head + body)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(1 << 20)
            except (OSError, ssl.SSLError):
                break
            if not chunk:
                break
            data += chunk
    head_bytes, _, rest = data.partition(b"\r\n\r\n")
    lines = head_bytes.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        n, _, v = line.partition(":")
        headers[n.strip().lower()] = v.strip()
    status = int(lines[0].split()[1]) if lines[0].startswith("HTTP/") else 0
    if headers.get("transfer-encoding") == "chunked":
        out, clean = b"", False
        while rest:
            size_line, sep, rest = rest.partition(b"\r\n")
            if not sep:
                break
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                clean = True
                break
            if len(rest) < size + 2:
                out += rest[:size]
                break
            out, rest = out + rest[:size], rest[size + 2:]
        return Got(status, headers, out, clean)
    length = int(headers.get("content-length", -1))
    return Got(status, headers, rest[:length] if length >= 0 else rest, length >= 0 and len(rest) >= length)


def frames(stream: bytes) -> tuple[list[tuple[dict, bytes]], str | None, int]:
    """EventStream messages (string headers, payload), the first error, and bytes left over."""
    out, at = [], 0
    while len(stream) - at >= 16:
        total, hlen, pcrc = struct.unpack(">III", stream[at:at + 12])
        if zlib.crc32(stream[at:at + 8]) != pcrc:
            return out, "prelude CRC", len(stream) - at
        if len(stream) - at < total:
            break
        msg = stream[at:at + total]
        if zlib.crc32(msg[:-4]) != struct.unpack(">I", msg[-4:])[0]:
            return out, "message CRC", len(stream) - at
        headers, h = {}, msg[12:12 + hlen]
        while h:
            n = h[0]
            name, kind = h[1:1 + n].decode(), h[1 + n]
            h = h[2 + n:]
            if kind == 7:
                ln = struct.unpack(">H", h[:2])[0]
                headers[name], h = h[2:2 + ln].decode(), h[2 + ln:]
            else:
                break
        out.append((headers, msg[12 + hlen:-4]))
        at += total
    return out, None, len(stream) - at


def deltas_text(output: int, events: int, first: int) -> str:
    """The text of the first `first` content deltas the emulator serves for `output` tokens over
    `events` deltas (emulator `Plan::deltas`: words `w0 w1 …`, spread as evenly as possible)."""
    base, extra = divmod(output, events)
    words = sum(base + (i < extra) for i in range(first))
    return " ".join(f"w{i}" for i in range(words))


# ------------------------------------------------------------------ what was billed


def usage(gw) -> dict:
    status, _, body = gw.request("GET", "/usage", None, {"x-api-key": FAULT_KEY})
    assert status == 200
    return json.loads(body)


class Books:
    """The key's budget and slots before a case; after it, the budget must have moved by
    exactly the case's record, and no slot may be held."""

    def __init__(self, gw, emulator):
        self.gw = gw
        self.seen = Observed(gw, emulator)
        self.spent = usage(gw)["budget"]["spent_pico_usd"]

    def settle(self) -> tuple[dict, dict]:
        [entry] = self.seen.ledger(1)
        assert entry["signature_valid"] is True
        [record] = self.seen.records(1)
        assert record["key_id"] == "faults" and record["forwarded"] is True
        assert record["request_id"] == dict(entry["headers"])["x-request-id"]
        u = usage(self.gw)
        assert u["budget"]["spent_pico_usd"] - self.spent == record["cost_pico_usd"], (u, record)
        assert u["concurrent_requests"]["used"] == 0, u
        time.sleep(0.2)
        assert len(self.seen.emulator.ledger()) - self.seen.ledger_start == 1
        return entry, record


def assert_billed_delivered_text(record: dict, entry: dict, text: str):
    """A stream cut short bills what it delivered: its input (the request size, as the emulator
    counts it too) and its text at 4 bytes a token."""
    assert record["usage_source"] == "estimated", record
    assert record["input_tokens"] == entry["usage"]["input_tokens"] == -(-record["request_bytes"] // 4)
    assert record["output_tokens"] == -(-len(text.encode()) // 4), (record, text)
    assert record["cost_pico_usd"] == pricing_oracle.cost_pico_usd(HAIKU, record_usage(record)) > 0


def assert_billed_as_reported(record: dict, entry: dict):
    assert record["usage_source"] == "reported", record
    assert record_usage(record) == ledger_usage(entry)
    assert record["cost_pico_usd"] == pricing_oracle.cost_pico_usd(HAIKU, ledger_usage(entry)) > 0


# ------------------------------------------------------------------ the cases


def test_reset_mid_stream(faulty, emulator):
    books = Books(faulty, emulator)
    got = post(faulty, "converse-stream", "[[emu:output=6]] [[emu:events=6]] [[emu:reset-after=2]]", 6)
    assert got.status == 200 and not got.clean_end, "the client must see the stream break, not end"
    msgs, error, _ = frames(got.body)
    assert error is None and not any(h.get(":message-type") == "exception" for h, _ in msgs)
    entry, record = books.settle()
    assert entry["error_type"] == "Reset" and entry["content_events_sent"] == 2
    # Billed: the text the gateway read, at least what the client got and at most what Bedrock
    # sent. A reset can overtake the frames just before it: Envoy then passes them neither
    # through the filter nor to the client; the Spin component may have read a chunk that its
    # failing response no longer hands the client (README "Differs between hosts").
    delivered = "".join(json.loads(p)["delta"]["text"] for h, p in msgs if h[":event-type"] == "contentBlockDelta")
    sent = [deltas_text(6, 6, n) for n in range(3)]
    assert delivered in sent, delivered
    billable = [-(-len(t) // 4) for t in sent[sent.index(delivered):]]
    if faulty.kind == "envoy":
        billable = billable[:1]
    assert record["output_tokens"] in billable, (record, delivered)
    assert_billed_delivered_text(record, entry, sent[[-(-len(t) // 4) for t in sent].index(record["output_tokens"])])
    assert_next_request_succeeds(faulty, emulator)


def test_reset_mid_body_of_a_non_streamed_answer(faulty, emulator):
    """Bedrock generated the whole answer before sending it: the estimate is billed."""
    books = Books(faulty, emulator)
    got = post(faulty, "converse", "[[emu:output=6]] [[emu:reset-after=20]]", 30)
    # The response breaks: after its head, or (Spin, when the failure overtakes the head) before.
    assert got.status in (200, 0) and not got.clean_end, got
    if faulty.kind == "envoy":
        assert got.status == 200
    entry, record = books.settle()
    assert entry["error_type"] == "Reset"
    assert record["usage_source"] == "estimated" and record["output_tokens"] == 30, record
    assert record["input_tokens"] == -(-record["request_bytes"] // 4)
    assert record["cost_pico_usd"] == pricing_oracle.cost_pico_usd(HAIKU, record_usage(record))
    assert_next_request_succeeds(faulty, emulator)


def test_corrupt_crc(faulty, emulator):
    """The frames reach the client as Bedrock sent them: its SDK rejects the corrupt one. What
    the gateway could read before it is billed."""
    books = Books(faulty, emulator)
    got = post(faulty, "converse-stream", "[[emu:output=6]] [[emu:events=6]] [[emu:corrupt-crc=3]]", 6)
    assert got.status == 200 and got.clean_end
    msgs, error, _ = frames(got.body)
    assert error == "message CRC" and len(msgs) == 3
    entry, record = books.settle()
    assert entry["error_type"] == "CorruptCrc"
    assert_billed_delivered_text(record, entry, deltas_text(6, 6, 2))
    assert_next_request_succeeds(faulty, emulator)


def test_truncated_frame(faulty, emulator, tls_dir):
    """Bedrock's body ends cleanly inside a frame: the gateway must not end the client's response
    cleanly too, or an SDK takes the cut stream for a whole one (boto3 ends its iteration
    silently, without the metadata event)."""
    books = Books(faulty, emulator)
    got = post(faulty, "converse-stream", "[[emu:output=6]] [[emu:events=6]] [[emu:truncate=4]]", 6)
    assert got.status == 200
    msgs, error, _ = frames(got.body)
    # Envoy passes every whole frame, then resets; Spin's failing response can lose the last
    # whole frames still on their way (README "Differs between hosts").
    assert error is None and (len(msgs) == 4 if faulty.kind == "envoy" else 1 <= len(msgs) <= 4), msgs
    assert not got.clean_end, "a stream cut inside a frame must reach the client as a broken response"
    entry, record = books.settle()
    assert entry["error_type"] == "TruncatedFrame"
    assert_billed_delivered_text(record, entry, deltas_text(6, 6, 3))
    # What an SDK makes of it: an error, not the end of a stream.
    from conftest import bedrock_client
    client = bedrock_client(faulty, tls_dir, FAULT_KEY)
    resp = client.converse_stream(modelId="claude-fast", inferenceConfig={"maxTokens": 6}, messages=[
        {"role": "user", "content": [{"text": "[[emu:output=6]] [[emu:events=6]] [[emu:truncate=4]]"}]}])
    events = []
    with pytest.raises(Exception) as broken:
        for event in resp["stream"]:
            events.append(next(iter(event)))
    assert "metadata" not in events, events
    assert "ended prematurely" in str(broken.value) or "IncompleteRead" in repr(broken.value), repr(broken.value)
    assert_next_request_succeeds(faulty, emulator)


@pytest.mark.parametrize("directive,status,kind", [
    ("[[emu:error=500:InternalServerException]]", 500, "InternalServerException"),
    ("[[emu:error=503:ServiceUnavailableException]]", 503, "ServiceUnavailableException"),
    ("[[emu:error=529:ModelNotReadyException]]", 529, "ModelNotReadyException"),
    ("[[emu:throttle]]", 429, "ThrottlingException"),
])
@pytest.mark.parametrize("op", ["converse", "converse-stream"])
def test_upstream_errors_reach_the_client_unbilled(faulty, emulator, directive, status, kind, op):
    books = Books(faulty, emulator)
    got = post(faulty, op, directive, 50)
    assert (got.status, got.headers.get("x-amzn-errortype")) == (status, kind)
    assert isinstance(json.loads(got.body)["message"], str)
    entry, record = books.settle()
    assert entry["status"] == status
    assert (record["status"], record["usage_source"], record["cost_pico_usd"]) == (status, "none", 0)
    assert_next_request_succeeds(faulty, emulator)


def test_stall_past_the_route_timeout(timeout_gateway, emulator):
    """Envoy (route timeout 1 s) ends the stream and resets Bedrock: the client sees the stream
    break, and what was delivered is billed. Spin has no route timeout: the stream resumes and
    is billed as reported."""
    gw = timeout_gateway
    books = Books(gw, emulator)
    got = post(gw, "converse-stream", "[[emu:output=4]] [[emu:events=4]] [[emu:stall=2500]] [[emu:stall-after=1]]", 4)
    assert got.status == 200
    entry, record = books.settle()
    if gw.kind == "envoy":
        assert not got.clean_end
        assert entry["client_disconnected"] is True and entry["content_events_sent"] == 1
        assert_billed_delivered_text(record, entry, deltas_text(4, 4, 1))
    else:
        assert got.clean_end and entry["stream_completed"] is True
        assert_billed_as_reported(record, entry)
    assert_next_request_succeeds(gw, emulator)


@pytest.mark.parametrize("op", ["converse", "converse-stream"])
def test_slow_trickle(faulty, emulator, op):
    books = Books(faulty, emulator)
    got = post(faulty, op, "[[emu:output=3]] [[emu:events=3]] [[emu:trickle=1]]", 3)
    assert got.status == 200 and got.clean_end
    if op == "converse":
        assert json.loads(got.body)["usage"]["outputTokens"] == 3
    else:
        msgs, error, left = frames(got.body)
        assert error is None and left == 0 and msgs[-1][0][":event-type"] == "metadata"
    entry, record = books.settle()
    assert_billed_as_reported(record, entry)
    assert_next_request_succeeds(faulty, emulator)


def test_a_stream_larger_than_any_buffer(faulty, emulator):
    """Frames of 3 MB each (the padding Bedrock adds, made large), 18 MB in all: more than
    Envoy's buffer limits and the meter's JSON cap; the client gets every byte, the usage is read."""
    books = Books(faulty, emulator)
    got = post(faulty, "converse-stream", "[[emu:output=3]] [[emu:events=3]] [[emu:pad=3000000]]", 3, timeout=60)
    assert got.status == 200 and got.clean_end
    msgs, error, left = frames(got.body)
    assert error is None and left == 0 and len(got.body) > 15_000_000
    assert json.loads(msgs[-1][1])["usage"]["outputTokens"] == 3
    entry, record = books.settle()
    assert_billed_as_reported(record, entry)
    assert_next_request_succeeds(faulty, emulator)


def test_an_answer_larger_than_the_meter_reads(faulty, emulator):
    """A 9 MB answer passes whole; past the meter's 8 MiB JSON cap its usage is not read, so it
    is billed its estimate (Bedrock generated it whole)."""
    books = Books(faulty, emulator)
    got = post(faulty, "converse", "[[emu:output=3]] [[emu:pad=9000000]]", 40, timeout=60)
    assert got.status == 200 and got.clean_end
    assert json.loads(got.body)["usage"]["outputTokens"] == 3 and len(got.body) > 9_000_000
    entry, record = books.settle()
    assert record["usage_source"] == "estimated" and record["output_tokens"] == 40, record
    assert record["cost_pico_usd"] == pricing_oracle.cost_pico_usd(HAIKU, record_usage(record))
    assert_next_request_succeeds(faulty, emulator)


def test_a_hang_up_before_the_answer(faulty, emulator):
    books = Books(faulty, emulator)
    got = post(faulty, "converse-stream", "[[emu:hang-up]]", 20)
    assert got.status == 503
    entry, record = books.settle()
    assert entry["error_type"] == "HangUp"
    assert record["usage_source"] == "estimated" and record["output_tokens"] == 20
    assert_next_request_succeeds(faulty, emulator)
