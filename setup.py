"""Package discovery for the three source roots (metadata lives in pyproject.toml).

``taskflow/`` installs as ``taskflow``, ``ops/`` as ``taskflow.ops`` and ``schedulers/`` as
``taskflow.schedulers`` (no generic top-level ``ops`` module lands in site-packages). Every
package below each root is found here, so a new subpackage can never be left out of the wheel;
``tests/test_packaging.py`` builds the wheel and checks it against the source tree.
"""

from setuptools import find_packages, setup

ROOTS = {"taskflow": "taskflow", "taskflow.ops": "ops", "taskflow.schedulers": "schedulers"}


def discover() -> list[str]:
    found = []
    for name, folder in ROOTS.items():
        found.append(name)
        found += [f"{name}.{sub}" for sub in find_packages(folder)]
    return found


setup(packages=discover(), package_dir=ROOTS)
