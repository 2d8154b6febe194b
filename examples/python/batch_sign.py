#!/usr/bin/env python3
"""Batch signing from Python (nats-py), JSON only.

Signs 1000 manifests in one request on tes.cmd.0x6001.sign_batch (item 500
pinned to a version that does not exist, so it fails alone), checks every
signature with Python's own hmac and the secret given, sends the same batch
again with the same Nats-Msg-Id (a retry: the same results come back, marked
replayed, nothing signed twice), and verifies the whole batch in one
request on tes.cmd.0x6001.verify_batch. Prints one JSON summary line.

    pip install nats-py
    python3 examples/python/batch_sign.py nats://127.0.0.1:4222 "$VERSION_SIGNING_KEY"
"""

import asyncio
import hashlib
import hmac
import json
import sys
import uuid

import nats

SUBJECT = "tes.cmd.0x6001.{}"
N = 1000
PINNED_TO_NOTHING = 500


async def main(url: str, secret: str) -> int:
    nc = await nats.connect(url)
    items = [{"payload": json.dumps({"manifest": i})} for i in range(N)]
    items[PINNED_TO_NOTHING]["keyVersion"] = "v9"
    batch_id = str(uuid.uuid4())

    async def call(verb: str, body: dict, msg_id: str) -> dict:
        msg = await nc.request(
            SUBJECT.format(verb),
            json.dumps(body).encode(),
            timeout=30,
            headers={"Content-Type": "application/json", "Nats-Msg-Id": msg_id},
        )
        return json.loads(msg.data)

    first = await call("sign_batch", {"items": items}, batch_id)
    results = first["ok"]["results"]
    again = (await call("sign_batch", {"items": items}, batch_id))["ok"]["results"]

    in_order, matches, failed = 0, 0, []
    for i, (item, result) in enumerate(zip(items, results)):
        if "err" in result:
            failed.append({"index": i, "code": result["err"]["code"]})
            continue
        signed = result["ok"]
        in_order += signed["payload"] == item["payload"]
        expected = hmac.new(secret.encode(), item["payload"].encode(), hashlib.sha256).hexdigest()
        matches += signed["signature"] == expected
    same_again = all(
        ("err" in a and "err" in b)
        or ("ok" in a and "ok" in b and a["ok"]["signature"] == b["ok"]["signature"]
            and a["ok"]["seq"] == b["ok"]["seq"] and b["ok"]["replayed"])
        for a, b in zip(results, again)
    )
    checks = [
        {"payload": r["ok"]["payload"], "signature": r["ok"]["signature"],
         "keyVersion": r["ok"]["keyVersion"]}
        for r in results if "ok" in r
    ]
    checks[0]["signature"] = "0" * 64  # one that must not verify
    verified = (await call("verify_batch", {"items": checks}, str(uuid.uuid4())))["ok"]["results"]
    await nc.drain()

    print(json.dumps({
        "results": len(results),
        "inOrder": in_order,
        "hmacMatches": matches,
        "failed": failed,
        "seqs": sorted({r["ok"]["seq"] for r in results if "ok" in r}).__len__(),
        "retrySame": same_again and len(again) == len(results),
        "verified": sum(1 for v in verified if "ok" in v and v["ok"]["valid"]),
        "invalid": sum(1 for v in verified if "ok" in v and not v["ok"]["valid"]),
        "batchId": batch_id,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1], sys.argv[2])))
