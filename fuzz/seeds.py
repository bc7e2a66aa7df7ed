#!/usr/bin/env python3
"""Writes the fuzz targets' seed corpora (fuzz/seeds/<target>/): real shapes of every input a
target reads, in that target's input format, so mutations start from what Bedrock, clients and
operators really send. Run it again after changing a target's input format."""

import base64
import binascii
import json
import struct
from pathlib import Path

OUT = Path(__file__).resolve().parent / "seeds"


def frame(headers, payload: bytes) -> bytes:
    """One EventStream message; headers are (name, type, value) with value already encoded."""
    block = b""
    for name, kind, value in headers:
        n = name.encode()
        block += bytes([len(n)]) + n + bytes([kind])
        if kind in (6, 7):
            block += struct.pack(">H", len(value))
        block += value
    total = 16 + len(block) + len(payload)
    prelude = struct.pack(">II", total, len(block))
    out = prelude + struct.pack(">I", binascii.crc32(prelude)) + block + payload
    return out + struct.pack(">I", binascii.crc32(out))


def event(kind: str, payload) -> bytes:
    if not isinstance(payload, bytes):
        payload = json.dumps(payload, separators=(",", ":")).encode()
    return frame([(":event-type", 7, kind.encode()), (":content-type", 7, b"application/json"),
                  (":message-type", 7, b"event")], payload)


CONVERSE_STREAM = [
    ("messageStart", {"role": "assistant", "p": "abc"}),
    ("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "w0 w1"}, "p": "ab"}),
    ("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"reasoningContent": {"text": "hmm"}}}),
    ("contentBlockDelta", {"contentBlockIndex": 1, "delta": {"toolUse": {"input": "{\"a\":1}"}}}),
    ("contentBlockStop", {"contentBlockIndex": 0}),
    ("messageStop", {"stopReason": "end_turn"}),
    ("metadata", {"usage": {"inputTokens": 11, "outputTokens": 4, "totalTokens": 15,
                            "cacheReadInputTokens": 2, "cacheWriteInputTokens": 1},
                  "metrics": {"latencyMs": 12}}),
]

METRICS = {"inputTokenCount": 11, "outputTokenCount": 4, "invocationLatency": 10, "firstByteLatency": 5}

# Each model family's invoke-stream events (the decoded `bytes` of each chunk).
FAMILIES = {
    "anthropic": [
        {"type": "message_start", "message": {"id": "msg", "usage": {"input_tokens": 11, "output_tokens": 1,
                                                                       "cache_read_input_tokens": 0}}},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "w0 w1"}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "t"}},
        {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "{}"}},
        {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 4}},
        {"type": "message_stop", "amazon-bedrock-invocationMetrics": METRICS},
    ],
    "anthropic-text": [{"completion": " w0", "stop_reason": None},
                       {"completion": " w1", "stop_reason": "stop_sequence", "amazon-bedrock-invocationMetrics": METRICS}],
    "llama": [{"generation": "w0", "prompt_token_count": 11, "generation_token_count": 1, "stop_reason": None},
              {"generation": " w1", "prompt_token_count": None, "generation_token_count": 4, "stop_reason": "stop",
               "amazon-bedrock-invocationMetrics": METRICS}],
    "titan": [{"outputText": "w0 w1", "index": 0, "totalOutputTextTokenCount": 4, "completionReason": "FINISH",
               "inputTextTokenCount": 11, "amazon-bedrock-invocationMetrics": METRICS}],
    "mistral": [{"outputs": [{"text": "w0", "stop_reason": None}]},
                {"outputs": [{"text": " w1", "stop_reason": "stop"}], "amazon-bedrock-invocationMetrics": METRICS}],
    "cohere": [{"is_finished": False, "event_type": "text-generation", "text": "w0"},
               {"is_finished": True, "event_type": "stream-end", "finish_reason": "COMPLETE",
                "amazon-bedrock-invocationMetrics": METRICS}],
    "cohere-command": [{"generations": [{"text": "w0 w1"}], "is_finished": True,
                        "amazon-bedrock-invocationMetrics": METRICS}],
    "nova": [{"messageStart": {"role": "assistant"}},
             {"contentBlockDelta": {"delta": {"text": "w0 w1"}, "contentBlockIndex": 0}},
             {"contentBlockStop": {"contentBlockIndex": 0}},
             {"messageStop": {"stopReason": "end_turn"}},
             {"metadata": {"usage": {"inputTokens": 11, "outputTokens": 4}},
              "amazon-bedrock-invocationMetrics": METRICS}],
    "chat-completions": [
        {"id": "c", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"role": "assistant", "content": "w0"}}]},
        {"choices": [{"index": 0, "delta": {"reasoning_content": "r", "tool_calls": [{"function": {"arguments": "{}"}}]}}]},
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
         "usage": {"prompt_tokens": 11, "completion_tokens": 4, "total_tokens": 15},
         "amazon-bedrock-invocationMetrics": METRICS},
    ],
    "deepseek-text": [{"choices": [{"text": "w0 w1", "stop_reason": "stop"}], "amazon-bedrock-invocationMetrics": METRICS}],
    "error": [{"type": "error", "error": {"type": "overloaded_error", "message": "busy"}}],
}

# Non-stream bodies of every shape the meter reads.
JSON_BODIES = {
    "converse": {"output": {"message": {"role": "assistant", "content": [{"text": "w0"}]}}, "stopReason": "end_turn",
                 "usage": {"inputTokens": 11, "outputTokens": 4, "totalTokens": 15}, "metrics": {"latencyMs": 3}},
    "anthropic": {"id": "m", "type": "message", "content": [{"type": "text", "text": "w0"}],
                  "usage": {"input_tokens": 11, "output_tokens": 4, "cache_creation_input_tokens": 1, "cache_read_input_tokens": 2}},
    "llama": {"generation": "w0", "prompt_token_count": 11, "generation_token_count": 4, "stop_reason": "stop"},
    "nova": {"output": {"message": {"content": [{"text": "w0"}]}}, "usage": {"inputTokens": 11, "outputTokens": 4,
                                                                            "cacheReadInputTokenCount": 1}},
    "chat": {"choices": [{"message": {"content": "w0"}}], "usage": {"prompt_tokens": 11, "completion_tokens": 4}},
    "titan-image": {"images": ["iVBORw0KGgo=", "iVBORw0KGgo="]},
    "sdxl": {"result": "success", "artifacts": [{"seed": 1, "base64": "iVBORw0KGgo=", "finishReason": "SUCCESS"}]},
    "error": {"message": "Too many requests"},
}


def record(kind: int, data) -> bytes:
    if not isinstance(data, bytes):
        data = json.dumps(data, separators=(",", ":")).encode()
    return bytes([kind]) + struct.pack("<H", len(data)) + data


CUTS = bytes([1, 7, 13, 64, 3, 29, 2, 101])


def converse_stream_records() -> bytes:
    kinds = {"contentBlockDelta": 1, "metadata": 2}
    return b"".join(record(kinds.get(k, 7), p) for k, p in CONVERSE_STREAM)


def family_records(events) -> bytes:
    return b"".join(record(3, e) for e in events)


def write(target: str, name: str, data: bytes):
    d = OUT / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data)


def main():
    # eventstream: real streams, and a message with every header type.
    converse = b"".join(event(k, p) for k, p in CONVERSE_STREAM)
    write("eventstream", "converse-stream", CUTS + converse)
    for fam, events in FAMILIES.items():
        chunks = b"".join(event("chunk", {"bytes": base64.b64encode(json.dumps(e).encode()).decode(), "p": "ab"})
                          for e in events)
        write("eventstream", f"invoke-stream-{fam}", CUTS + chunks)
    every_type = frame([("t", 0, b""), ("f", 1, b""), ("b", 2, b"\x7f"), ("s", 3, b"\x01\x02"),
                        ("i", 4, b"\x00\x00\x00\x05"), ("l", 5, b"\x00" * 7 + b"\x09"),
                        ("y", 6, b"\x00\xff"), (":event-type", 7, b"chunk"), ("ts", 8, b"\x00" * 7 + b"\x01"),
                        ("u", 9, bytes(range(16)))], b'{"x":1}')
    write("eventstream", "every-header-type", CUTS + every_type)
    exception = frame([(":exception-type", 7, b"throttlingException"), (":content-type", 7, b"application/json"),
                       (":message-type", 7, b"exception")], b'{"message":"slow down"}')
    write("eventstream", "exception", CUTS + converse[:200] + exception)
    write("eventstream", "encoder", b"\x00" * 8 + b'{"a":1}\x01:event-type\x01chunk\x01:message-type\x01event')

    # meter: op, flags, cuts, records (see fuzz/src/lib.rs `response_body`).
    ok_stream = 1 | (0 << 1) | (0 << 3)
    write("meter", "converse-stream", bytes([1, ok_stream]) + CUTS + converse_stream_records())
    for fam, events in FAMILIES.items():
        write("meter", f"invoke-stream-{fam}", bytes([3, ok_stream]) + CUTS + family_records(events))
    write("meter", "stream-exception", bytes([1, ok_stream]) + CUTS + converse_stream_records()[:150]
          + record(5, b"modelStreamErrorException"))
    for name, body in JSON_BODIES.items():
        op = 0 if name == "converse" else 2
        flags = 1 | (1 << 3) | (0x20 if name in ("anthropic", "error") else 0)
        write("meter", f"json-{name}", bytes([op, flags]) + CUTS + record(0, body))
    write("meter", "refused-stream", bytes([1, 1 | (2 << 1) | 0x40]) + CUTS + record(0, JSON_BODIES["error"]))

    # request_body: op, model, cap (u32: bit 0 = a cap, the rest its value), body.
    cap = struct.pack("<I", (50 << 1) | 1)
    bodies = [
        (0, {"messages": [{"role": "user", "content": [{"text": "hi"}]}], "inferenceConfig": {"maxTokens": 5000},
             "additionalModelRequestFields": {"max_tokens": 9000, "thinking": {"budget_tokens": 10, "max_tokens": 7}}}),
        (0, {"messages": [], "serviceTier": {"type": "priority"}, "performanceConfig": {"latency": "optimized"},
             "guardrailConfig": None}),
        (2, {"anthropic_version": "bedrock-2023-05-31", "max_tokens": 10, "max_completion_tokens": 9000,
             "messages": [{"role": "user", "content": "hi"}]}),
        (2, {"inputText": "hi", "textGenerationConfig": {"maxTokenCount": 4096}}),
        (2, {"messages": [], "inferenceConfig": {"max_new_tokens": "many"}}),
        (2, {"prompt": "hi", "max_gen_len": 512, "temperature": 0.5}),
        (2, {"taskType": "TEXT_IMAGE", "imageGenerationConfig": {"numberOfImages": 3}}),
    ]
    for i, (op, body) in enumerate(bodies):
        raw = json.dumps(body).encode()
        write("request_body", f"body-{i}", bytes([op, i]) + cap + raw)
        write("request_body", f"body-{i}-uncapped", bytes([op, i]) + b"\x00\x00\x00\x00" + raw)
    write("request_body", "count-tokens", bytes([4, 0]) + cap
          + json.dumps({"input": {"converse": {"messages": [{"role": "user", "content": [{"text": "hi"}]}],
                                                "inferenceConfig": {"maxTokens": 9000}}}}).encode())
    write("request_body", "escaped-names", bytes([0, 0]) + cap
          + b'{"inferenceConfig":{"max\\u0054okens":9000},"messages":[]}')

    # config: documents as operators write them.
    key = {"id": "team-a", "sha256": "ab" * 32, "models": ["claude-fast", "us.amazon.nova-lite-v1:0"],
           "limits": {"budget": {"usd": "25.00", "period": "daily"}, "requests_per_minute": 60,
                      "tokens_per_minute": 200000, "max_concurrent_requests": 8, "max_output_tokens": 4096,
                      "cut_off_streams": True, "unpriced_options": ["guardrails"],
                      "models": {"claude-fast": {"requests_per_minute": 10, "budget": {"usd": 5, "period": "monthly"}}}}}
    base = {"region": "us-east-1", "upstream_host": "127.0.0.1:9100",
            "aliases": {"claude-fast": "us.anthropic.claude-haiku-4-5-20251001-v1:0",
                        "profile": "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.amazon.nova-lite-v1:0"},
            "api_keys": [key, {"id": "admin", "sha256": "cd" * 32, "models": ["*"]}],
            "credentials": {"type": "inline", "access_key_id": "AKIDEXAMPLE",
                            "secret_access_key": "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
                            "session_token": "IQoJb3JpZ2luX2VjEJr//////////wEaCXVzLWVhc3QtMSJHMEUCIQ=="},
            "max_request_body_bytes": 1048576, "test_hooks": True}
    write("config", "inline", json.dumps(base, indent=1).encode())
    write("config", "environment", json.dumps({**base, "credentials": {"type": "environment"}}).encode())
    write("config", "bedrock-api-key", json.dumps({**base, "credentials": {"type": "bedrock_api_key",
                                                                            "api_key": "ABSKQmVkcm9ja0FQSUtleS1zZWNyZXQ="}}).encode())
    write("config", "instance-metadata", json.dumps({**base, "credentials": {
        "type": "instance_metadata", "endpoint": "http://127.0.0.1:9100", "cluster": "imds"}}).encode())
    write("config", "container", json.dumps({**base, "credentials": {
        "type": "container", "endpoint": "http://127.0.0.1:9100/v2/credentials/fuzz",
        "authorization_token": "container-authorization-token-0123"}}).encode())
    write("config", "envoy", json.dumps({**base, "credentials": {"type": "envoy"}}).encode())
    write("config", "routing-identity-lease", json.dumps({
        **base,
        "aliases": {**base["aliases"],
                    "claude": ["us.anthropic.claude-sonnet-4-5-20250929-v1:0",
                               "global.anthropic.claude-sonnet-4-5-20250929-v1:0"],
                    "claude-canary": [{"model": "us.anthropic.claude-sonnet-4-5-20250929-v1:0", "weight": 90},
                                      {"model": "us.anthropic.claude-opus-4-5-20251101-v1:0", "weight": 10},
                                      "us.anthropic.claude-haiku-4-5-20251001-v1:0"]},
        "api_keys": [key, {"id": "agent", "principals": ["spiffe://t/ns/a/sa/agent"], "models": ["claude"]},
                     {"id": "alice", "jwt": [{"issuer": "https://idp", "email": "a@x"}], "models": ["*"]}],
        "admin_keys": [{"id": "ops", "sha256": "ef" * 32}],
        "lease_seconds": 30,
        "anthropic_betas": ["context-1m-2025-08-07", "interleaved-thinking-2025-05-14"]}).encode())
    write("config", "minimal", json.dumps({"region": "eu-west-1", "api_keys": [{"id": "a", "sha256": "01" * 32, "models": ["*"]}],
                                           "credentials": {"type": "environment"}}).encode())

    # route: method, region, path.
    paths = [
        "/model/claude-fast/converse",
        "/model/us.anthropic.claude-haiku-4-5-20251001-v1%3A0/converse-stream",
        "/model/US.ANTHROPIC.CLAUDE-HAIKU-4-5-20251001-V1:0/invoke?x=1",
        "/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3Ainference-profile%2Fus.amazon.nova-lite-v1%3A0/invoke-with-response-stream",
        "/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A%3Afoundation-model%2Fanthropic.claude-3-haiku-20240307-v1%3A0/converse",
        "/model/arn%3Aaws%3Abedrock%3Aeu-west-1%3A1%3Aapplication-inference-profile%2Fabc/converse",
        "/model/a%2F..%2Fb/converse",
        "/usage",
        "/v1/models",
        "/v1/chat/completions",
        "/v1/messages",
        "/v1/messages/count_tokens",
        "/v1/messages?beta=true",
        "/",
    ]
    for i, p in enumerate(paths):
        write("route", f"path-{i}", bytes([0, 0]) + p.encode())

    # exchange: op, model, budget (u16, micro-USD), cap (u16), status, body kind, max tokens
    # (u16), cuts, response records.
    for name, op, model, records in [
        ("converse-stream", 1, 0, converse_stream_records()),
        ("invoke-stream-anthropic", 3, 0, family_records(FAMILIES["anthropic"])),
        ("invoke-stream-llama", 3, 1, family_records(FAMILIES["llama"])),
        ("invoke-stream-titan", 3, 2, family_records(FAMILIES["titan"])),
        ("invoke-stream-nova", 3, 3, family_records(FAMILIES["nova"])),
        ("invoke-stream-mistral", 3, 4, family_records(FAMILIES["mistral"])),
        ("converse", 0, 0, record(0, JSON_BODIES["converse"])),
        ("invoke-image", 2, 6, record(0, JSON_BODIES["titan-image"])),
    ]:
        for budget in (50, 5000):
            write("exchange", f"{name}-{budget}", bytes([op, model]) + struct.pack("<HH", budget, (40 << 1) | 1)
                  + bytes([0, 0 if op < 2 else 1]) + struct.pack("<H", 100) + CUTS + records)

    translator_seeds()


CHAT = {"model": "claude-fast", "messages": [
    {"role": "system", "content": "be brief"},
    {"role": "user", "content": [{"type": "text", "text": "what is in it?"},
                                 {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "look", "arguments": "{\"q\":\"x\"}"}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "found"}],
    "tools": [{"type": "function", "function": {"name": "look", "description": "d",
                                                 "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}}],
    "tool_choice": "auto", "max_completion_tokens": 100, "temperature": 0.5, "top_p": 0.9, "stop": ["END"],
    "user": "u", "n": 1}

MESSAGES = {"model": "claude-fast", "max_tokens": 64, "temperature": 0.5, "top_k": 5, "stop_sequences": ["END"],
            "metadata": {"user_id": "u"},
            "system": [{"type": "text", "text": "be brief", "cache_control": {"type": "ephemeral"}}],
            "messages": [
                {"role": "user", "content": [
                    {"type": "text", "text": "what is in it?"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0K"}},
                    {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "hi"}}]},
                {"role": "assistant", "content": [
                    {"type": "thinking", "thinking": "hm", "signature": "s"},
                    {"type": "tool_use", "id": "t1", "name": "look", "input": {"q": "x"}}]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "t1", "content": "found", "is_error": True}]},
                {"role": "user", "content": "plain"}],
            "tools": [{"name": "look", "description": "d", "input_schema": {"type": "object"}}],
            "tool_choice": {"type": "tool", "name": "look"},
            "thinking": {"type": "enabled", "budget_tokens": 1024},
            "anthropic_beta": ["interleaved-thinking-2025-05-14"]}

# A ConverseStream with a tool call and reasoning, for the translators.
CONVERSE_STREAM_FULL = [
    ("messageStart", {"role": "assistant", "p": "abc"}),
    ("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"reasoningContent": {"text": "hmm"}}}),
    ("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"reasoningContent": {"signature": "sig"}}}),
    ("contentBlockStop", {"contentBlockIndex": 0}),
    ("contentBlockDelta", {"contentBlockIndex": 1, "delta": {"text": "w0 w1"}}),
    ("contentBlockStop", {"contentBlockIndex": 1}),
    ("contentBlockStart", {"contentBlockIndex": 2, "start": {"toolUse": {"toolUseId": "t1", "name": "look"}}}),
    ("contentBlockDelta", {"contentBlockIndex": 2, "delta": {"toolUse": {"input": "{\"q\":"}}}),
    ("contentBlockDelta", {"contentBlockIndex": 2, "delta": {"toolUse": {"input": "\"x\"}"}}}),
    ("contentBlockStop", {"contentBlockIndex": 2}),
    ("messageStop", {"stopReason": "tool_use"}),
    ("metadata", {"usage": {"inputTokens": 11, "outputTokens": 4, "totalTokens": 15,
                            "cacheReadInputTokens": 2, "cacheWriteInputTokens": 1},
                  "metrics": {"latencyMs": 12}}),
]
CONVERSE_KINDS = {name: i + 1 for i, name in enumerate(
    ["messageStart", "contentBlockStart", "contentBlockDelta", "contentBlockStop", "messageStop", "metadata"])}


def translator_seeds():
    # openai_request: model, body.
    for i, extra in enumerate([{}, {"stream": True, "stream_options": {"include_usage": True}},
                               {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}},
                               {"reasoning_effort": "low", "max_tokens": 10, "seed": 1, "logprobs": False}]):
        write("openai_request", f"chat-{i}", bytes([i]) + json.dumps({**CHAT, **extra}).encode())
    write("openai_request", "simplest", bytes([1]) + b'{"model":"m","messages":[{"role":"user","content":"hi"}]}')
    # anthropic_request: selector (bit 0 count tokens, rest the model), beta choice, body.
    for i, extra in enumerate([{}, {"stream": True}, {"service_tier": "auto", "container": "c"}]):
        for model in (0, 1):
            body = json.dumps({**MESSAGES, **extra}).encode()
            write("anthropic_request", f"messages-{i}-model-{model}", bytes([model << 1, i]) + body)
            write("anthropic_request", f"count-{i}-model-{model}", bytes([(model << 1) | 1, i]) + body)
    write("anthropic_request", "own-beta-header", bytes([0, 0x80, 20]) + b"context-1m-2025-08-07"[:20]
          + b'{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}')
    # translate_stream: selector (route, 0x10 stream, 0x20 include_usage, 0x40 cut), status,
    # error type, cuts, records (fuzz/src/lib.rs `translator_body`).
    converse_stream = b"".join(record(CONVERSE_KINDS[k], p) for k, p in CONVERSE_STREAM_FULL)
    claude_stream = b"".join(record(7, e) for e in FAMILIES["anthropic"])
    for route in (0, 2):
        for flags in (0x10, 0x30, 0x70):
            write("translate_stream", f"converse-stream-{route}-{flags:x}", bytes([route | flags, 0, 0]) + CUTS + converse_stream)
        write("translate_stream", f"converse-stream-exception-{route}", bytes([route | 0x10, 0, 0]) + CUTS
              + converse_stream[:120] + record(8, b"modelStreamErrorException"))
        write("translate_stream", f"converse-{route}", bytes([route, 0, 0]) + CUTS + record(0, JSON_BODIES["converse"]))
        write("translate_stream", f"refused-{route}", bytes([route | 0x10, 6, 2]) + CUTS + record(0, JSON_BODIES["error"]))
    write("translate_stream", "invoke-stream", bytes([1 | 0x10, 0, 0]) + CUTS + claude_stream)
    write("translate_stream", "invoke-stream-cut", bytes([1 | 0x50, 0, 0]) + CUTS + claude_stream)
    write("translate_stream", "invoke-stream-error", bytes([1 | 0x10, 0, 0]) + CUTS + claude_stream[:80]
          + record(7, FAMILIES["error"][0]))
    write("translate_stream", "invoke", bytes([1, 0, 0]) + CUTS + record(0, JSON_BODIES["anthropic"]))
    write("translate_stream", "refused-invoke", bytes([1, 5, 0]) + CUTS + record(0, JSON_BODIES["error"]))


if __name__ == "__main__":
    main()
