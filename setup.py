# setuptools needs this file for two things pyproject.toml cannot say: the cffi
# extension (corral._native) and shipping the top-level bpf/ sources inside the
# package (corral/kernel/bpf/), so that an installed corrald finds them.
from pathlib import Path
import shutil

from setuptools import setup
from setuptools.command.build_py import build_py

BPF = Path(__file__).resolve().parent / "bpf"


class build_py_with_bpf(build_py):
    def run(self):
        super().run()
        dest = Path(self.build_lib) / "corral" / "kernel" / "bpf"
        dest.mkdir(parents=True, exist_ok=True)
        for src in sorted(BPF.glob("*.[ch]")):
            shutil.copy2(src, dest / src.name)


setup(cffi_modules=["native/build_native.py:ffibuilder"], cmdclass={"build_py": build_py_with_bpf})
