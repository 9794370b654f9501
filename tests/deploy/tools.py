"""Debian tools the deploy tests run: found on PATH, or installed with apt when the tests run
as root on Debian (CI and the development container), as .ci/run does up front."""

from __future__ import annotations

import os
import shutil
import subprocess


def debian_tool(tool: str, package: str) -> str | None:
    """The path of ``tool``; if missing, one attempt to ``apt-get install package`` (root only)."""
    found = shutil.which(tool)
    if found or os.geteuid() != 0 or shutil.which("apt-get") is None:
        return found
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", package]
    if subprocess.run(install, capture_output=True, env=env, check=False, timeout=600).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], capture_output=True, env=env, check=False, timeout=600)
        subprocess.run(install, capture_output=True, env=env, check=False, timeout=600)
    return shutil.which(tool)


def require_tool(tool: str, package: str) -> str:
    """``debian_tool``, failing the test in CI when the tool cannot be had and skipping it
    elsewhere (a developer's machine without root or apt)."""
    import pytest

    found = debian_tool(tool, package)
    if found is None:
        message = f"{tool} (Debian package {package}) is not installed and could not be installed"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found
