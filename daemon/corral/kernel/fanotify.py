"""The fanotify ABI as corral uses it (FAN_REPORT_DFID_NAME: each report
names a directory by its file handle, and an entry in it), and the file
handles it reports by.

The wrappers raise OSError; parse_events() is pure (bytes in, tuples out).
"""
from __future__ import annotations

import ctypes as ct
import os
import struct

FAN_CLOEXEC, FAN_NONBLOCK = 0x1, 0x2
FAN_REPORT_DIR_FID, FAN_REPORT_NAME = 0x400, 0x800
FAN_MARK_ADD, FAN_MARK_REMOVE, FAN_MARK_ONLYDIR = 0x1, 0x2, 0x8
FAN_MOVED_TO, FAN_CREATE, FAN_Q_OVERFLOW, FAN_ONDIR = 0x80, 0x100, 0x4000, 0x40000000
FAN_MODIFY, FAN_CLOSE_WRITE = 0x2, 0x8
FAN_EVENT_ON_CHILD = 0x08000000          # a directory mark: events on its children too
FAN_EVENT_INFO_TYPE_DFID_NAME = 2
AT_EMPTY_PATH = 0x1000
FILEID_KERNFS = 0xfe                     # a cgroup2 directory's handle: its 64-bit id

META = struct.Struct("<IBBHQii")         # struct fanotify_event_metadata
_INFO = struct.Struct("<BBH")            # struct fanotify_event_info_header
_FID = struct.Struct("<Ii")              # struct file_handle: handle_bytes, handle_type
HANDLE_MAX = 128                         # MAX_HANDLE_SZ

_libc = ct.CDLL(None, use_errno=True)
_libc.fanotify_init.argtypes = [ct.c_uint, ct.c_uint]
_libc.fanotify_mark.argtypes = [ct.c_int, ct.c_uint, ct.c_uint64, ct.c_int, ct.c_char_p]


class Handle(ct.Structure):              # struct file_handle with room for any handle
    _fields_ = [("handle_bytes", ct.c_uint32), ("handle_type", ct.c_int32),
                ("f_handle", ct.c_ubyte * HANDLE_MAX)]


def _err(what: str) -> OSError:
    e = ct.get_errno()
    return OSError(e, f"{what}: {os.strerror(e)}")


def init(flags: int, event_f_flags: int) -> int:
    fd = _libc.fanotify_init(flags, event_f_flags)
    if fd < 0:
        raise _err("fanotify_init")
    return fd


def mark(fan_fd: int, flags: int, mask: int, dir_fd: int) -> None:
    """Add or remove a mark on the directory open at `dir_fd`."""
    if _libc.fanotify_mark(fan_fd, flags, mask, dir_fd, None) != 0:
        raise _err("fanotify_mark")


# -- file handles ------------------------------------------------------------------------
def _fsid(fd: int) -> bytes:
    buf = ct.create_string_buffer(120)          # struct statfs; f_fsid at offset 56 (x86-64, arm64)
    if _libc.fstatfs(fd, buf) != 0:
        raise _err("fstatfs")
    return buf.raw[56:64]


def file_handle(dir_fd: int, name: str = "", flags: int = 0) -> tuple[int, bytes]:
    """(handle type, handle) of `name` in `dir_fd` (never through a symlink
    unless flags say AT_SYMLINK_FOLLOW), or of `dir_fd` itself with
    AT_EMPTY_PATH and no name."""
    h = Handle()
    h.handle_bytes = HANDLE_MAX
    mount_id = ct.c_int()
    if _libc.name_to_handle_at(dir_fd, os.fsencode(name), ct.byref(h), ct.byref(mount_id),
                               flags) != 0:
        raise _err("name_to_handle_at")
    return h.handle_type, bytes(h.f_handle[:h.handle_bytes])


def handle_key(fd: int) -> tuple[bytes, int, bytes]:
    """(fsid, handle type, handle) of an open directory: what fanotify reports."""
    htype, handle = file_handle(fd, "", AT_EMPTY_PATH)
    return (_fsid(fd), htype, handle)


def entry_key(parent_fd: int, name: str, st) -> tuple:
    """What an entry is, beyond its inode number (reused at once by ext4 after
    a delete): its file handle (inode and generation), not following a symlink;
    (dev, ino, ctime) where the filesystem has no handles."""
    try:
        htype, handle = file_handle(parent_fd, name)
    except OSError:
        return (st.st_dev, st.st_ino, st.st_ctime_ns)
    return (st.st_dev, htype, handle)


def open_by_handle(mount_fd: int, handle_type: int, handle: bytes, flags: int) -> int:
    """An fd for the object a handle names, on the filesystem of `mount_fd`."""
    h = Handle()
    h.handle_bytes, h.handle_type = len(handle), handle_type
    ct.memmove(h.f_handle, handle, len(handle))
    fd = _libc.open_by_handle_at(mount_fd, ct.byref(h), flags)
    if fd < 0:
        raise _err("open_by_handle_at")
    return fd


# -- reports -----------------------------------------------------------------------------
def parse_events(data: bytes):
    """fanotify records -> (mask, pid, key or None, name or None); key as
    handle_key() makes it. A short or malformed tail ends the parse."""
    off = 0
    while off + META.size <= len(data):
        ev_len, _vers, _, meta_len, mask, _fd, pid = META.unpack_from(data, off)
        if ev_len < META.size:
            break
        key = name = None
        i = off + meta_len
        while i + _INFO.size <= off + ev_len:
            itype, _, ilen = _INFO.unpack_from(data, i)
            if ilen < _INFO.size:
                break
            if itype == FAN_EVENT_INFO_TYPE_DFID_NAME and ilen >= 20:
                fsid = data[i + 4:i + 12]
                hbytes, htype = _FID.unpack_from(data, i + 12)
                key = (fsid, htype, data[i + 20:i + 20 + hbytes])
                raw = data[i + 20 + hbytes:i + ilen]
                name = os.fsdecode(raw.split(b"\0", 1)[0])
            i += ilen
        yield mask, pid, key, name
        off += ev_len
