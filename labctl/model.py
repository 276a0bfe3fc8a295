"""The lab model: what a lab file says, typed and immutable.

These classes are the single source of truth for the lab file format: the
loader validates YAML against them and ``labctl schema`` publishes their JSON
Schema, so editors complete and check lab files with the same rules.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

SCHEMA_VERSION = 1

# Node names become container hostnames and DNS names: keep them hostname-safe.
NodeName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9-]{0,30}$", description="A node name: lowercase letters, digits and '-', starting with a letter.")]
LabName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9-]{0,30}$", description="The lab's name, used in container and network names.")]
# Link names become interface names inside nodes, which Linux caps at 15 bytes.
LinkName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_-]{0,14}$", description="A link name; also the interface name in each endpoint (at most 15 characters, not 'lo').")]
SysctlName = Annotated[str, Field(pattern=r"^net\.[a-z0-9_.\-]+$", description="A network sysctl (net.*): only these are per node.")]


def _none_is_empty(value: object) -> object:
    # `client:` with nothing after it is YAML null; mean the same as `client: {}`.
    return {} if value is None else value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Route(_Strict):
    """A static route; replaces the computed ones when a node lists any."""

    to: str = Field(description="Destination: 'default' or a network in CIDR form, e.g. 10.250.2.0/24.")
    via: str = Field(description="Next hop: a node on a shared link, or an IPv4 address on a connected subnet.")


class Node(_Strict):
    role: Literal["host", "router"] = Field("host", description="A router forwards packets (ip_forward=1, rp_filter=0); a host does not.")
    image: str | None = Field(None, description="Container image; default: labctl's node image.")
    sysctls: dict[SysctlName, str | int] = Field(default_factory=dict, description="Network sysctls set in the node's namespace.")
    routes: list[Route] | None = Field(None, description="Static routes; when given, the computed routes of this node are not installed.")


class Link(_Strict):
    """One shared segment (an internal bridge network) joining two or more nodes."""

    name: LinkName
    endpoints: list[NodeName] = Field(min_length=2, description="Nodes attached to this segment.")
    subnet: IPv4Network | None = Field(None, description="IPv4 subnet; allocated from the pool when absent.")
    addresses: dict[NodeName, IPv4Address] = Field(default_factory=dict, description="Fixed addresses for some endpoints; the others are numbered from .1 upward.")


class Lab(_Strict):
    """A lab: nodes joined by links."""

    name: LabName
    description: str = ""
    subnet_pool: IPv4Network | None = Field(None, description="Pool for links without a subnet; default 10.250.0.0/16 (or $LABCTL_SUBNET_POOL).")
    nodes: dict[NodeName, Annotated[Node, BeforeValidator(_none_is_empty)]] = Field(min_length=1)
    links: list[Link] = Field(min_length=1)

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
