"""corral.kernel.fanotify: parsing fanotify's records (FAN_REPORT_DFID_NAME)
from crafted bytes, and the file-handle keys namewatch compares them with.
No root, no fanotify group: name_to_handle_at needs no privilege."""
import os
import struct

import pytest

from corral.kernel import fanotify as fan

FSID = bytes(range(8))
HANDLE = b"\x11\x22\x33\x44\x55\x66\x77\x88"


def info(itype: int, body: bytes) -> bytes:
    """struct fanotify_event_info_header + body, padded to 4 bytes as the kernel does."""
    n = 4 + len(body)
    pad = -n % 4
    return struct.pack("<BBH", itype, 0, n + pad) + body + b"\0" * pad


def dfid_name(name: bytes, fsid=FSID, htype=1, handle=HANDLE) -> bytes:
    return info(fan.FAN_EVENT_INFO_TYPE_DFID_NAME,
                fsid + struct.pack("<Ii", len(handle), htype) + handle + name + b"\0")


def event(mask: int, pid: int, *infos: bytes) -> bytes:
    body = b"".join(infos)
    return fan.META.pack(fan.META.size + len(body), 3, 0, fan.META.size, mask, -1, pid) + body


def test_create_with_dfid_name():
    data = event(fan.FAN_CREATE, 4242, dfid_name(b".mcp.json"))
    assert list(fan.parse_events(data)) == [(fan.FAN_CREATE, 4242, (FSID, 1, HANDLE), ".mcp.json")]


def test_several_events_in_one_read():
    data = (event(fan.FAN_CREATE | fan.FAN_ONDIR, 1, dfid_name(b".vscode"))
            + event(fan.FAN_MOVED_TO, 2, dfid_name(b".gitmodules", htype=0x81, handle=b"\1" * 12)))
    got = list(fan.parse_events(data))
    assert got == [(fan.FAN_CREATE | fan.FAN_ONDIR, 1, (FSID, 1, HANDLE), ".vscode"),
                   (fan.FAN_MOVED_TO, 2, (FSID, 0x81, b"\1" * 12), ".gitmodules")]


def test_overflow_has_no_info():
    assert list(fan.parse_events(event(fan.FAN_Q_OVERFLOW, 0))) == \
        [(fan.FAN_Q_OVERFLOW, 0, None, None)]


def test_other_info_types_are_skipped():
    fid = info(1, FSID + struct.pack("<Ii", len(HANDLE), 1) + HANDLE)     # FAN_EVENT_INFO_TYPE_FID
    data = event(fan.FAN_CREATE, 7, fid, dfid_name(b"x"))
    assert list(fan.parse_events(data)) == [(fan.FAN_CREATE, 7, (FSID, 1, HANDLE), "x")]


def test_name_is_decoded_like_a_path():
    data = event(fan.FAN_CREATE, 7, dfid_name(b"caf\xe9"))
    assert list(fan.parse_events(data))[0][3] == os.fsdecode(b"caf\xe9")


def test_short_tail_ends_the_parse():
    one = event(fan.FAN_CREATE, 1, dfid_name(b"a"))
    assert len(list(fan.parse_events(one + one[:10]))) == 1
    assert list(fan.parse_events(b"")) == []


def test_bad_event_length_ends_the_parse():
    bad = fan.META.pack(8, 3, 0, fan.META.size, fan.FAN_CREATE, -1, 1)
    assert list(fan.parse_events(bad + event(fan.FAN_CREATE, 2))) == []


def test_bad_info_length_keeps_the_event_without_a_name():
    broken = struct.pack("<BBH", fan.FAN_EVENT_INFO_TYPE_DFID_NAME, 0, 2) + b"\0" * 20
    assert list(fan.parse_events(event(fan.FAN_CREATE, 3, broken))) == \
        [(fan.FAN_CREATE, 3, None, None)]


def _handles_or_skip(fd):
    try:
        return fan.handle_key(fd)
    except OSError as e:
        pytest.skip(f"no file handles on this filesystem: {e}")


def test_handle_key_of_a_directory(tmp_path):
    (tmp_path / "d").mkdir()
    fd = os.open(tmp_path / "d", os.O_RDONLY | os.O_DIRECTORY)
    fd2 = os.open(tmp_path / "d", os.O_RDONLY | os.O_DIRECTORY)
    try:
        key = _handles_or_skip(fd)
        fsid, htype, handle = key
        assert len(fsid) == 8 and isinstance(htype, int) and 0 < len(handle) <= fan.HANDLE_MAX
        assert fan.handle_key(fd2) == key           # the directory, not the descriptor
    finally:
        os.close(fd)
        os.close(fd2)


def test_entry_key_tells_entries_apart_and_does_not_follow(tmp_path):
    (tmp_path / "a").write_text("a")
    (tmp_path / "b").write_text("b")
    os.symlink("a", tmp_path / "link")
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        _handles_or_skip(fd)
        ka, kb, kl = (fan.entry_key(fd, n, os.lstat(tmp_path / n)) for n in ("a", "b", "link"))
        assert len({ka, kb, kl}) == 3
        assert fan.entry_key(fd, "a", os.lstat(tmp_path / "a")) == ka
    finally:
        os.close(fd)


def test_entry_key_without_a_handle_falls_back_to_the_inode(tmp_path):
    st = os.lstat(tmp_path)
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert fan.entry_key(fd, "missing", st) == (st.st_dev, st.st_ino, st.st_ctime_ns)
    finally:
        os.close(fd)
