"""bpf/common.h and daemon/corral/kernel/abi.py describe the same ABI: every
#define and every struct layout (field order, types, array lengths, offsets,
sizes) must agree. Pure: parses the header, loads nothing, runs as any user."""
from __future__ import annotations

import ctypes as ct
import re

from corral.kernel import abi
from corral.kernel.bpfsrc import bpf_dir

HEADER = (bpf_dir() / "common.h").read_text()
C_TYPES = {"u8": ct.c_uint8, "u16": ct.c_uint16, "u32": ct.c_uint32, "u64": ct.c_uint64,
           "char": ct.c_char}


def _strip_comments(text: str) -> str:
    return re.sub(r"/\*.*?\*/", "", text, flags=re.S)


def defines() -> dict[str, int]:
    out = {}
    for name, val in re.findall(r"^[ \t]*#define[ \t]+(\w+)[ \t]*(.*)$", _strip_comments(HEADER), re.M):
        val = val.strip()
        if not val or name.startswith("__"):     # include guards, compiler plumbing
            continue
        out[name] = eval(val, {}, {k: v for k, v in out.items()})   # (1 << 2), 16, ...
    return out


def structs() -> dict[str, list[tuple[str, str, int | None]]]:
    """struct name -> [(field, C type, array length or None)]"""
    out = {}
    consts = defines()
    for name, body in re.findall(r"struct\s+(\w+)\s*\{(.*?)\};", _strip_comments(HEADER), re.S):
        fields = []
        for decl in body.split(";"):
            decl = " ".join(decl.split())
            if not decl:
                continue
            m = re.fullmatch(r"(struct \w+|\w+) (\w+)(?:\[(\w+)\])?", decl)
            assert m, f"cannot parse field {decl!r} of struct {name}"
            n = m.group(3)
            fields.append((m.group(2), m.group(1), None if n is None else
                           int(n) if n.isdigit() else consts[n]))
        out[name] = fields
    return out


def _ctype(ctype: str, n: int | None):
    if ctype.startswith("struct "):
        base = abi.STRUCTS[ctype.split()[1]]
    else:
        base = C_TYPES[ctype]
    return base if n is None else base * n


def test_every_define_is_mirrored():
    found = defines()
    assert "SESS_DNS_STEER" in found and "RULE_FILE_PROTECTED_ANCESTOR" in found
    for name, val in found.items():
        assert hasattr(abi, name), f"common.h #define {name} has no mirror in kernel/abi.py"
        assert getattr(abi, name) == val, (name, getattr(abi, name), val)


def test_every_struct_is_mirrored_field_by_field():
    found = structs()
    assert set(found) == set(abi.STRUCTS), (sorted(found), sorted(abi.STRUCTS))
    for name, fields in found.items():
        mirror = abi.STRUCTS[name]
        have = [(f[0], f[1]) for f in mirror._fields_]
        assert [f for f, _ in have] == [f for f, _, _ in fields], name
        for (fname, ftype, n), (_, mtype) in zip(fields, have):
            want = _ctype(ftype, n)
            assert ct.sizeof(mtype) == ct.sizeof(want), (name, fname)
            assert ct.alignment(mtype) == ct.alignment(want), (name, fname)
            if not ftype.startswith("struct "):
                base = mtype._type_ if hasattr(mtype, "_length_") else mtype
                assert base == C_TYPES[ftype], (name, fname, base)
                assert getattr(mtype, "_length_", None) == n, (name, fname)


def test_layouts_are_what_the_kernel_sees():
    # The natural C layout (no packing) of these fields, worked out by hand
    # once, so a reordering that happens to keep the size is also caught.
    assert ct.sizeof(abi.Event) == 336 and abi.Event.path.offset == 80
    assert abi.Event.kind.offset == 40 and abi.Event.count.offset == 56
    assert ct.sizeof(abi.SessionCfg) == 32 and ct.sizeof(abi.FSess) == 40
    assert ct.sizeof(abi.PortRules) == 4 + 16 * 4 + 16 * 2 * 2
    assert (ct.sizeof(abi.IKey), ct.sizeof(abi.PKey), ct.sizeof(abi.RuleVal)) == (24, 16, 8)
    assert ct.sizeof(abi.Lpm4Key) == 16 and ct.sizeof(abi.Lpm6Key) == 28


def test_op_and_kind_names_cover_every_code():
    d = defines()
    assert set(abi.KINDS) == {v for k, v in d.items() if k.startswith("EV_")}
    assert set(abi.NET_OPS) == {v for k, v in d.items() if k.startswith("OP_")}
    assert set(abi.FILE_OPS) == {v for k, v in d.items() if k.startswith("FOP_")}
