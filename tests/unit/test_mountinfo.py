"""corral.kernel.mountinfo: the one mountinfo parser and the one `under`. Pure:
no root, no daemon, sample text instead of this machine's mounts."""
import pytest

from corral.kernel import mountinfo
from corral.kernel.mountinfo import Mount, mount_of, mountpoints, outermost, under, under_any

SAMPLE = """\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
23 22 0:21 / /proc rw,nosuid - proc proc rw
24 22 0:22 / /sys/fs/cgroup rw shared:4 master:1 - cgroup2 cgroup2 rw
25 22 0:23 / /sys/fs/bpf rw - bpf bpf rw
26 22 0:23 / /sys/fs/bpf rw - bpf bpf rw
27 22 8:1 /home/a\\040b /mnt/with\\040space\\011tab rw - ext4 /dev/sda1 rw
28 22 0:30 / /proc/sys/fs/binfmt_misc rw - binfmt_misc binfmt_misc rw
29 22 0:31 / /mnt rw - tmpfs none\\134x rw
not a mount line
30 22 x:y / /broken rw - ext4 /dev/sdb rw
"""


def test_unescape_octal():
    assert mountinfo.unescape(r"a\040b\011c\012d\134e") == "a b\tc\nd\\e"
    assert mountinfo.unescape("plain") == "plain"


def test_parse_fields_and_escapes():
    ms = mountinfo.parse(SAMPLE)
    assert [m.mount_id for m in ms] == [22, 23, 24, 25, 26, 27, 28, 29]   # bad lines skipped
    root = ms[0]
    assert (root.parent_id, root.dev, root.root, root.mountpoint, root.fstype, root.source) == \
        (1, "8:1", "/", "/", "ext4", "/dev/sda1")
    cg = ms[2]
    assert cg.fstype == "cgroup2" and cg.mountpoint == "/sys/fs/cgroup"   # optional fields skipped
    bind = ms[5]
    assert bind.root == "/home/a b" and bind.mountpoint == "/mnt/with space\ttab"
    assert ms[7].source == "none\\x"


def test_kdev_is_the_kernel_encoding():
    m = Mount(1, 0, "259:3", "/", "/", "rw", "ext4", "x")
    assert m.kdev == (259 << 20) | 3


def test_mounts_missing_file(tmp_path):
    missing = str(tmp_path / "nope")
    assert mountinfo.mounts(missing) == []
    with pytest.raises(OSError):
        mountinfo.mounts(missing, missing_ok=False)


def test_mounts_reads_a_file(tmp_path):
    f = tmp_path / "mountinfo"
    f.write_text(SAMPLE)
    assert mountinfo.mounts(str(f)) == mountinfo.parse(SAMPLE)


def test_under_component_wise():
    assert under("/a/b", "/a/b")
    assert under("/a/b/c", "/a/b")
    assert not under("/a/bc", "/a/b")
    assert not under("/a", "/a/b")
    assert under("/a/b/c", "/a/b/")        # a trailing "/" on the root is ignored


def test_under_slash_holds_every_absolute_path():
    assert under("/", "/")
    assert under("/etc/passwd", "/")
    assert not under("relative", "/")
    assert not under("relative/x", "/relative")


def test_under_any_and_outermost():
    assert under_any("/x/y", ["/a", "/x"])
    assert not under_any("/x/y", [])
    assert outermost(["/proc", "/sys", "/proc/sys/fs/binfmt_misc", "/sys", "/mnt/x", "/mnt"]) == \
        ["/proc", "/sys", "/mnt/x", "/mnt"]


def test_mountpoints_in_mount_order_without_duplicates():
    ms = mountinfo.parse(SAMPLE)
    assert mountpoints(("bpf", "cgroup2"), ms) == ["/sys/fs/cgroup", "/sys/fs/bpf"]
    assert mountpoints(("nfs",), ms) == []


def test_mount_of_longest_then_latest():
    ms = mountinfo.parse(SAMPLE)
    assert mount_of("/sys/fs/bpf/corral/x", ms).mount_id == 26     # the later of two equal ones
    assert mount_of("/sys/fs/cgroupx", ms).mount_id == 22          # not a component prefix
    assert mount_of("/mnt/with space\ttab/f", ms).mount_id == 27
    assert mount_of("/mnt/other", ms).mount_id == 29
    assert mount_of("/x", []) is None
