"""Shared fixtures. Integration tests use the real Docker engine: when it is
unreachable they fail (under CI and everywhere else); they never skip."""

from __future__ import annotations

import secrets
import textwrap
from pathlib import Path

import pytest

from labctl import api
from labctl.engine.docker import DockerEngine
from labctl.engine.docker.labels import VETH_PREFIX
from labctl.instances import split_key


# client - router - server with pool subnets: the lab most engine tests start from.
THREE_NODES = """
nodes:
  client: {}
  router: {role: router}
  server: {}
links:
  - {name: left, endpoints: [client, router]}
  - {name: right, endpoints: [router, server]}
"""


@pytest.fixture(scope="session")
def engine() -> DockerEngine:
    return DockerEngine.connect()


@pytest.fixture(scope="session")
def node_image(engine) -> str:
    return api.build_image(engine=engine).tag


@pytest.fixture
def make_lab(tmp_path, engine):
    """Write a lab file with a unique name; take down whatever it brought up afterwards."""
    names: list[str] = []

    def make(body: str, name: str | None = None) -> Path:
        name = name or f"t{secrets.token_hex(3)}"
        names.append(name)
        directory = tmp_path / name
        directory.mkdir()
        (directory / "lab.yaml").write_text(f"name: {name}\n" + textwrap.dedent(body))
        return directory

    yield make
    for name in names:
        for key in [k for k in engine.labs() if split_key(k)[0] == name] or [name]:  # every instance of it
            engine.destroy(key)


def lab_objects(engine: DockerEngine, lab: str) -> list[str]:
    """Every container and network the engine holds for a lab (any instance), by label, and its bridges and veths on the host."""
    label = f"org.labctl.lab={lab}"
    return ([c.name for c in engine.client.containers.list(all=True, filters={"label": label})]
            + [n.name for n in engine.client.networks.list(filters={"label": label})]
            + [link.name for link in engine.inventory.host_links(None) if link.lab == lab])


def nodes_and_links(engine: DockerEngine, lab: str) -> list[str]:
    """The lab's containers and what holds its links (Docker networks or host bridges): what `down` names."""
    return [name for name in lab_objects(engine, lab) if not name.startswith(VETH_PREFIX)]
