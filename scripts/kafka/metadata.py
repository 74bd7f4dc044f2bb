#!/usr/bin/env python3
"""Asks a Kafka broker for its cluster metadata (Metadata v4, plain Kafka
protocol, no client library) and prints what the scripts need.

  metadata.py brokers HOST:PORT [MIN]           print the broker ids; exit 1 below MIN (default 1)
  metadata.py leader HOST:PORT TOPIC PARTITION  print the partition's leader id
  metadata.py leaders HOST:PORT TOPIC           print "partition leader" lines

Exit 1 when the broker does not answer (or answers with too few brokers),
2 on bad arguments.
"""
import socket
import struct
import sys


class Reader:
    def __init__(self, data):
        self.data, self.at = data, 0

    def take(self, fmt):
        value = struct.unpack_from(fmt, self.data, self.at)
        self.at += struct.calcsize(fmt)
        return value[0]

    def string(self):
        n = self.take(">h")
        if n < 0:
            return None
        s = self.data[self.at:self.at + n].decode()
        self.at += n
        return s

    def array(self, item):
        n = self.take(">i")
        return [item() for _ in range(max(n, 0))]


def metadata(address, topics, timeout=3.0):
    host, port = address.rsplit(":", 1)
    client = b"stampede-scripts"
    body = struct.pack(">hhih", 3, 4, 1, len(client)) + client
    body += struct.pack(">i", len(topics))
    for t in topics:
        body += struct.pack(">h", len(t)) + t.encode()
    body += b"\x00"  # allow_auto_topic_creation = false
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        s.sendall(struct.pack(">i", len(body)) + body)
        size = struct.unpack(">i", recv(s, 4))[0]
        r = Reader(recv(s, size))
    r.take(">i")  # correlation id
    r.take(">i")  # throttle time
    brokers = r.array(lambda: (r.take(">i"), r.string(), r.take(">i"), r.string()))
    r.string()  # cluster id
    r.take(">i")  # controller id

    def partition():
        error, index, leader = r.take(">h"), r.take(">i"), r.take(">i")
        r.array(lambda: r.take(">i"))  # replicas
        r.array(lambda: r.take(">i"))  # in-sync replicas
        return index, leader, error

    def topic():
        error, name, _internal = r.take(">h"), r.string(), r.take(">b")
        return name, error, r.array(partition)

    return brokers, r.array(topic)


def recv(s, n):
    data = b""
    while len(data) < n:
        chunk = s.recv(n - len(data))
        if not chunk:
            raise ConnectionError("connection closed")
        data += chunk
    return data


def main(argv):
    if len(argv) < 3 or argv[1] not in ("brokers", "leader", "leaders"):
        print(__doc__, file=sys.stderr)
        return 2
    what, address = argv[1], argv[2]
    try:
        if what == "brokers":
            want = int(argv[3]) if len(argv) > 3 else 1
            brokers, _ = metadata(address, [])
            print(" ".join(str(b[0]) for b in sorted(brokers)))
            return 0 if len(brokers) >= want else 1
        topic = argv[3]
        _, topics = metadata(address, [topic])
        for name, error, partitions in topics:
            if error != 0:
                print(f"topic {name}: error code {error}", file=sys.stderr)
                return 1
            for index, leader, _ in sorted(partitions):
                if what == "leaders":
                    print(index, leader)
                elif index == int(argv[4]):
                    print(leader)
                    return 0 if leader >= 0 else 1
        return 0 if what == "leaders" else 1
    except (OSError, struct.error, ValueError, IndexError) as e:
        print(f"{address}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
