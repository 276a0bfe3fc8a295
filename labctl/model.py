"""The lab model: what a lab file says, typed and immutable.

These classes are the single source of truth for the lab file format: the
loader validates YAML against them and ``labctl schema`` publishes their JSON
Schema, so editors complete and check lab files with the same rules.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from .agent.protocol import IMPAIRMENT_SETTINGS, settings_from_lab
from .units import Duration, Percent, Rate, SysctlName, SysctlValue, format_duration, format_percent, format_rate

SCHEMA_VERSION = 1

# Node names become container hostnames and DNS names: keep them hostname-safe.
NodeName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9-]{0,30}$", description="A node name: lowercase letters, digits and '-', starting with a letter.")]
LabName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9-]{0,30}$", description="The lab's name, used in container and network names.")]
# Link names become interface names inside nodes, which Linux caps at 15 bytes.
LinkName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_-]{0,14}$", description="A link name; also the interface name in each endpoint (at most 15 characters, not 'lo').")]

# Limits on a lab's size, checked before anything is created (the README's "Limits").
MAX_NODES = 1_000
MAX_LINKS = 1_000
MAX_ROUTES = 256     # static routes of one node
MAX_SYSCTLS = 256    # sysctls of one node


def _written(example: str):
    # YAML reads `true`, `1` or `167772161` as a bool or a number, which ipaddress takes as a 32-bit
    # integer (`subnet: true` would be 0.0.0.1/32): an address in a lab file is written as text.
    def check(value: object) -> object:
        if isinstance(value, bool):
            raise ValueError(f"{str(value).lower()} is read as a yes/no value, not an address: write it as text, e.g. {example}")
        if isinstance(value, (int, float)):
            raise ValueError(f"{value} is read as a number, not an address: write it as text, e.g. {example}")
        return value

    return BeforeValidator(check)


Subnet = Annotated[IPv4Network, _written("10.250.1.0/24")]
Address = Annotated[IPv4Address, _written("10.250.1.5")]


def _none_is_empty(value: object) -> object:
    # `client:` with nothing after it is YAML null; mean the same as `client: {}`.
    return {} if value is None else value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Route(_Strict):
    """A static route; replaces the computed ones when a node lists any."""

    to: str = Field(description="Destination: 'default' or a network in CIDR form, e.g. 10.250.2.0/24.")
    via: str = Field(description="Next hop: a node on a shared link, or an IPv4 address on a connected subnet.")


MAX_FILES = 64       # file entries of one node (or of the lab)
MAX_STARTUP = 64     # startup commands of one node
MAX_PACKAGES = 256   # Debian packages of a lab or node
# A Debian package name (Debian Policy 5.6.1), optionally with an architecture qualifier.
PackageName = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9+.-]{1,99}(:[a-z0-9-]+)?$", description="A Debian package name, e.g. iperf3.")]
NodePath = Annotated[str, Field(pattern=r"^/[^\x00]{0,4095}$", description="An absolute path inside the node.")]


class FileCopy(_Strict):
    """Files copied from the lab directory into a node at `up`, and again when they change."""

    src: str = Field(min_length=1, max_length=4096, description="A file or directory, relative to the lab directory; a path given with -p may be anywhere.")
    dst: NodePath = Field(description="Where it goes in the node: the file's path, or the directory that receives the directory's contents.")
    mode: Literal["ro", "rw"] = Field("ro", description="ro (default): no write permission for anyone in the node (root can still override); rw: writable.")


class StartupCommand(_Strict):
    """A command run at `up` after networking is in place; a service keeps running in the background."""

    cmd: str = Field(min_length=1, max_length=10_000, description="A shell command line (sh -c).")
    service: bool = Field(False, description="Long-running: started detached in its own process group, output to a log file; restarted by `up` when the node's files change.")
    timeout: Duration = Field(60.0, description="How long a (non-service) command may run before it counts as failed.")


def _command(value: object) -> object:
    # `startup: ["make -C /srv/app"]`: a plain string is a one-shot command.
    return {"cmd": value} if isinstance(value, str) else value


class Node(_Strict):
    role: Literal["host", "router"] = Field("host", description="A router forwards packets (ip_forward=1, rp_filter=0); a host does not.")
    image: str | None = Field(None, description="Container image; default: labctl's node image.")
    sysctls: dict[SysctlName, SysctlValue] = Field(default_factory=dict, max_length=MAX_SYSCTLS, description="Network sysctls set in the node's namespace.")
    routes: list[Route] | None = Field(None, max_length=MAX_ROUTES, description="Static routes; when given, the computed routes of this node are not installed.")
    files: list[FileCopy] = Field(default_factory=list, max_length=MAX_FILES, description="Files copied into this node at `up` (after the lab-wide ones).")
    startup: list[Annotated[StartupCommand, BeforeValidator(_command, json_schema_input_type=StartupCommand | str)]] = Field(
        default_factory=list, max_length=MAX_STARTUP, description="Commands run in order at `up`, after networking and files are in place.")
    packages: list[PackageName] = Field(default_factory=list, max_length=MAX_PACKAGES, description="Debian packages added to this node's image (with the lab's).")


MAX_DELAY = 3600.0  # seconds: the userspace engine holds a packet at most an hour, as a sanity bound
MAX_LIMIT = 1_000_000


class Impairment(_Strict):
    """How a link misbehaves, in one direction (from one endpoint toward the others) or in all.

    Applied on the egress of the sending node's interface: netem where the node's kernel has
    it, otherwise iptables (statistic, TEE), tbf and labctl's userspace NFQUEUE engine, with
    the same meaning either way. Every value not given is off.
    """

    from_: NodeName | None = Field(None, alias="from", description="The endpoint whose egress onto the link is impaired; absent: every endpoint's.")
    delay: Duration | None = Field(None, description="Added one-way delay, e.g. 50ms.")
    jitter: Duration | None = Field(None, description="Random variation of the delay (± this), e.g. 10ms. Packets may overtake each other, as with netem.")
    distribution: Literal["uniform", "normal"] | None = Field(None, description="How jitter is drawn: uniform (default) in delay ± jitter, or normal with jitter as standard deviation.")
    loss: Percent | None = Field(None, description="Packets dropped at random, e.g. 5%.")
    loss_correlation: Percent | None = Field(None, description="How much a loss decision depends on the previous one (bursts); the long-run rate stays `loss`.")
    duplicate: Percent | None = Field(None, description="Packets sent twice, e.g. 1%.")
    reorder: Percent | None = Field(None, description="Packets sent at once, overtaking the delayed others (needs delay).")
    corrupt: Percent | None = Field(None, description="Packets with one random bit flipped after the IP header (the receiver's checksum rejects them).")
    rate: Rate | None = Field(None, description="Bandwidth limit, e.g. 1mbit.")
    limit: int | None = Field(None, ge=1, le=MAX_LIMIT, description="Queue length in packets for delay or rate (netem's limit); default 10000 for delay, 100 ms worth for rate alone.")

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    def problem(self) -> tuple[str, str] | None:
        """The first rule the schema cannot say that these settings break, as (field, message)."""
        if self.delay is not None and self.delay > MAX_DELAY:
            return "delay", f"delay {format_duration(self.delay)} is more than an hour"
        if self.jitter is not None and self.jitter > MAX_DELAY:
            return "jitter", f"jitter {format_duration(self.jitter)} is more than an hour"
        if self.distribution is not None and not self.jitter:
            return "distribution", "a distribution shapes the jitter: set jitter too"
        if self.loss_correlation and not self.loss:
            return "loss_correlation", "loss_correlation needs loss"
        if self.reorder and not self.delay:
            return "reorder", "reorder needs delay: reordered packets are the ones sent without it, overtaking the delayed rest"
        if self.limit is not None and not (self.delay or self.jitter or self.rate):
            return "limit", "limit is the length of the queue that delay or rate makes: set one of them"
        return None

    def settings(self) -> dict[str, float | int | str]:
        """What the in-node agent applies: plain numbers in its units, only what is on."""
        return settings_from_lab({s.field: getattr(self, s.field) for s in IMPAIRMENT_SETTINGS})

    def is_empty(self) -> bool:
        return not self.settings()


def describe_settings(settings: dict) -> str:
    """Agent settings as a person writes them: 'delay 50ms ±10ms normal, loss 5%'."""
    if not settings:
        return "none"
    parts = []
    if settings.get("delay_ms") or settings.get("jitter_ms"):
        text = f"delay {format_duration(settings.get('delay_ms', 0) / 1000)}"
        if settings.get("jitter_ms"):
            text += f" ±{format_duration(settings['jitter_ms'] / 1000)}"
            if settings.get("distribution", "uniform") != "uniform":
                text += f" {settings['distribution']}"
        parts.append(text)
    for key, word in (("loss_pct", "loss"), ("duplicate_pct", "duplicate"), ("reorder_pct", "reorder"), ("corrupt_pct", "corrupt")):
        if settings.get(key):
            text = f"{word} {format_percent(settings[key] / 100)}"
            if key == "loss_pct" and settings.get("loss_correlation_pct"):
                text += f" (correlation {format_percent(settings['loss_correlation_pct'] / 100)})"
            parts.append(text)
    if settings.get("rate_bit"):
        parts.append(f"rate {format_rate(settings['rate_bit'])}")
    if settings.get("limit"):
        parts.append(f"limit {settings['limit']}")
    return ", ".join(parts)


class LoopMatch(_Strict):
    """Which forwarded packets a routing loop catches; every given field must match."""

    from_: str | None = Field(None, alias="from", description="Sender: a node name or IPv4 address.")
    to: str | None = Field(None, description="Receiver: a node name or IPv4 address.")
    proto: Literal["tcp", "udp", "icmp"] | None = Field(None, description="IP protocol; tcp when ports or flags are given.")
    sport: int | None = Field(None, ge=1, le=65535)
    dport: int | None = Field(None, ge=1, le=65535)
    flags: str | None = Field(None, pattern=r"^=?[SFRPAUsfrpau.]+$",
                              description="TCP flags that must be set (letters of SFRPAU; '.' = A); prefix '=' for exactly these.")
    payload: str | None = Field(None, description="Text the packet carries.")

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def _one_or_many(value: object) -> object:
    # `impair: {delay: 50ms}` is the common case; a list gives each direction its own entry.
    return [value] if isinstance(value, dict) else value


class Link(_Strict):
    """One shared segment (an internal bridge network) joining two or more nodes."""

    name: LinkName
    endpoints: list[NodeName] = Field(min_length=2, max_length=MAX_NODES, description="Nodes attached to this segment.")
    subnet: Subnet | None = Field(None, description="IPv4 subnet; allocated from the pool when absent.")
    addresses: dict[NodeName, Address] = Field(default_factory=dict, description="Fixed addresses for some endpoints; the others are numbered from .1 upward.")
    impair: Annotated[list[Impairment], BeforeValidator(_one_or_many, json_schema_input_type=Impairment | list[Impairment])] | None = Field(
        None, description="Impairments applied at `up`: one entry for every direction, or a list with `from:` per direction.")

    def impairments(self) -> list[Impairment]:
        return list(self.impair or [])


class Lab(_Strict):
    """A lab: nodes joined by links."""

    name: LabName
    description: str = ""
    subnet_pool: Subnet | None = Field(None, description="Pool for links without a subnet; default 10.250.0.0/16 (or $LABCTL_SUBNET_POOL).")
    nodes: dict[NodeName, Annotated[Node, BeforeValidator(_none_is_empty)]] = Field(min_length=1, max_length=MAX_NODES)
    links: list[Link] = Field(min_length=1, max_length=MAX_LINKS)
    files: list[FileCopy] = Field(default_factory=list, max_length=MAX_FILES, description="Files copied into every node at `up`.")
    packages: list[PackageName] = Field(default_factory=list, max_length=MAX_PACKAGES,
                                        description="Debian packages added to every node's image: a lab image variant, built offline on the host's side.")

    def node_packages(self, name: str) -> tuple[str, ...]:
        """The Debian packages node ``name`` needs beyond the node image: the lab's and its own, sorted."""
        return tuple(sorted(set(self.packages) | set(self.nodes[name].packages)))

    def node_files(self, name: str) -> list[FileCopy]:
        return [*self.files, *self.nodes[name].files]

    def routers(self) -> list[str]:
        return [name for name, node in self.nodes.items() if node.role == "router"]

    def hosts(self) -> list[str]:
        return [name for name, node in self.nodes.items() if node.role == "host"]


def lab_json_schema() -> dict:
    schema = Lab.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = f"https://labctl.invalid/schema/lab-v{SCHEMA_VERSION}.json"
    schema["title"] = "labctl lab file"
    return schema
