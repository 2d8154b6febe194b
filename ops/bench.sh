#!/usr/bin/env bash
# Every benchmark, then one table: ours, the baseline measured in the same
# run, the ratio, the goal (issue 15) and whether it is met. Each bench's
# own output is kept in target/bench/<name>.txt.
#
#   ops/bench.sh              # all of it, ~10 min on the CI machine kind (release builds first)
#   TES_SOAK_SECS=300 ops/bench.sh   # the five-minute soak row (default 60 s)
#
# The NATS rows need a nats-server >= 2.10 (TES_NATS_SERVER, or on PATH, or
# the one ./tests/run installs into .venv).
set -euo pipefail
cd "$(dirname "$0")/.."
out=target/bench
mkdir -p "$out"
if [ -z "${TES_NATS_SERVER:-}" ] && ! command -v nats-server >/dev/null 2>&1 && [ -x .venv/bin/nats-server ]; then
    export TES_NATS_SERVER=$PWD/.venv/bin/nats-server
fi

run() { # name, cargo bench arguments…
    local name=$1
    shift
    echo "== $name: cargo bench $*" >&2
    cargo bench --quiet "$@" 2>/dev/null | tee "$out/$name.txt" >&2
}

run signing -p tes-version-management --bench signing
run status -p tes-version-management --bench status
run verify -p tes-audit
run gateway -p tes-gateway
run soak -p tes --bench soak

python3 - "$out" <<'EOF'
import re, sys, pathlib
out = pathlib.Path(sys.argv[1])
text = {p.stem: p.read_text() for p in out.glob("*.txt")}

def ratio_row(bench, name):
    """A `row()` line: name, ours/s, baseline name, baseline/s, ratio."""
    for line in text.get(bench, "").splitlines():
        if line.startswith(name):
            m = re.search(r"([\d.]+)/s\s+(.*?)\s+([\d.]+)/s\s+ratio ([\d.]+)", line[len(name):])
            if m:
                return float(m[1]), m[2].strip(), float(m[3]), float(m[4])
    return None

rows = []
def ratio_goal(label, bench, name, goal):
    r = ratio_row(bench, name)
    if r is None:
        rows.append((label, "—", "—", "—", f"≥ {goal}", "not run"))
        return
    ours, base_name, base, ratio = r
    rows.append((label, f"{ours/1e3:.1f} k/s", f"{base_name} {base/1e3:.1f} k/s", f"{ratio:.2f}",
                 f"≥ {goal}", "met" if ratio >= goal else "missed"))

ratio_goal("keyring sign, 256 B", "signing", "keyring sign", 0.9)
ratio_goal("engine, durable signatures, batches of 1000", "signing", "engine: durable", 0.75)
ratio_goal("NATS, writer alone, 256 in flight", "signing", "NATS: durable signatures, writer alone", 0.5)
ratio_goal("NATS, writer + 1 replica", "signing", "NATS: durable signatures, writer + 1", 0.35)
ratio_goal("HTTP bump, 64 in flight", "gateway", "bump-version", 0.5)
for line in text.get("signing", "").splitlines():
    m = re.match(r"NATS: one sign at a time, p50\s+([\d.]+) ms\s+(.*?)\s+([\d.]+) ms\s+([\d.]+)×", line)
    if m:
        rows.append(("one sign at a time over NATS, p50", f"{m[1]} ms", f"{m[2]} {m[3]} ms",
                     f"{m[4]}×", "≤ 2×", "met" if float(m[4]) <= 2 else "missed"))
ratio_goal("NATS, batches of 100, one client (vs its single signs)", "signing", "NATS: batch of 100,", 10)
ratio_goal("NATS, batches of 1000, one client (vs its single signs)", "signing", "NATS: batch of 1000,", 10)

for line in text.get("verify", "").splitlines():
    m = re.match(r"\| (.+?) \| ([\d.]+) k \| ([\d.]+) k \| ([\d.]+) \|", line)
    if m:
        rate = float(m[2]) * 1e3
        rows.append((m[1], f"{rate/1e6:.2f} M events/s", f"raw read {float(m[3])/1e3:.2f} M/s",
                     m[4], "≥ 1 M events/s", "met" if rate >= 1e6 else "missed"))
for line in text.get("status", "").splitlines():
    m = re.match(r"\| status: .*? \| ([\d.]+) ms \|", line)
    if m:
        rows.append(("tes status, 1 M events", f"{m[1]} ms", "—", "—", "< 100 ms",
                     "met" if float(m[1]) < 100 else "missed"))
for line in text.get("soak", "").splitlines():
    m = re.match(r"\| (\d+) \| ([\d.]+) k/s \| ([\d.]+) MiB \| ([\d.]+) MiB \| (-?[\d.]+) B \|", line)
    if m:
        rows.append(("RSS under sustained NATS load", f"{m[3]} → {m[4]} MiB", f"{m[1]} signatures at {m[2]} k/s",
                     f"{m[5]} B/signature", "flat (< 10 B/signature)", "met" if float(m[5]) < 10 else "missed"))

for line in text.get("soak", "").splitlines():
    m = re.match(r"\| (v1 → v2|REFUSED) \| ([\d.]+) ms \| ([\d.]+) ms \| [^|]+\|(?: ([\d.]+) ms \|)?", line)
    if m:
        echo = f"; a bare NATS echo under the same load {m[4]} ms" if m[4] else ""
        rows.append(("longest gap between replies, 2 s after a rotation under load", f"{m[2]} ms",
                     f"the same 2 s before it {m[3]} ms{echo}", "—", "≤ 10 ms",
                     "met" if m[1] != "REFUSED" and float(m[2]) <= 10 else "missed"))

print("\n| what | ours | baseline | ratio | goal | |")
print("|---|---:|---|---:|---|---|")
for r in rows:
    print("| " + " | ".join(r) + " |")

# Where the NATS rows' time goes: CPU per operation of each process, the
# figure that says what bounds them (BENCHMARKS.md, "What bounds the NATS rows").
split = [l.strip() for l in text.get("signing", "").splitlines() if "CPU per operation" in l]
if split:
    print("\nCPU per operation over NATS (nats-server, and the bench process: client + writer [+ replica]):")
    for l in split:
        print("  " + l)
EOF
