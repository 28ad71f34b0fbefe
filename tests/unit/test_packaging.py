"""pyproject.toml's packaging metadata in the form current setuptools reads without a warning."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

from tests.unit.test_deployment import dockerfile_stages

ROOT = Path(__file__).resolve().parents[2]


def pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_license_is_an_spdx_string_and_its_text_ships_in_the_wheel_and_the_image() -> None:
    project = pyproject()["project"]
    # A table ({text = ...}) is deprecated by setuptools (PEP 639) and warns on every install.
    assert project["license"] == "Apache-2.0"
    assert project["license-files"]
    for name in project["license-files"]:
        assert (ROOT / name).read_text().lstrip().startswith("Apache License")
    builder = dockerfile_stages((ROOT / "Dockerfile").read_text())[0]
    copied = {word for args in builder.args("COPY") for word in args.split()[:-1]}
    assert set(project["license-files"]) <= copied


def test_the_build_backend_is_one_that_reads_an_spdx_license() -> None:
    requires = pyproject()["build-system"]["requires"]
    setuptools = [r for r in requires if r.startswith("setuptools")]
    assert len(setuptools) == 1
    found = re.fullmatch(r"setuptools>=(\d+)(\.\d+)*", setuptools[0])
    assert found, setuptools
    assert int(found.group(1)) >= 77  # the first release with PEP 639 license expressions
