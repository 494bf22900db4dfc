"""A real PostgreSQL server on loopback (a throwaway cluster made by `initdb`), installed from
Debian packages when missing.

PostgreSQL refuses to run as root: as root, the cluster belongs to the `postgres` user that
Debian's package creates, and `initdb` and `postgres` run as that user through `runuser`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg import sql

from infra.debian_packages import find_or_install_with
from infra.errors import PrerequisiteMissing, ServiceStartError
from infra.process import LOOPBACK, ServiceProcess, ensure_port_free, free_port, tail

SUPERUSER = "adstream"
SYSTEM_USER = "postgres"
"""Who runs the server when we are root (Debian's package creates the account)."""
DEBIAN_BINARIES = Path("/usr/lib/postgresql")
"""Debian keeps the server's programs off PATH, one directory per major version."""


def _server_binaries() -> Path | None:
    """The directory holding `initdb` and `postgres`: on PATH, else Debian's newest version."""
    found = shutil.which("postgres")
    if found:
        return Path(found).resolve().parent
    versions = sorted(
        (path.parent for path in DEBIAN_BINARIES.glob("*/bin/postgres")),
        key=lambda bin_dir: int(bin_dir.parent.name) if bin_dir.parent.name.isdigit() else 0,
    )
    return versions[-1] if versions else None


def find_or_install_postgres(log_dir: Path) -> Path:
    """The directory of PostgreSQL's server programs; as root with apt-get, installs the
    Debian package first."""
    found = find_or_install_with(
        _server_binaries, "PostgreSQL (initdb, postgres)", "postgresql", log_dir
    )
    return Path(found)


def postgres_answers(url: str) -> bool:
    try:
        with psycopg.connect(url, connect_timeout=1) as connection:
            connection.execute("SELECT 1")
            return True
    except psycopg.Error:
        return False


@dataclass
class PostgresServer:
    """A throwaway PostgreSQL cluster: TCP on 127.0.0.1 only, no Unix socket, trust
    authentication for its superuser `adstream`.

    The cluster lives in a directory of its own under the system's temporary directory
    (the `postgres` user may not be able to reach `log_dir`), removed by `stop`.
    """

    log_dir: Path
    port: int = 0
    start_timeout_s: float = 60.0
    _process: ServiceProcess | None = field(default=None, init=False, repr=False)
    _cluster: Path | None = field(default=None, init=False, repr=False)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@{LOOPBACK}:{self.port}/{database}"

    @property
    def log_path(self) -> Path:
        return self.log_dir / "postgres.log"

    def start(self) -> None:
        binaries = find_or_install_postgres(self.log_dir)
        if self.port == 0:
            self.port = free_port()
        ensure_port_free("PostgreSQL", self.port)
        self._cluster = Path(tempfile.mkdtemp(prefix="adstream-postgres-"))
        data = self._cluster / "data"
        as_owner = self._as_cluster_owner()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with (self.log_dir / "initdb.log").open("w") as log:
            made = subprocess.run(
                [
                    *as_owner, str(binaries / "initdb"), "-D", str(data), "-U", SUPERUSER,
                    "--auth=trust", "--encoding=UTF8", "--locale=C", "--no-sync",
                ],
                stdout=log, stderr=subprocess.STDOUT, check=False,
            )  # fmt: skip
        if made.returncode != 0:
            self.stop()
            log_path = self.log_dir / "initdb.log"
            raise ServiceStartError("PostgreSQL", "initdb failed", log_path, tail(log_path))
        self._process = ServiceProcess(
            "PostgreSQL",
            [
                *as_owner, str(binaries / "postgres"), "-D", str(data), "-p", str(self.port),
                "-c", f"listen_addresses={LOOPBACK}", "-c", "unix_socket_directories=",
                # A throwaway cluster: losing it with the machine is fine, waiting on disks is not.
                "-c", "fsync=off", "-c", "full_page_writes=off",
            ],
            self.log_path,
        )  # fmt: skip
        self._process.start()
        self._process.wait_ready(lambda: postgres_answers(self.url()), self.start_timeout_s)

    def _as_cluster_owner(self) -> list[str]:
        """The command prefix that runs a program as the cluster's owner."""
        if os.geteuid() != 0:
            return []
        assert self._cluster is not None
        shutil.chown(self._cluster, SYSTEM_USER, SYSTEM_USER)
        runuser = shutil.which("runuser")
        if runuser is None:
            raise PrerequisiteMissing("runuser", "install util-linux (PostgreSQL refuses root)")
        return [runuser, "-u", SYSTEM_USER, "--"]

    def create_database(self, name: str) -> str:
        """A new empty database; returns its URL."""
        with psycopg.connect(self.url(), autocommit=True) as connection:
            connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url(name)

    def stop(self) -> None:
        if self._process is not None:
            self._process.stop()
            self._process = None
        if self._cluster is not None:
            shutil.rmtree(self._cluster, ignore_errors=True)
            self._cluster = None
