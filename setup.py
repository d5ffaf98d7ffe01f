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
            # The cell labels must equal numpy's to the bit: no fused
            # multiply-adds.
            extra_compile_args=["-O3", "-std=c99", "-ffp-contract=off"] if UNIX else [],
            libraries=["m"] if UNIX else [],
        ),
        Extension(
            "romosaic._scale",
            sources=["romosaic/_scale.c"],
            # -fno-trapping-math as for the drizzle kernels: the float16 loops run
            # on vectors only with it.
            extra_compile_args=["-O3", "-std=c99", "-fno-trapping-math"] if UNIX else [],
        ),
        Extension(
            "romosaic.outlier._kernels",
            sources=["romosaic/outlier/_kernels.c"],
            # Its results must equal scipy's and numpy's to the bit: no fused
            # multiply-adds (clang contracts by default, even in C99 mode).
            # Without traps and errno (never looked at) the compiler may use
            # maxss and sqrtps instead of branches and calls; no value changes.
            extra_compile_args=["-O3", "-std=c99", "-ffp-contract=off", "-fno-trapping-math",
                                "-fno-math-errno"] if UNIX else [],
            libraries=["m"] if UNIX else [],
        ),
    ]
)
