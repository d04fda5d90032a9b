"""Packaging: the metadata is in pyproject.toml; this adds guest-sdk/ to the wheel as `isolate._guest_sdk`."""

from setuptools import find_namespace_packages, setup

# pyproject.toml can discover packages or map directories, not both: guest-sdk/ lives outside the import
# tree (the checkout's layout stays), so the package list is built here.
setup(
    packages=[*find_namespace_packages(include=["isolate", "isolate.*"], exclude=["*.__pycache__"]),
              "isolate._guest_sdk"],
    package_dir={"isolate._guest_sdk": "guest-sdk"},
)
