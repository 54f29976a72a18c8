"""cffi build script for corral._native.

Built automatically by ``pip install -e .`` through setuptools'
``cffi_modules`` (see setup.py). API mode: a real C extension linked against
libseccomp (apt: libseccomp-dev) plus a few generic helpers in
corral_native.c (Landlock syscalls, capabilities, prctl, close_range).
"""
from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent

ffibuilder = FFI()

# libseccomp: used directly from Python, the C side stays generic. Only the
# functions corral calls are declared (cffi wraps each one declared).
ffibuilder.cdef(
    """
    typedef void *scmp_filter_ctx;
    typedef uint64_t scmp_datum_t;

    enum scmp_filter_attr {
        SCMP_FLTATR_ACT_DEFAULT = 1,
        SCMP_FLTATR_ACT_BADARCH = 2,
        SCMP_FLTATR_CTL_NNP = 3,
        SCMP_FLTATR_CTL_TSYNC = 4,
        SCMP_FLTATR_API_TSKIP = 5,
        SCMP_FLTATR_CTL_LOG = 6,
        SCMP_FLTATR_CTL_SSB = 7,
        SCMP_FLTATR_CTL_OPTIMIZE = 8,
        SCMP_FLTATR_API_SYSRAWRC = 9,
        ...
    };

    enum scmp_compare {
        SCMP_CMP_NE = 1, SCMP_CMP_LT = 2, SCMP_CMP_LE = 3, SCMP_CMP_EQ = 4,
        SCMP_CMP_GE = 5, SCMP_CMP_GT = 6, SCMP_CMP_MASKED_EQ = 7, ...
    };

    struct scmp_arg_cmp {
        unsigned int arg;
        enum scmp_compare op;
        scmp_datum_t datum_a;
        scmp_datum_t datum_b;
    };

    scmp_filter_ctx seccomp_init(uint32_t def_action);
    void seccomp_release(scmp_filter_ctx ctx);
    int seccomp_load(const scmp_filter_ctx ctx);
    int seccomp_attr_set(scmp_filter_ctx ctx, enum scmp_filter_attr attr, uint32_t value);
    int seccomp_syscall_resolve_name(const char *name);
    int seccomp_rule_add_array(scmp_filter_ctx ctx, uint32_t action, int syscall,
                               unsigned int arg_cnt, const struct scmp_arg_cmp *arg_array);
    int seccomp_export_pfc(const scmp_filter_ctx ctx, int fd);
    """
)

# Our helpers (kept in sync with corral_native.h).
ffibuilder.cdef((HERE / "corral_native.h").read_text().split("#define CORRAL_NATIVE_H", 1)[1]
                .rsplit("#endif", 1)[0].replace("#include <stdint.h>", ""))

ffibuilder.set_source(
    "corral._native",
    '#include <seccomp.h>\n#include "corral_native.h"\n',
    sources=["native/corral_native.c"],
    include_dirs=["native"],
    libraries=["seccomp"],
    extra_compile_args=["-O2", "-Wall"],
)

if __name__ == "__main__":
    import os
    os.chdir(HERE.parent)
    ffibuilder.compile(tmpdir="build/cffi", verbose=True)
