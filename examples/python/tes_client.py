#!/usr/bin/env python3
"""A TES client in Python (nats-py), speaking only JSON.

It watches every event on the bus (tes.evt.>), rotates through the durable
command stream (TES_COMMANDS) with a Tes-Reply-To header and reads the
outcome there, signs a payload by request/reply, rolls back, and tries a
second rollback (refused: a `rejected` event). It prints one JSON summary
line and exits 0 when every event it saw was JSON with
Content-Type: application/json, 1 otherwise.

    pip install nats-py
    python3 examples/python/tes_client.py nats://127.0.0.1:4222

The message shapes are the JSON Schemas in schemas/ (command.rotate.json,
reply.rotate.json, event.envelope.json, ...).
"""

import asyncio
import json
import sys
import uuid

import nats

SUPERVISOR = "0x1001"
VERSION_MANAGEMENT = "0x6001"


async def main(url: str) -> int:
    nc = await nats.connect(url)
    js = nc.jetstream()
    events, not_json = [], []

    async def on_event(msg):
        content_type = (msg.headers or {}).get("Content-Type")
        try:
            envelope = json.loads(msg.data)
        except ValueError:
            not_json.append(msg.subject)
            return
        if content_type != "application/json":
            not_json.append(f"{msg.subject} ({content_type})")
        kind = next(iter(envelope["body"]))
        events.append({"subject": msg.subject, "kind": kind, "thread": envelope["thread"]})

    await nc.subscribe("tes.evt.>", cb=on_event)

    async def durable(verb: str, body: dict) -> dict:
        """A command the stream stores first; its outcome comes to our inbox."""
        inbox = nc.new_inbox()
        outcome = await nc.subscribe(inbox, max_msgs=1)
        await js.publish(
            f"tes.cmd.{SUPERVISOR}.{verb}",
            json.dumps(body).encode(),
            headers={
                "Content-Type": "application/json",
                "Tes-Reply-To": inbox,
                "Nats-Msg-Id": str(uuid.uuid4()),
            },
        )
        msg = await outcome.next_msg(timeout=10)
        return json.loads(msg.data)

    async def request(verb: str, body: dict) -> dict:
        msg = await nc.request(
            f"tes.cmd.{VERSION_MANAGEMENT}.{verb}",
            json.dumps(body).encode(),
            timeout=5,
            headers={"Content-Type": "application/json"},
        )
        return json.loads(msg.data)

    rotated = await durable("rotate", {"requestedBy": "python-example"})
    signed = await request("sign", {"payload": "hello from python"})
    rolled_back = await durable("rollback", {"requestedBy": "python-example"})
    refused = await durable("rollback", {"requestedBy": "python-example"})
    await asyncio.sleep(1.5)  # let the last events arrive
    await nc.drain()

    summary = {
        "rotated": rotated.get("ok", {}).get("activeVersion") or rotated.get("ok", {}).get("keyVersion"),
        "signedWith": signed.get("ok", {}).get("keyVersion"),
        "signature": signed.get("ok", {}).get("signature"),
        "rolledBack": rolled_back.get("ok", {}).get("keyVersion"),
        "refused": refused.get("err", {}).get("code"),
        "events": len(events),
        "kinds": sorted({e["kind"] for e in events}),
        "notJson": not_json,
    }
    print(json.dumps(summary))
    ok = not not_json and "ok" in rotated and "ok" in signed and "ok" in rolled_back and "err" in refused
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "nats://127.0.0.1:4222")))
