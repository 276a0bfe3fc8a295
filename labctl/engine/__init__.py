"""The engine boundary: the only code that talks to a container engine.

Everything above it (API, CLI, model, analysis) sees this interface only,
so a second engine (say Kubernetes, for classes that outgrow one machine)
is a new class here and nothing else changes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from ipaddress import IPv4Network
from typing import Callable, Mapping, Sequence

from ..plan import LabPlan

Progress = Callable[[str], None]


@dataclass(frozen=True)
class ExecResult:
    exit_code: int
    stdout: str
    stderr: str = ""


@dataclass(frozen=True)
class NodeState:
    lab: str
    node: str
    container: str
    status: str  # running, exited, created, ...
    image: str
    spec: str
    source: str = ""  # the lab file it was brought up from


@dataclass(frozen=True)
class LinkState:
    lab: str
    link: str
    network: str
    subnet: str
    gateway: str


@dataclass
class DeployReport:
    created: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.created or self.removed)


class Stream(ABC):
    """A command running in a node with its stdin open: the runner's line to an agent."""

    @abstractmethod
    def write(self, data: bytes) -> None: ...

    @abstractmethod
    def read(self) -> tuple[int, bytes] | None:
        """The next chunk as (1 for stdout | 2 for stderr, bytes); None at the end."""

    @abstractmethod
    def close(self) -> None: ...

    @abstractmethod
    def exit_code(self) -> int | None: ...


class Engine(ABC):
    """What labctl needs from a container engine."""

    name: str

    @abstractmethod
    def version(self) -> str: ...

    @abstractmethod
    def ensure_image(self, *, offline: bool = False, rebuild: bool = False, progress: Progress | None = None): ...

    @abstractmethod
    def subnets_in_use(self, exclude_lab: str | None = None) -> Mapping[IPv4Network, str]:
        """Subnets held by engine networks, other than the given lab's, with their names."""

    @abstractmethod
    def deploy(self, plan: LabPlan, image: str, progress: Progress | None = None) -> DeployReport:
        """Make the engine hold exactly this plan's objects for the lab. All or nothing."""

    @abstractmethod
    def destroy(self, lab: str | None) -> list[str]:
        """Remove every object of ``lab`` (every labctl object when None); return their names."""

    @abstractmethod
    def labs(self) -> list[str]: ...

    @abstractmethod
    def nodes(self, lab: str) -> list[NodeState]: ...

    @abstractmethod
    def links(self, lab: str) -> list[LinkState]: ...

    @abstractmethod
    def exec(self, lab: str, node: str, argv: Sequence[str], *, stdin: bytes | None = None,
             stream: Callable[[bytes, bool], None] | None = None) -> ExecResult:
        """Run a command in a node. ``stream(chunk, is_stderr)`` gets output as it comes."""

    @abstractmethod
    def shell(self, lab: str, node: str, argv: Sequence[str]) -> int:
        """Run an interactive command on the caller's terminal; return its exit status."""

    @abstractmethod
    def attach(self, lab: str, node: str, argv: Sequence[str]) -> Stream:
        """Start a command in a node with stdin, stdout and stderr connected to the caller."""

    @abstractmethod
    def fetch(self, lab: str, node: str, path: str) -> bytes | None:
        """A tar archive of a path in a node (running or stopped); None if it does not exist."""

    @abstractmethod
    def set_sysctls(self, lab: str, node: str, values: Mapping[str, str]) -> dict[str, str]:
        """Set network sysctls in a running node's namespace; return their previous values."""

    @abstractmethod
    def probe(self, image: str, argv: Sequence[str]) -> ExecResult:
        """Run a command in a throwaway node with lab capabilities (for doctor)."""


def default_engine() -> Engine:
    from .docker_engine import DockerEngine

    return DockerEngine.connect()
