"""corral.server.quarantine: the entry's name, the rename, and the bounded
copies across filesystems, in a temporary directory. Any user: the session's
quarantine directory (root's, chowned) is replaced by one in tmp_path, and
EXDEV is made by a stand-in for renameat2."""
import ctypes as ct
import errno
import os
import stat

import pytest

from corral.server import quarantine as q

SID = "s1"


@pytest.fixture
def proj(tmp_path):
    p = tmp_path / "proj"
    p.mkdir()
    fd = os.open(p, os.O_RDONLY | os.O_DIRECTORY)
    yield p, fd
    os.close(fd)


@pytest.fixture
def qroot(tmp_path, monkeypatch):
    root = tmp_path / "quarantine"

    def session_dir(r, sid):
        (r / sid).mkdir(parents=True, exist_ok=True)
        return os.open(r / sid, os.O_RDONLY | os.O_DIRECTORY)
    monkeypatch.setattr(q, "session_dir", session_dir)
    return root


@pytest.fixture
def exdev(monkeypatch):
    class Libc:
        @staticmethod
        def renameat2(*_):
            ct.set_errno(errno.EXDEV)
            return -1
    monkeypatch.setattr(q, "_libc", Libc)


def move(root, proj, name, full=False):
    p, fd = proj
    return q.move_out(root, SID, fd, name, os.lstat(p / name), full, str(p / name))


def test_entry_name_is_time_then_name():
    assert q.entry_name(".mcp.json", 123) == "123-.mcp.json"
    a, b = q.entry_name("x"), q.entry_name("x")
    assert a.endswith("-x") and int(a.split("-")[0]) > 0 and a <= b


def test_rename_keeps_the_entry_and_moves_a_symlink_not_its_target(qroot, proj):
    p, _ = proj
    (p / "target.json").write_text("t")
    os.symlink("target.json", p / ".mcp.json")
    out, live = move(qroot, proj, ".mcp.json")
    assert out["how"] == "rename" and live is None
    dst = out["moved_to"]
    assert os.path.dirname(dst) == str(qroot / SID) and dst.endswith("-.mcp.json")
    assert os.readlink(dst) == "target.json"
    assert not os.path.lexists(p / ".mcp.json") and (p / "target.json").read_text() == "t"


def test_full_quarantine_removes(qroot, proj):
    p, _ = proj
    (p / ".idea").mkdir()
    (p / ".idea" / "w.xml").write_text("w")
    out, live = move(qroot, proj, ".idea", full=True)
    assert out == {"moved_to": None, "how": "removed", "note": "quarantine full"} and live is None
    assert not os.path.lexists(p / ".idea")


def test_gone_already_raises_file_not_found(qroot, proj):
    p, fd = proj
    (p / "x").write_text("")
    st = os.lstat(p / "x")
    os.unlink(p / "x")
    with pytest.raises(FileNotFoundError):
        q.move_out(qroot, SID, fd, "x", st, False, str(p / "x"))


def test_copy_of_a_file_is_bounded(qroot, proj, exdev, monkeypatch):
    monkeypatch.setattr(q, "COPY_FILE_MAX", 10)
    p, _ = proj
    (p / ".mcp.json").write_text("x" * 25)
    out, live = move(qroot, proj, ".mcp.json")
    assert out["how"] == "copy" and out["bytes_kept"] == 10 and out["truncated"] is True
    assert not os.path.lexists(p / ".mcp.json")
    with open(out["moved_to"]) as fh:
        assert fh.read() == "x" * 10
    assert stat.S_IMODE(os.stat(out["moved_to"]).st_mode) == 0o600
    q.follow([live], final=True)


def test_copy_of_a_file_follows_its_writer(qroot, proj, exdev):
    p, _ = proj
    (p / ".mcp.json").write_text("{}")
    out, live = move(qroot, proj, ".mcp.json")
    assert out["bytes_kept"] == 2 and out["truncated"] is False
    fd = live[0]
    # the writer goes on, through a descriptor of the (now removed) original
    w = os.open(f"/proc/self/fd/{fd}", os.O_WRONLY | os.O_APPEND)
    try:
        os.write(w, b"\n")
    finally:
        os.close(w)
    items = [live]
    q.follow(items)
    with open(out["moved_to"]) as fh:
        assert fh.read() == "{}\n"
    assert items == [live]                      # still followed, for COPY_FOLLOW seconds
    q.follow(items, final=True)
    assert items == []
    with pytest.raises(OSError):
        os.fstat(fd)                            # closed


def test_copy_of_a_tree_recreates_symlinks_and_skips_fifos(qroot, proj, exdev):
    p, _ = proj
    d = p / ".vscode"
    (d / "sub").mkdir(parents=True)
    (d / "tasks.json").write_text("{}")
    (d / "sub" / "deep.txt").write_text("deep")
    os.symlink("/etc/passwd", d / "link")
    os.mkfifo(d / "fifo")
    out, live = move(qroot, proj, ".vscode")
    assert out["how"] == "copy" and live is None
    assert out["truncated"] is False and out["not_copied"] == 1
    c = out["moved_to"]
    assert open(os.path.join(c, "tasks.json")).read() == "{}"
    assert open(os.path.join(c, "sub", "deep.txt")).read() == "deep"
    assert os.readlink(os.path.join(c, "link")) == "/etc/passwd"
    assert not os.path.lexists(os.path.join(c, "fifo"))
    assert not os.path.lexists(d)


def test_copy_of_a_tree_stops_at_its_entry_budget(qroot, proj, exdev, monkeypatch):
    monkeypatch.setattr(q, "COPY_TREE_ENTRIES", 3)
    p, _ = proj
    (p / ".idea").mkdir()
    for i in range(6):
        (p / ".idea" / f"f{i}").write_text(str(i))
    out, _ = move(qroot, proj, ".idea")
    assert out["truncated"] is True and len(os.listdir(out["moved_to"])) == 3
    assert not os.path.lexists(p / ".idea")


def test_copy_of_a_tree_stops_at_its_depth(qroot, proj, exdev, monkeypatch):
    monkeypatch.setattr(q, "COPY_TREE_DEPTH", 2)
    p, _ = proj
    (p / ".idea" / "a" / "b").mkdir(parents=True)
    out, _ = move(qroot, proj, ".idea")
    assert out["truncated"] is True
    assert os.path.isdir(os.path.join(out["moved_to"], "a"))
    assert not os.path.lexists(os.path.join(out["moved_to"], "a", "b"))


def test_other_file_types_are_removed_not_copied(qroot, proj, exdev):
    p, _ = proj
    os.mkfifo(p / ".gitmodules")
    out, live = move(qroot, proj, ".gitmodules")
    assert out["moved_to"] is None and out["how"] == "copy" and live is None
    assert "removed" in out["note"]
    assert not os.path.lexists(p / ".gitmodules")
