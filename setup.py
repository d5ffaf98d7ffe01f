"""Build of the compiled drizzle kernels; everything else is in pyproject.toml."""

import sys

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "romosaic.resample._kernels",
            sources=["romosaic/resample/_kernels.c"],
            extra_compile_args=[] if sys.platform == "win32" else ["-O3", "-std=c99"],
            libraries=[] if sys.platform == "win32" else ["m"],
        )
    ]
)
