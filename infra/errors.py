"""Why a local service could not be started, each with what to do about it."""

from __future__ import annotations

from pathlib import Path


class InfraError(Exception):
    """Base of every error raised by the local infrastructure launcher."""


class PrerequisiteMissing(InfraError):
    """A program the launcher needs is not installed; the message says what to install."""

    def __init__(self, program: str, install_hint: str) -> None:
        super().__init__(f"{program} is required but was not found; {install_hint}")
        self.program = program
        self.install_hint = install_hint


class PortInUse(InfraError):
    """The port a service was told to use is already bound by another process."""

    def __init__(self, service: str, host: str, port: int) -> None:
        super().__init__(
            f"{service}: port {port} on {host} is already in use; "
            "stop whatever listens there or let the launcher pick a free port (port=0)"
        )
        self.service = service
        self.port = port


class JarDownloadError(InfraError):
    """Maven could not resolve the broker's jars."""

    def __init__(self, artifact: str, log_path: Path) -> None:
        super().__init__(
            f"could not download {artifact} and its dependencies from Maven Central; "
            "check that Maven Central is reachable (mvn settings, proxy) and that the "
            f"version exists; Maven's output is in {log_path}"
        )
        self.artifact = artifact
        self.log_path = log_path


class ServiceStartError(InfraError):
    """A service process was started but did not become ready."""

    def __init__(self, service: str, reason: str, log_path: Path, log_tail: str = "") -> None:
        message = f"{service} failed to start: {reason}; its log is {log_path}"
        if log_tail:
            message += "\n--- last lines of the log ---\n" + log_tail
        super().__init__(message)
        self.service = service
        self.reason = reason
        self.log_path = log_path


class AlreadyRunning(InfraError):
    """`infra up` was asked for while a previously started stack is still alive."""

    def __init__(self, state_file: Path, addresses: dict[str, str]) -> None:
        lines = "\n".join(f"  {name}={value}" for name, value in addresses.items())
        super().__init__(
            f"the local infrastructure is already running (state in {state_file}):\n{lines}\n"
            "run `adstream infra down` first to start a fresh one"
        )
        self.state_file = state_file
        self.addresses = addresses
