#!/usr/bin/env python3
"""A bad link between two network namespaces, in user space: what `tc qdisc ... netem` does,
for kernels without the sch_netem module (this machine's has none: `tc` answers "Specified
qdisc kind is unknown").

Two TUN devices are made here and moved into the namespaces given; every IP packet one side
sends is handed to the other side's TUN after the impairment of its direction:

  a->b: delay D ms, loss P %, and R % of packets sent D/2 ms early (so they overtake the ones
        before them: reordering, as netem's `reorder`)
  b->a: delivered at once

SIGUSR1 cuts the link (every packet either way is dropped) until SIGUSR2. Counters are
printed on SIGTERM and at exit, one line: `impair: forwarded N dropped M reordered K cut C`.

  impair.py NS_A ADDR_A NS_B ADDR_B --delay-ms 100 --loss 2 --reorder 10 --seed 7
"""
import argparse
import fcntl
import heapq
import os
import random
import select
import signal
import struct
import subprocess
import sys
import time

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000


def tun(name):
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    return fd


def ip(*args):
    subprocess.run(["ip", *args], check=True)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("ns_a")
    p.add_argument("addr_a")
    p.add_argument("ns_b")
    p.add_argument("addr_b")
    p.add_argument("--delay-ms", type=float, default=100)
    p.add_argument("--loss", type=float, default=2)
    p.add_argument("--reorder", type=float, default=10)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--mtu", type=int, default=1500)
    a = p.parse_args()
    rng = random.Random(a.seed)
    suffix = str(os.getpid())
    names = ("fa" + suffix, "fb" + suffix)
    fds = [tun(n) for n in names]
    for name, ns, mine, peer in ((names[0], a.ns_a, a.addr_a, a.addr_b), (names[1], a.ns_b, a.addr_b, a.addr_a)):
        ip("link", "set", name, "netns", ns)
        ip("-n", ns, "link", "set", "lo", "up")
        ip("-n", ns, "addr", "add", mine, "peer", peer, "dev", name)
        ip("-n", ns, "link", "set", name, "mtu", str(a.mtu), "up")

    stats = {"forwarded": 0, "dropped": 0, "reordered": 0, "cut": 0}
    state = {"cut": False}
    signal.signal(signal.SIGUSR1, lambda *_: state.update(cut=True))
    signal.signal(signal.SIGUSR2, lambda *_: state.update(cut=False))

    def report(*_):
        print("impair: " + " ".join(f"{k} {v}" for k, v in stats.items()), flush=True)
        sys.exit(0)

    signal.signal(signal.SIGTERM, report)
    print("impair: ready", flush=True)

    queue = []  # (due, seq, fd, packet)
    seq = 0
    delay = a.delay_ms / 1000.0
    while True:
        timeout = max(0.0, queue[0][0] - time.monotonic()) if queue else 1.0
        try:
            ready, _, _ = select.select(fds, [], [], timeout)
        except InterruptedError:
            ready = []
        now = time.monotonic()
        for fd in ready:
            while True:
                try:
                    pkt = os.read(fd, 65536)
                except BlockingIOError:
                    break
                out = fds[1] if fd == fds[0] else fds[0]
                if state["cut"]:
                    stats["cut"] += 1
                    continue
                due = now
                if fd == fds[0]:
                    if rng.random() * 100 < a.loss:
                        stats["dropped"] += 1
                        continue
                    due = now + delay
                    if rng.random() * 100 < a.reorder:
                        due -= delay / 2
                        stats["reordered"] += 1
                seq += 1
                heapq.heappush(queue, (due, seq, out, pkt))
        now = time.monotonic()
        while queue and queue[0][0] <= now:
            _, _, out, pkt = heapq.heappop(queue)
            if state["cut"]:
                stats["cut"] += 1
                continue
            try:
                os.write(out, pkt)
                stats["forwarded"] += 1
            except OSError:
                stats["dropped"] += 1


if __name__ == "__main__":
    main()
