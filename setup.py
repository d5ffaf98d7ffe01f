"""Build of the compiled kernels; everything else is in pyproject.toml."""

import sys

from setuptools import Extension, setup

UNIX = sys.platform != "win32"

setup(
    ext_modules=[
        Extension(
            "romosaic.resample._kernels",
            sources=["romosaic/resample/_kernels.c"],
            # -fno-trapping-math: floating-point exceptions are never looked
            # at, and without it the compiler will not run branch-free loops
            # of the square kernel several columns at a time; it changes no
            # result.
            extra_compile_args=["-O3", "-std=c99", "-fno-trapping-math"] if UNIX else [],
            libraries=["m"] if UNIX else [],
        ),
        Extension(
            "romosaic.skymatch._statistics",
            sources=["romosaic/skymatch/_statistics.c"],
            extra_compile_args=["-O3", "-std=c99"] if UNIX else [],
            libraries=["m"] if UNIX else [],
        ),
        Extension(
            "romosaic._scale",
            sources=["romosaic/_scale.c"],
            # -fno-trapping-math as for the drizzle kernels: the float16 loops run
            # on vectors only with it.
            extra_compile_args=["-O3", "-std=c99", "-fno-trapping-math"] if UNIX else [],
        ),
    ]
)
