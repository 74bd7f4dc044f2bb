"""The broker's CPU by kind of JVM thread, between two snapshots.

    python3 bench/broker_threads.py snap PID FILE
    python3 bench/broker_threads.py diff BEFORE AFTER REQUESTS NAME

`snap` records each thread's CPU time (user + system, /proc/PID/task/*/stat);
`diff` prints one line: NAME, then µs of broker CPU per request spent by
its request threads (network and request handlers), the JIT compiler, the
garbage collector and everything else. A thread that began between the
snapshots counts from zero.
"""
import json
import os
import re
import sys

KINDS = [
    ("requests", re.compile(r"^data-plane-kaf")),  # names are cut to 15 characters
    ("compiler", re.compile(r"^C[12] CompilerThre")),
    ("GC", re.compile(r"^(GC Thread|G1 )")),
]


def snap(pid):
    threads = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                stat = f.read()
        except FileNotFoundError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        threads[tid] = [name, int(fields[11]) + int(fields[12])]
    return threads


def main():
    if sys.argv[1] == "snap":
        with open(sys.argv[3], "w") as f:
            json.dump(snap(sys.argv[2]), f)
        return
    before, after = (json.load(open(p)) for p in sys.argv[2:4])
    requests, name = int(sys.argv[4]), sys.argv[5]
    tick = os.sysconf("SC_CLK_TCK")
    spent = {kind: 0 for kind, _ in KINDS}
    spent["other"] = 0
    for tid, (thread, ticks) in after.items():
        delta = ticks - before.get(tid, [thread, 0])[1]
        kind = next((k for k, pattern in KINDS if pattern.search(thread)), "other")
        spent[kind] += delta
    per = {k: v * 1e6 / tick / max(requests, 1) for k, v in spent.items()}
    total = sum(per.values())
    parts = ", ".join(f"{k} {v:.1f}" for k, v in per.items())
    print(f"{name}: broker {total:.1f} µs of CPU per request by thread: {parts}")


if __name__ == "__main__":
    main()
