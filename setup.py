"""Package layout: ``vidhash/`` plus ``kernels/`` -> ``vidhash.kernels`` and ``pipelines/`` -> ``vidhash.pipelines``.

Metadata lives in pyproject.toml; this file only maps the folders, which pyproject's
``packages.find`` cannot do for subpackages of a remapped folder.
"""
import os

from setuptools import find_packages, setup

MAPPED = {"kernels": "vidhash.kernels", "pipelines": "vidhash.pipelines"}

packages = find_packages(include=["vidhash", "vidhash.*"])
package_dir = {"vidhash": "vidhash"}
for folder, name in MAPPED.items():
    for sub in find_packages(include=[folder, folder + ".*"]):
        dotted = name + sub[len(folder):]
        packages.append(dotted)
        package_dir[dotted] = sub.replace(".", "/")

# configs/ (YAML only) ships as vidhash.configs so installed copies find their presets.
if os.path.isdir("configs"):
    packages.append("vidhash.configs")
    package_dir["vidhash.configs"] = "configs"

setup(
    packages=packages,
    package_dir=package_dir,
    package_data={"vidhash.configs": ["*.yaml"]},
)
