"""Resources/ lives at the repository top level (the Slicer extension layout); a wheel carries it
inside the package as OrthoDiffusionLib/Resources. Everything else is in pyproject.toml."""

from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["OrthoDiffusionLib", "OrthoDiffusionLib.*"]) + ["OrthoDiffusionLib.Resources"],
    package_dir={"OrthoDiffusionLib.Resources": "Resources"},
    package_data={"OrthoDiffusionLib.Resources": ["**/*"]},
    include_package_data=False,
)
