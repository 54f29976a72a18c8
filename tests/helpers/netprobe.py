"""Run inside a session: try each network action, print one JSON result per line.

    netprobe.py tcp HOST PORT | udp HOST PORT | raw | icmp
Result: {"action", "target", "ok": bool, "errno": int|None}
"""
import errno
import json
import socket
import sys


def attempt(action, host=None, port=None):
    res = {"action": action, "target": f"{host}:{port}", "ok": False, "errno": None}
    try:
        if action == "tcp":
            fam = socket.AF_INET6 if ":" in host else socket.AF_INET
            s = socket.socket(fam, socket.SOCK_STREAM)
            s.settimeout(5)
            s.connect((host, int(port)))
            s.close()
        elif action == "udp":
            fam = socket.AF_INET6 if ":" in host else socket.AF_INET
            s = socket.socket(fam, socket.SOCK_DGRAM)
            s.sendto(b"corral-probe", (host, int(port)))
            s.close()
        elif action == "udpconnect":
            fam = socket.AF_INET6 if ":" in host else socket.AF_INET
            s = socket.socket(fam, socket.SOCK_DGRAM)
            s.connect((host, int(port)))
            s.send(b"corral-probe")
            s.close()
        elif action == "icmp":
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP)
            s.close()
        elif action == "raw":
            s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP)
            s.close()
        elif action == "sctp":
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM, 132)
            s.close()
        res["ok"] = True
    except OSError as e:
        res["errno"] = e.errno
        res["error"] = errno.errorcode.get(e.errno, str(e.errno))
    return res


def main(argv):
    i = 0
    while i < len(argv):
        action = argv[i]
        if action in ("tcp", "udp", "udpconnect"):
            print(json.dumps(attempt(action, argv[i + 1], argv[i + 2])), flush=True)
            i += 3
        else:
            print(json.dumps(attempt(action)), flush=True)
            i += 1


if __name__ == "__main__":
    main(sys.argv[1:])
