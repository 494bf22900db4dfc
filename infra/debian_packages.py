"""Programs from Debian packages, installed on first use when run as root with apt-get."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from infra.errors import PrerequisiteMissing

APT_LOCK_WAIT_S = 300
"""How long apt-get waits for another apt-get (a parallel test run installing its own
package) to release dpkg's lock, instead of failing at once."""


def find_or_install(program: str, package: str, log_dir: Path) -> str:
    """The path of `program`; as root with apt-get, installs Debian's `package` first.

    apt-get's output goes to `log_dir/apt-<package>.log`, which the error names."""
    path = find_or_install_with(lambda: shutil.which(program), program, package, log_dir)
    return str(path)


def find_or_install_with(
    find: Callable[[], str | Path | None], what: str, package: str, log_dir: Path
) -> str | Path:
    """What `find` finds; if nothing, as root with apt-get, installs Debian's `package` and
    looks again. `what` names the missing thing in the error."""
    found = find()
    if found:
        return found
    hint = f"install it, e.g. `apt-get install {package}`"
    apt = shutil.which("apt-get")
    if apt is None or os.geteuid() != 0:
        raise PrerequisiteMissing(what, hint)
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"apt-{package}.log"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    lock = f"DPkg::Lock::Timeout={APT_LOCK_WAIT_S}"
    with log_path.open("w") as log:
        for argv in (
            [apt, "-o", lock, "update", "-q"],
            [apt, "-o", lock, "install", "-y", "-q", "--no-install-recommends", package],
        ):
            subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT, env=env, check=False)
    found = find()
    if not found:
        raise PrerequisiteMissing(what, f"{hint} (apt-get's output: {log_path})")
    return found
