"""Routing with the OpenAI and Anthropic SDKs (README "Routing"), on both hosts: a request on a
translated route falls back as a Bedrock-native one does — each attempt translated for its own
target, only the answering attempt billed, the record in the client's dialect. The alias
`fallback` is conftest.ROUTED_ALIASES' chain Haiku → Sonnet → Nova Lite."""

from __future__ import annotations

import pricing_oracle
import pytest
from conftest import HAIKU, NOVA_LITE, SONNET
from test_anthropic import client_for
from test_bedrock_api import Observed, ledger_usage, record_usage
from test_openai import sdk
from test_routing import entries_of


def assert_fell_back(seen: Observed, dialect: str, operation: str, skipped: list[dict]):
    """One request: Haiku throttled, Sonnet answered and alone is billed, at Sonnet's price."""
    [record] = seen.records(1)
    entries = entries_of(seen.ledger(2), record)
    assert [(e["model_id"], e["status"]) for e in entries] == [(HAIKU, 429), (SONNET, 200)]
    assert {e["operation"] for e in entries} == {operation}
    assert (record["dialect"], record["model"], record["model_id"]) == (dialect, "fallback", SONNET)
    assert record["attempts"] == [
        {"model_id": HAIKU, "status": 429, "fallback": "throttled"},
        {"model_id": SONNET, "status": 200},
    ]
    assert record.get("skipped", []) == skipped
    assert record_usage(record) == ledger_usage(entries[-1])
    assert record["cost_pico_usd"] == pricing_oracle.cost_pico_usd(SONNET, ledger_usage(entries[-1])) > 0


@pytest.mark.parametrize("stream", [False, True], ids=["message", "stream"])
def test_openai_chat_completions_fall_back(gateway, emulator, stream):
    seen = Observed(gateway, emulator)
    messages = [{"role": "user", "content": f"[[emu:fail=throttle@{HAIKU}]] [[emu:output=5]]"}]
    oai = sdk(gateway)
    if stream:
        chunks = list(oai.chat.completions.create(model="fallback", messages=messages, stream=True,
                                                  stream_options={"include_usage": True}))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert chunks[-1].usage.completion_tokens == 5
    else:
        out = oai.chat.completions.create(model="fallback", messages=messages)
        text = out.choices[0].message.content
        assert out.usage.completion_tokens == 5
    assert text == "w0 w1 w2 w3 w4"
    assert_fell_back(seen, "openai", "converse-stream" if stream else "converse", [])


@pytest.mark.parametrize("stream", [False, True], ids=["message", "stream"])
def test_anthropic_messages_fall_back(gateway, emulator, stream):
    """Claude speaks the Messages API on InvokeModel: Nova, which cannot take that body, is left
    out of the plan, as on the invoke route."""
    seen = Observed(gateway, emulator)
    claude = client_for(gateway)
    messages = [{"role": "user", "content": f"[[emu:fail=throttle@{HAIKU}]] [[emu:output=4]]"}]
    if stream:
        with claude.messages.stream(model="fallback", max_tokens=64, messages=messages) as s:
            text = "".join(s.text_stream)
            final = s.get_final_message()
        assert final.usage.output_tokens == 4
    else:
        msg = claude.messages.create(model="fallback", max_tokens=64, messages=messages)
        text = msg.content[0].text
        assert msg.usage.output_tokens == 4
    assert text == "w0 w1 w2 w3"
    assert_fell_back(seen, "anthropic", "invoke-with-response-stream" if stream else "invoke",
                     [{"model_id": NOVA_LITE, "reason": "body_format"}])
