"""Run inside a session after a workload: what must stay protected, one JSON line
"PROBE {...}". argv: the fake SSH key's path, the port of the host's loopback
service. Each value names what happened (an errno name, "read", "connected")."""
import errno
import json
import socket
import sys


def attempt(fn):
    try:
        fn()
        return "connected"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e)) if e.errno else type(e).__name__


def read_key(path):
    try:
        with open(path) as fh:
            fh.read()
        return "read"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e))


def connect(addr):
    s = socket.socket(socket.AF_INET)
    s.settimeout(5)
    try:
        s.connect(addr)
    finally:
        s.close()


def unlisted_name():
    # Not in any profile: the daemon's resolver refuses it, and were an address
    # known, the connect would be refused.
    connect((socket.gethostbyname("example.com"), 443))


key, port = sys.argv[1], int(sys.argv[2])
print("PROBE " + json.dumps({
    "ssh_key": read_key(key),
    "raw_ip": attempt(lambda: connect(("192.0.2.1", 443))),   # TEST-NET-1: never sent
    "unlisted_name": attempt(unlisted_name),
    "host_loopback": attempt(lambda: connect(("127.0.0.1", port))),
}), flush=True)
