"""Nodes on an image of their own: the agent is copied in, and everything labctl does works there.

The image is the offline base labctl bootstraps (Debian with the node packages, but no
labctl in /opt/labctl); an image made from it without tcpdump must be refused at `up`
with the node and the tool named, and nothing left behind.
"""

from __future__ import annotations

import io
import json
import secrets

import docker.errors
import pytest

from labctl import api
from labctl.engine.docker import image as images
from labctl.errors import UserError
from tests.conftest import lab_objects

pytestmark = pytest.mark.engine

SCENARIO = """
name: own-image
description: Sockets, a packet rule, a sysctl and captures on a node of another image.
steps:
  - {node: server, sysctl: {net.ipv4.tcp_fin_timeout: 9}, as: tune}
  - {node: server, exec: {cmd: "cat /proc/sys/net/ipv4/tcp_fin_timeout"}, as: read_back}
  - {node: server, listen: {port: 6200}, as: lsn}
  - {node: client, connect: {to: server, port: 6200}, as: c}
  - {node: server, accept: lsn, as: s}
  - {node: server, rule: {action: drop, from: client, to: server, payload: "lost", count: 1}, as: lose}
  - {node: client, send: {sock: c, data: "lost"}}
  - {node: server, recv: {sock: s, expect: "lost", timeout: 3s}, as: got}
  - {wait: {rule: lose, count: 1, timeout: 2s}}
  - {node: client, close: c}
  - {node: server, close: s}
  - {sleep: 0.1s}
expect:
  - {data: {step: read_back, contains: "9"}}
  - {data: {step: got, equals: "lost"}}
  - {segments: {from: client, to: server, payload: "lost", at: client, min: 2}}
  - {segments: {from: client, to: server, payload: "lost", at: server, count: 2}}  # captured before the rule drops it
"""


@pytest.fixture(scope="module")
def base_image(engine, node_image) -> str:
    """The bootstrapped base: python3, iproute2 and the node packages, no labctl."""
    tag = images.offline_base_tag()
    if not images.has_image(engine.client, tag):
        images.bootstrap_base(engine.client, tag, lambda _: None)
    listing = engine.client.containers.run(tag, ["ls", "/opt"], remove=True).decode()
    assert "labctl" not in listing  # the point of the test: the agent is not in the image
    return tag


@pytest.fixture
def without_tcpdump(engine, base_image):
    """The base image with tcpdump taken out (built offline: no package is fetched)."""
    tag = f"labctl-test-notcpdump:{secrets.token_hex(3)}"
    dockerfile = f"FROM {base_image}\nRUN rm -f /usr/bin/tcpdump /usr/sbin/tcpdump\n"
    engine.client.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=tag, rm=True, forcerm=True)
    yield tag
    try:
        engine.client.images.remove(tag, force=True)
    except docker.errors.ImageNotFound:
        pass


def test_a_node_on_the_base_image_comes_up_runs_a_scenario_and_shows_in_status(engine, base_image, make_lab, tmp_path):
    lab = make_lab(f"""
nodes:
  client: {{}}
  router: {{role: router}}
  server: {{image: "{base_image}"}}
links:
  - {{name: left, endpoints: [client, router]}}
  - {{name: right, endpoints: [router, server]}}
""")
    (lab / "scenarios").mkdir()
    (lab / "scenarios" / "own-image.yaml").write_text(SCENARIO)
    up = api.up(lab, engine=engine)
    name = up.plan.lab
    assert {n.node: n.image for n in engine.nodes(name)}["server"] == base_image

    [result] = api.run(lab, ["own-image"], engine=engine, root=tmp_path)
    assert result.passed, json.dumps([v.to_json() for v in result.verdicts if not v.passed], indent=1, default=str)
    captures = sorted(p.name for p in (result.path / "pcaps").iterdir())
    assert "server-right.pcap" in captures
    # The sysctl step is undone when the run ends, by the helper in the node's namespace.
    assert engine.exec(name, "server", ["cat", "/proc/sys/net/ipv4/tcp_fin_timeout"]).stdout.strip() == "60"

    [status] = api.status(name, engine=engine)
    server = next(n for n in status.nodes if n.name == "server")
    assert server.status == "running" and server.image == base_image
    assert [i["name"] for i in server.interfaces] == ["right"]
    assert all(r["to"] != "default" for r in server.routes)
    assert api.up(lab, engine=engine).report.created == []  # its spec is stable: nothing recreated


def test_an_image_without_tcpdump_is_refused_at_up_naming_node_and_tool(engine, without_tcpdump, make_lab):
    lab = make_lab(f"""
nodes:
  client: {{}}
  server: {{image: "{without_tcpdump}"}}
links:
  - {{name: net, endpoints: [client, server]}}
""")
    with pytest.raises(UserError) as caught:
        api.up(lab, engine=engine)
    assert caught.value.exit_code == 2
    assert "node server" in caught.value.message and "tcpdump" in caught.value.message
    assert "tcpdump" in (caught.value.hint or "")
    assert lab_objects(engine, lab.name) == []  # nothing half-made
