# Minimal: only here so setuptools builds the cffi extension (corral._native).
from setuptools import setup

setup(cffi_modules=["native/build_native.py:ffibuilder"])
