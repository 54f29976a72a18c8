"""bpf/common.h in Python: the one mirror of what corral's BPF programs and
user space share (record and map value layouts, rule kinds, ops, flags).
tests/test_abi.py parses common.h and compares every constant and struct here,
so a change on one side that the other misses fails a test, not a session."""
from __future__ import annotations

import ctypes as ct

u8, u16, u32, u64 = ct.c_uint8, ct.c_uint16, ct.c_uint32, ct.c_uint64

CORRAL_EPERM = 1
AF_UNIX, AF_INET, AF_INET6 = 1, 2, 10

# session_cfg.flags
SESS_NET_ENFORCE = 1 << 0
SESS_FILE_ENFORCE = 1 << 1
SESS_DNS_STEER = 1 << 2

# event.kind
EV_NET, EV_FILE, EV_DNS, EV_RATE = 1, 2, 3, 4
KINDS = {EV_NET: "net", EV_FILE: "file", EV_DNS: "dns", EV_RATE: "rate"}

# event.op for EV_NET
OP_CONNECT4, OP_CONNECT6, OP_SENDMSG4, OP_SENDMSG6, OP_SOCKET = 1, 2, 3, 4, 5
OP_UNIX_CONNECT, OP_UNIX_SENDMSG = 6, 7
NET_OPS = {OP_CONNECT4: "connect", OP_CONNECT6: "connect", OP_SENDMSG4: "sendmsg",
           OP_SENDMSG6: "sendmsg", OP_SOCKET: "socket", OP_UNIX_CONNECT: "unix_connect",
           OP_UNIX_SENDMSG: "unix_sendmsg"}

# rule ids: >= RULE_USER are indexes into the session's compiled rule list
RULE_DEFAULT_DENY, RULE_UNSPECIFIED, RULE_USER = 0, 1, 16
RULE_UNIX_FOREIGN = 2

# event rate limits (bpf/ratelimit.h)
NET_RATE_PER_SEC, NET_RATE_BURST = 200, 400
FILE_RATE_PER_SEC, FILE_RATE_BURST = 100, 200
EVENTS_RINGBUF_PAGES = 64

# event.op for EV_FILE
FOP_OPEN_READ, FOP_OPEN_WRITE, FOP_CREATE, FOP_MKDIR, FOP_MKNOD = 1, 2, 3, 4, 5
FOP_SYMLINK, FOP_LINK, FOP_UNLINK, FOP_RMDIR, FOP_RENAME_FROM = 6, 7, 8, 9, 10
FOP_RENAME_TO, FOP_TRUNCATE, FOP_SETATTR, FOP_UNIX_CONNECT, FOP_TOO_DEEP = 11, 12, 13, 14, 15
FILE_OPS = {FOP_OPEN_READ: "open_read", FOP_OPEN_WRITE: "open_write", FOP_CREATE: "create",
            FOP_MKDIR: "mkdir", FOP_MKNOD: "mknod", FOP_SYMLINK: "symlink", FOP_LINK: "link",
            FOP_UNLINK: "unlink", FOP_RMDIR: "rmdir", FOP_RENAME_FROM: "rename_from",
            FOP_RENAME_TO: "rename_to", FOP_TRUNCATE: "truncate", FOP_SETATTR: "setattr",
            FOP_UNIX_CONNECT: "unix_connect", FOP_TOO_DEEP: "too_deep"}
# the session boundary (issue 11, bpf/file_lsm.c)
FOP_UNIX_SEND, FOP_SIGNAL, FOP_PTRACE, FOP_TRACEME, FOP_SETXATTR, FOP_REMOVEXATTR = 16, 17, 18, 19, 20, 21
FILE_OPS.update({FOP_UNIX_SEND: "unix_send", FOP_SIGNAL: "signal", FOP_PTRACE: "ptrace",
                 FOP_TRACEME: "traceme", FOP_SETXATTR: "setxattr", FOP_REMOVEXATTR: "removexattr"})

# event.rule values for file denials that are not a user rule
RULE_FILE_TOO_DEEP, RULE_FILE_HARDLINK, RULE_FILE_RACE, RULE_FILE_PROTECTED_ANCESTOR = 2, 3, 4, 5
RULE_FILE_UNIX_FOREIGN, RULE_FILE_TASK_FOREIGN = 6, 7

MAX_PORT_RANGES = 16

# file rule bits (rule_val.bits)
(RB_DENY_READ, RB_ALLOW_READ, RB_ALLOW_WRITE, RB_DENY_WRITE, RB_DENY_INODE, RB_ANCESTOR,
 RB_PSEUDO) = (1 << b for b in range(7))
RB_UNIX_ALLOW = 1 << 7


class SessionCfg(ct.Structure):
    _fields_ = [("flags", u32), ("dns_port", u32), ("rate_tokens", u64),
                ("rate_last_ns", u64), ("rate_suppressed", u64)]


class Event(ct.Structure):
    _fields_ = [("ts_ns", u64), ("cgid", u64), ("pid", u32), ("uid", u32),
                ("comm", ct.c_char * 16), ("kind", u8), ("op", u8), ("port", u16),
                ("family", u32), ("rule", u32), ("verdict", u32), ("count", u64),
                ("addr", u8 * 16), ("path", ct.c_char * 256)]


class Lpm4Key(ct.Structure):
    _fields_ = [("prefixlen", u32), ("cg_lo", u32), ("cg_hi", u32), ("addr", u32)]


class Lpm6Key(ct.Structure):
    _fields_ = [("prefixlen", u32), ("cg_lo", u32), ("cg_hi", u32), ("addr", u32 * 4)]


class PortRules(ct.Structure):
    _fields_ = [("n", u32), ("rule", u32 * MAX_PORT_RANGES),
                ("lo", u16 * MAX_PORT_RANGES), ("hi", u16 * MAX_PORT_RANGES)]


class IKey(ct.Structure):
    _fields_ = [("cgid", u64), ("dev", u64), ("ino", u64)]


class PKey(ct.Structure):
    _fields_ = [("cgid", u64), ("hash", u64)]


class RuleVal(ct.Structure):
    _fields_ = [("bits", u32), ("rd_rule", u16), ("wr_rule", u16)]


class FConf(ct.Structure):
    _fields_ = [("seed", u64), ("level_mask", u64)]


class FSess(ct.Structure):
    _fields_ = [("cfg", SessionCfg), ("max_pdepth", u32), ("pad", u32)]


# C struct name -> its mirror (what tests/test_abi.py checks)
STRUCTS = {"session_cfg": SessionCfg, "event": Event, "lpm4_key": Lpm4Key, "lpm6_key": Lpm6Key,
           "port_rules": PortRules, "ikey": IKey, "pkey": PKey, "rule_val": RuleVal,
           "fconf": FConf, "fsess": FSess}

EVENT_SIZE = ct.sizeof(Event)


def unpack_event(raw: bytes) -> Event:
    """A ring-buffer record as the struct it is (short records are zero-padded)."""
    buf = bytes(raw[:EVENT_SIZE]).ljust(EVENT_SIZE, b"\0")
    return Event.from_buffer_copy(buf)
