"""A real single-node Apache Kafka broker (KRaft, combined broker and controller).

The jars come from Maven Central through `infra/kafka/pom.xml` and are cached once per
version and pom under `~/.cache/adstream/kafka-<version>/jars-<pom digest>`; no Docker and no
Apache download site are needed, only Java 17 and Maven. Kafka's command-line tools
(`org.apache.kafka:kafka-tools`) come with the broker's jars:
`java -cp '<jars>/*' org.apache.kafka.tools.consumer.group.ConsumerGroupCommand ...`.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from aiokafka.client import AIOKafkaClient

from infra.errors import JarDownloadError, PrerequisiteMissing, ServiceStartError
from infra.process import (
    LOOPBACK,
    ServiceProcess,
    ensure_port_free,
    free_port,
    port_open,
    tail,
)

KAFKA_VERSION = "4.2.0"
REQUIRED_ARTIFACTS = ("kafka_2.13", "kafka-tools")
"""What a download must have brought: the broker, and Kafka's command-line tools."""
MIN_JAVA_MAJOR = 17
_RESOURCES = Path(__file__).parent / "kafka"


def cache_root() -> Path:
    return Path(os.environ.get("ADSTREAM_CACHE_DIR", Path.home() / ".cache" / "adstream"))


def java_major(java: str) -> int:
    """The major version of `java`, or PrerequisiteMissing if it cannot be run."""
    hint = "install a Java 17+ runtime, e.g. `apt-get install openjdk-17-jre-headless`"
    if shutil.which(java) is None:
        raise PrerequisiteMissing(f"java ({java})", hint)
    out = subprocess.run([java, "-version"], capture_output=True, text=True, check=False)
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
    if match is None:
        raise PrerequisiteMissing(f"a working java ({java})", hint)
    major = int(match.group(1))
    # Java 8 and older report themselves as 1.x.
    return int(match.group(2) or 0) if major == 1 else major


def jars_dir(version: str = KAFKA_VERSION, cache: Path | None = None) -> Path:
    """Where `ensure_jars` keeps the jars of `version` as the pom resolves them.

    Named by the pom's digest: a changed pom (another artifact) downloads into a new
    folder, and never replaces one whose jars a running broker may still have to open."""
    digest = hashlib.sha256((_RESOURCES / "pom.xml").read_bytes()).hexdigest()[:12]
    return (cache or cache_root()) / f"kafka-{version}" / f"jars-{digest}"


def ensure_jars(
    version: str = KAFKA_VERSION, *, mvn: str = "mvn", cache: Path | None = None
) -> Path:
    """The folder holding the broker's and the tools' jars, downloading them with Maven the
    first time."""
    jars = jars_dir(version, cache)
    if (jars / ".complete").exists():
        return jars
    if shutil.which(mvn) is None:
        raise PrerequisiteMissing(f"Maven ({mvn})", "install it, e.g. `apt-get install maven`")
    jars.parent.mkdir(parents=True, exist_ok=True)
    log_path = jars.parent / "maven.log"
    # Download next to the final place, then rename, so an interrupted download is never
    # mistaken for a complete one.
    staging = Path(tempfile.mkdtemp(prefix="jars-", dir=jars.parent))
    with log_path.open("w") as log:
        result = subprocess.run(
            [
                mvn, "-B", "-f", str(_RESOURCES / "pom.xml"),
                "dependency:copy-dependencies", "-DincludeScope=runtime",
                f"-Dkafka.version={version}", f"-DoutputDirectory={staging}",
            ],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, check=False,
        )  # fmt: skip
    complete = all(any(staging.glob(f"{name}-{version}.jar")) for name in REQUIRED_ARTIFACTS)
    if result.returncode != 0 or not complete:
        shutil.rmtree(staging, ignore_errors=True)
        raise JarDownloadError(f"org.apache.kafka:kafka_2.13:{version}", log_path)
    (staging / ".complete").touch()
    if (jars / ".complete").exists():  # another process finished first: its jars may be in use
        shutil.rmtree(staging, ignore_errors=True)
        return jars
    shutil.rmtree(jars, ignore_errors=True)
    staging.rename(jars)
    return jars


def new_cluster_id() -> str:
    """A fresh KRaft cluster id: a UUID in URL-safe base64 without padding."""
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()


def metadata_answered(bootstrap: str, timeout_s: float = 5.0) -> bool:
    """True once the broker answers a metadata request and names itself in it."""

    async def ask() -> bool:
        client = AIOKafkaClient(
            bootstrap_servers=bootstrap, request_timeout_ms=int(timeout_s * 1000)
        )
        try:
            await asyncio.wait_for(client.bootstrap(), timeout_s)
            return bool(client.cluster.brokers())
        except Exception:
            return False
        finally:
            await client.close()

    # Callers may already run an event loop (async tests, the CLI's demo); ask from a thread.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, ask()).result()


@dataclass
class KafkaBroker:
    """One broker process; `start()` again after `stop()` reuses the same data and ports."""

    data_dir: Path
    log_dir: Path
    port: int = 0
    controller_port: int = 0
    version: str = KAFKA_VERSION
    java: str = "java"
    mvn: str = "mvn"
    heap: str = "512m"
    start_timeout_s: float = 60.0
    extra_config: dict[str, str] = field(default_factory=dict)
    cluster_id: str = field(default_factory=new_cluster_id)
    _process: ServiceProcess | None = field(default=None, init=False, repr=False)

    @property
    def bootstrap_servers(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    @property
    def log_path(self) -> Path:
        return self.log_dir / "kafka.log"

    def start(self) -> None:
        major = java_major(self.java)
        if major < MIN_JAVA_MAJOR:
            raise PrerequisiteMissing(
                f"Java {MIN_JAVA_MAJOR}+ (found {major})",
                "install one, e.g. `apt-get install openjdk-17-jre-headless`",
            )
        jars = ensure_jars(self.version, mvn=self.mvn)
        for name in ("port", "controller_port"):
            if getattr(self, name) == 0:
                setattr(self, name, free_port())
            ensure_port_free("Kafka", getattr(self, name))
        properties = self._write_properties()
        # The format writes meta.properties into the log directory, not the data directory.
        if not (self.data_dir / "log" / "meta.properties").exists():
            self._format(jars, properties)
        self._process = ServiceProcess(
            "Kafka",
            [
                self.java, f"-Xmx{self.heap}", f"-Xms{self.heap}", "-XX:+UseG1GC",
                "-Djava.awt.headless=true",
                f"-Dlog4j2.configurationFile={_RESOURCES / 'log4j2.properties'}",
                f"-Dkafka.logs.dir={self.log_dir}",
                "-cp", f"{jars}/*", "kafka.Kafka", str(properties),
            ],
            self.log_path,
        )  # fmt: skip
        self._process.start()
        self._process.wait_ready(
            lambda: port_open(self.port) and metadata_answered(self.bootstrap_servers),
            self.start_timeout_s,
        )

    def stop(self) -> None:
        if self._process is not None:
            self._process.stop()
            self._process = None

    def _write_properties(self) -> Path:
        config = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@{LOOPBACK}:{self.controller_port}",
            "listeners": (
                f"PLAINTEXT://{LOOPBACK}:{self.port},CONTROLLER://{LOOPBACK}:{self.controller_port}"
            ),
            "advertised.listeners": f"PLAINTEXT://{LOOPBACK}:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(self.data_dir / "log"),
            # A single node cannot replicate; the internal topics must say so.
            "offsets.topic.replication.factor": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            # Fewer internal partitions: a laptop-sized broker starts groups much faster.
            "offsets.topic.num.partitions": "8",
            "transaction.state.log.num.partitions": "8",
            "group.initial.rebalance.delay.ms": "0",
            **self.extra_config,
        }
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        path = self.data_dir / "server.properties"
        path.write_text("".join(f"{key}={value}\n" for key, value in config.items()))
        return path

    def _format(self, jars: Path, properties: Path) -> None:
        log_path = self.log_dir / "kafka-format.log"
        with log_path.open("w") as log:
            result = subprocess.run(
                [
                    self.java, "-cp", f"{jars}/*", "kafka.tools.StorageTool", "format",
                    # One argument: an id may start with "-", which would read as an option.
                    f"--cluster-id={self.cluster_id}", "-c", str(properties),
                ],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, check=False,
            )  # fmt: skip
        if result.returncode != 0:
            raise ServiceStartError(
                "Kafka", "formatting the data directory failed", log_path, tail(log_path)
            )
