"""Build the optional compiled kernel; everything else is declared in pyproject.toml.

The kernel (runners/_rowmetrics.c) fuses the per-row comparison into one pass. It is
optional: without a C compiler the install still succeeds and
runners.families.classification.metrics falls back to numpy, which gives the same numbers more slowly.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension(
    "runners._rowmetrics", ["runners/_rowmetrics.c"],
    # Inputs are checked finite before the kernel runs, which is what -ffast-math assumes;
    # it lets gcc vectorise expf through glibc's libmvec.
    extra_compile_args=["-O3", "-ffast-math"], libraries=["mvec", "m"], optional=True)])
