"""The engine boundary: the only code that talks to a container engine.

Everything above it (API, CLI, model, analysis) sees this interface only,
so a second engine (say Kubernetes, for classes that outgrow one machine)
is a package beside ``docker/`` and nothing else changes. What a node is
told (setup, impairments, the actor) is the engine-neutral ``labctl.nodes``.
"""

from __future__ import annotations

import hashlib
import sys
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from ipaddress import IPv4Network
from typing import Callable, Mapping, Sequence

from ..errors import EngineError
from ..plan import LabPlan
from .tracefs import Tracefs

Progress = Callable[[str], None]


@dataclass(frozen=True)
class ExecResult:
    exit_code: int
    stdout: str
    stderr: str = ""


@dataclass(frozen=True)
class ImageInfo:
    """The node image an engine runs labs on, and how it came to be."""

    tag: str
    base: str
    base_kind: str  # docker: "local", "pulled", "offline-bootstrap", "explicit"
    built: bool


@dataclass(frozen=True)
class ImageEntry:
    """One image labctl made on an engine: what it is, and which lab nodes run it now."""

    tag: str
    kind: str  # "node" (the node image), "base" (its Debian base), "lab" (a lab variant with packages)
    size: int  # bytes
    created: str
    packages: tuple[str, ...] = ()
    current: bool = False  # the node image of this code, or the base it was built on
    used_by: tuple[str, ...] = ()  # "lab/node" of every container that runs it


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
    spec: str = ""
    source: str = ""


def state_digest(nodes: Mapping[str, str], links: Mapping[str, str]) -> str:
    """One hash of a lab's objects (node and link names with their spec hashes): what a complete
    ``deploy`` records, and what the engine's objects must add up to for the lab to be whole."""
    blob = "\n".join([*(f"node {n} {s}" for n, s in sorted(nodes.items())), *(f"link {l} {s}" for l, s in sorted(links.items()))])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class UnknownPackage(EngineError):
    """A Debian package the archive the engine builds from does not know."""

    def __init__(self, package: str):
        super().__init__(f"unknown Debian package '{package}'",
                         hint="check its name (apt-cache search WORD on a Debian bookworm host)")
        self.package = package


@dataclass
class DeployReport:
    """What a deploy did, by engine object name; ``fresh``: the lab nodes it (re)created."""

    created: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    fresh: set[str] = field(default_factory=set)

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
    """What labctl needs from a container engine.

    A lab's life: ``ensure_image``, ``subnets_in_use``, ``deploy`` (which shapes each
    node through ``labctl.nodes``), ``destroy`` and the inventory (``labs``, ``nodes``,
    ``links``). Talking to nodes needs only ``exec``, ``attach``, ``put``/``fetch`` (copy
    in and out) and ``exec_in_netns``: every agent command goes over those. The rest has
    plain defaults an engine may improve on (a terminal for ``shell``, host observers).
    """

    name: str

    @property
    def ident(self) -> str:
        """This engine among others on the machine: lab locks are per engine and lab."""
        return self.name

    @abstractmethod
    def version(self) -> str: ...

    @abstractmethod
    def ensure_image(self, *, offline: bool = False, rebuild: bool = False, progress: Progress | None = None) -> ImageInfo: ...

    @abstractmethod
    def image_present(self) -> str | None:
        """The node image for this code, if it is built."""

    def image_wanted(self) -> str:
        """What the node image for this code is called (built or not)."""
        return "the node image"

    def ensure_variant(self, base: str, packages: Sequence[str], *, rebuild: bool = False, progress: Progress | None = None) -> str:
        """The image ``base`` plus Debian ``packages`` (a lab image variant); its tag. Built once per package list."""
        raise EngineError(f"the {self.name} engine cannot add Debian packages to a node image",
                          hint="leave `packages:` out, or give the node an image of your own (image:)")

    def images(self) -> list[ImageEntry]:
        """The images labctl made on this engine (node image, bases, lab variants)."""
        return []

    def remove_image(self, tag: str) -> None:
        """Remove one image labctl made; an image a container still runs is refused by the engine."""
        raise EngineError(f"the {self.name} engine keeps no images to remove")

    @abstractmethod
    def subnets_in_use(self, exclude_lab: str | None = None) -> Mapping[IPv4Network, str]:
        """Subnets held by engine networks, other than the given lab's, with their names."""

    @abstractmethod
    def deploy(self, plan: LabPlan, image: str, progress: Progress | None = None,
               after: Callable[[DeployReport], None] | None = None) -> DeployReport:
        """Make the engine hold exactly this plan's objects for the lab, each node configured (its
        agent says so). All or nothing: failed or interrupted (Ctrl-C), the lab is as it was, or
        gone when a reconcile had already removed what it replaces. Another lab file's lab of the
        same name is refused (a ``UserError``), with nothing changed.

        ``after(report)`` runs once the objects are in place (the nodes' files and startup);
        when it raises, what this call created is rolled back like any failed deploy."""

    @abstractmethod
    def destroy(self, lab: str | None) -> list[str]:
        """Remove every object of ``lab`` (every labctl object when None); return their names."""

    @abstractmethod
    def labs(self) -> list[str]: ...

    @abstractmethod
    def recorded(self, lab: str) -> set[str]:
        """The ``state_digest`` the lab's last complete ``deploy`` recorded (empty if none did; two
        for a moment while a deploy replaces its record)."""

    @abstractmethod
    def nodes(self, lab: str) -> list[NodeState]: ...

    @abstractmethod
    def links(self, lab: str) -> list[LinkState]: ...

    # --- talking to nodes ---------------------------------------------------------------------

    @abstractmethod
    def exec(self, lab: str, node: str, argv: Sequence[str], *, stdin: bytes | None = None,
             stream: Callable[[bytes, bool], None] | None = None) -> ExecResult:
        """Run a command in a node. ``stream(chunk, is_stderr)`` gets output as it comes."""

    @abstractmethod
    def attach(self, lab: str, node: str, argv: Sequence[str]) -> Stream:
        """Start a command in a node with stdin, stdout and stderr connected to the caller."""

    @abstractmethod
    def put(self, lab: str, node: str, path: str, archive: bytes) -> None:
        """Unpack a tar archive at ``path`` in a node (created or running)."""

    @abstractmethod
    def fetch(self, lab: str, node: str, path: str) -> bytes | None:
        """A tar archive of a path in a node (running or stopped); None if it does not exist."""

    @abstractmethod
    def exec_in_netns(self, lab: str, node: str, argv: Sequence[str]) -> ExecResult:
        """Run labctl's own agent command in the node's network namespace with its net.* sysctls
        writable (which the node itself may not write), on the node image."""

    @abstractmethod
    def probe(self, image: str, argv: Sequence[str]) -> ExecResult:
        """Run a command in a throwaway node with lab capabilities (for doctor)."""

    # --- with defaults --------------------------------------------------------------------------

    def shell(self, lab: str, node: str, argv: Sequence[str]) -> int:
        """Run an interactive command on the caller's terminal; return its exit status.
        Without a terminal of the engine's own: its output passed through."""
        return self.exec(lab, node, argv, stream=_pass_through).exit_code

    def host_observers(self) -> Tracefs | None:
        """The kernel observers this engine offers on the nodes' host (tracefs); None: the nodes' own only."""
        return None

    def set_sysctls(self, lab: str, node: str, values: Mapping[str, str]) -> dict[str, str]:
        """Set network sysctls in a running node's namespace; return their previous values."""
        from ..nodes import set_sysctls

        return set_sysctls(self, lab, node, values)


def _pass_through(chunk: bytes, is_stderr: bool) -> None:
    (sys.stderr if is_stderr else sys.stdout).buffer.write(chunk)


def default_engine() -> Engine:
    from .docker import DockerEngine

    return DockerEngine.connect()
