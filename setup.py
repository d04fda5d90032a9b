"""Packaging: the metadata is in pyproject.toml; this adds guest-sdk/ to the wheel as `isolate._guest_sdk`
and builds the native request path (isolate/engine/_fastpath.c), the component host-function bridge
(isolate/engine/_components.c) and the response head's framing (isolate/http/_framing.c)."""

from setuptools import Extension, find_namespace_packages, setup

# pyproject.toml can discover packages or map directories, not both: guest-sdk/ lives outside the import
# tree (the checkout's layout stays), so the package list is built here.
setup(
    packages=[*find_namespace_packages(include=["isolate", "isolate.*"], exclude=["*.__pycache__"]),
              "isolate._guest_sdk"],
    package_dir={"isolate._guest_sdk": "guest-sdk"},
    # Needs only Python's headers: the wasmtime C API is reached through addresses handed over at run
    # time. Optional: without a compiler the engine keeps its ctypes path (engine/_isolate.py).
    ext_modules=[Extension("isolate.engine._fastpath", ["isolate/engine/_fastpath.c"], optional=True,
                           extra_compile_args=["-O2"]),
                 Extension("isolate.engine._components", ["isolate/engine/_components.c"], optional=True,
                           extra_compile_args=["-O2"]),
                 Extension("isolate.http._framing", ["isolate/http/_framing.c"], optional=True,
                           extra_compile_args=["-O2"])],
)
