"""Builds the C++ core, fastis._C, from csrc/ (C++17, -O3). It does not link libtorch."""

import os

from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import setup

SOURCES = [
    "csrc/bindings.cpp",
    "csrc/sum_tree.cpp",
    "csrc/alias_table.cpp",
    "csrc/alias_classes.cpp",
    "csrc/parallel.cpp",
    "csrc/recycled_memory.cpp",
    "csrc/simd.cpp",
    "csrc/row_scores.cpp",
]

# Portable by default; FASTIS_NATIVE=1 tunes the build for the CPU it runs on.
extra = ["-O3", "-fno-math-errno"]
if os.environ.get("FASTIS_NATIVE") == "1":
    extra.append("-march=native")

setup(
    ext_modules=[
        Pybind11Extension(
            "fastis._C",
            SOURCES,
            include_dirs=["csrc"],
            cxx_std=17,
            extra_compile_args=extra,
            extra_link_args=["-pthread"],
        )
    ],
    cmdclass={"build_ext": build_ext},
)
