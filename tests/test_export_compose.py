"""`labctl export compose`: the lab as a Compose project that brings up the lab labctl would.

The unit tests render and read the file; the engine test brings the teardown lab up with
docker-compose 1.29 (the only Compose on this machine), pings through the router, runs a
scenario on it with labctl, and takes it down again with docker-compose.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from labctl import api
from labctl.agent import protocol
from labctl.engine.docker import hostfw
from labctl.engine.docker.labels import bridge_name, container_name, network_name, of_lab
from labctl.export import compose
from labctl.loader import load_lab
from labctl.plan import plan_lab
from tests.conftest import lab_objects
from tests.test_cli_conventions import run_cli

ROOT = Path(__file__).resolve().parent.parent
IMAGE = "labctl-node:0123456789ab"


def teardown_context(image: str = IMAGE) -> dict:
    loaded = load_lab("teardown")
    return compose.compose_context(plan_lab(loaded, {}), image, description=loaded.lab.description)


def rendered_teardown() -> dict:
    return yaml.safe_load(compose.render(teardown_context()).files["compose.yaml"])


# --- the file ----------------------------------------------------------------------------

def test_nodes_carry_the_labels_the_engine_gives_its_own_nodes():
    plan = plan_lab(load_lab("teardown"), {})
    services = rendered_teardown()["services"]
    for node in plan.nodes:
        service = services[node.name]
        assert service["labels"] == {"org.labctl.owner": "labctl", "org.labctl.lab": "teardown", "org.labctl.instance": "default", "org.labctl.node": node.name,
                                     "org.labctl.spec": node.spec_hash(IMAGE), "org.labctl.source": plan.source,
                                     "org.labctl.role": node.role}
        assert service["container_name"] == container_name(plan.lab, node.name)
        assert service["image"] == IMAGE
        assert service["cap_add"] == ["NET_ADMIN", "NET_RAW"]
        assert "privileged" not in service
        assert service["sysctls"] == dict(node.sysctls)
        assert {k: v["ipv4_address"] for k, v in service["networks"].items()} == {i.link: str(i.address.ip) for i in node.interfaces}


def test_networks_are_internal_with_the_plans_subnet_gateway_and_bridge():
    plan = plan_lab(load_lab("teardown"), {})
    networks = rendered_teardown()["networks"]
    for link in plan.links:
        network = networks[link.name]
        assert network["name"] == network_name(plan.lab, link.name)
        assert network["internal"] is True
        assert network["ipam"]["config"] == [{"subnet": str(link.subnet), "gateway": str(link.reserved)}]
        assert network["driver_opts"]["com.docker.network.bridge.name"] == bridge_name(network_name(plan.lab, link.name))
        assert network["labels"]["org.labctl.spec"] == link.spec_hash()
        assert network["labels"]["org.labctl.link"] == link.name


def test_a_node_starts_with_the_agents_own_setup_of_its_plan():
    plan = plan_lab(load_lab("teardown"), {})
    client = rendered_teardown()["services"]["client"]
    shell, flag, script, name, setup = client["command"]
    assert (shell, flag, name) == ("sh", "-c", "client")
    assert script.startswith(" ".join(protocol.command_line("setup")) + ' "$$1"')  # $$: Compose's literal $
    assert script.endswith("exec sleep infinity")
    assert json.loads(setup) == plan.node("client").setup(IMAGE).to_json()  # with the spec it records once done


def test_the_host_firewall_service_runs_the_agents_rule_on_the_host_network_before_the_nodes():
    services = rendered_teardown()["services"]
    firewall = services[compose.HOST_FIREWALL_SERVICE]
    assert firewall["network_mode"] == "host"
    assert firewall["command"] == ["sh", "-c", hostfw.script().replace("$", "$$")]  # the engine's own script
    assert firewall["labels"]["org.labctl.lab"] == "__host__"  # never taken for a node of the lab
    for name in ("client", "router", "server"):
        assert services[name]["depends_on"] == {compose.HOST_FIREWALL_SERVICE: {"condition": "service_completed_successfully"}}


def test_the_labs_record_is_declared_as_the_engine_would_make_it():
    """Compose owns the record volume, so its `down -v` removes it; labctl finds it as its own."""
    from labctl.engine.docker.deploy import _labels, plan_digest
    from labctl.engine.docker.labels import LABEL_DEPLOY, LABEL_STATE, record_name

    plan = plan_lab(load_lab("teardown"), {})
    [(key, volume)] = rendered_teardown()["volumes"].items()
    digest = plan_digest(plan, IMAGE)
    assert volume["name"] == record_name(plan.key, digest)
    engine_labels = _labels(plan, "token", **{LABEL_STATE: digest})
    del engine_labels[LABEL_DEPLOY]  # which deploy made it: none of labctl's
    assert volume["labels"] == engine_labels


def test_dollars_in_values_reach_the_container_literally():
    assert compose.quote("a$b") == '"a$$b"'
    assert yaml.safe_load(compose.quote({"k": ["$x", 1]})) == {"k": ["$$x", 1]}


def test_a_node_on_its_own_image_gets_the_agent_mounted(make_lab_file):
    lab = make_lab_file("""
nodes:
  client: {image: "debian:bookworm"}
  server: {}
links:
  - {name: net, endpoints: [client, server]}
""")
    loaded = load_lab(lab)
    context = compose.compose_context(plan_lab(loaded, {}), IMAGE)
    services = yaml.safe_load(compose.render(context).files["compose.yaml"])["services"]
    assert services["client"]["image"] == "debian:bookworm"
    assert services["client"]["volumes"] == ["./labctl-agent:/opt/labctl:ro"]
    assert "PYTHONPATH=/opt/labctl" in services["client"]["command"][2]
    assert "volumes" not in services["server"]
    out = lab.parent / "out"
    compose.write(compose.render(context), out, context)
    assert (out / "labctl-agent" / "labctl" / "agent" / "netsetup.py").is_file()


@pytest.fixture
def make_lab_file(tmp_path):
    def make(body: str) -> Path:
        path = tmp_path / "lab" / "lab.yaml"
        path.parent.mkdir()
        path.write_text("name: own\n" + body)
        return path
    return make


def test_docker_compose_accepts_the_file(tmp_path):
    assert shutil.which("docker-compose"), "docker-compose is missing: apt-get install docker-compose (the README's test command does)"
    # `config` reads and checks the file against Compose's own schema; it needs no engine.
    context = teardown_context()
    compose.write(compose.render(context), tmp_path, context)
    checked = subprocess.run(["docker-compose", "config"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stderr
    assert yaml.safe_load(checked.stdout)["services"]["router"]["sysctls"]["net.ipv4.ip_forward"] == "1"
    assert (tmp_path / ".env").read_text().splitlines()[-1] == "COMPOSE_PROJECT_NAME=labctl-teardown"


# --- templates of one's own ------------------------------------------------------------------

def test_an_undefined_variable_names_the_template_the_line_and_the_variable(tmp_path):
    templates = tmp_path / "mine"
    templates.mkdir()
    (templates / "compose.yaml.j2").write_text("services:\n  x:\n    image: {{ imgae | quote }}\n")
    result = run_cli("export", "compose", "teardown", "--templates", str(templates), "-o", str(tmp_path / "out"), "--no-build")
    assert result.returncode == 2, result.stderr
    assert f"{templates / 'compose.yaml.j2'}:3" in result.stderr
    assert "'imgae' is undefined" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out" / "compose.yaml").exists()


def test_an_undefined_attribute_in_an_included_template_names_that_template(tmp_path):
    templates = tmp_path / "mine"
    templates.mkdir()
    (templates / "compose.yaml.j2").write_text("services:\n{% include 'node.j2' %}\n")
    (templates / "node.j2").write_text("  x:\n    image: {{ image }}\n    name: {{ lab.nmae }}\n")
    with pytest.raises(compose.TemplateError) as caught:
        compose.render(teardown_context(), templates)
    assert caught.value.location.file == templates / "node.j2"
    assert caught.value.location.line == 3
    assert "nmae" in caught.value.message


def test_a_syntax_error_names_the_template_and_line(tmp_path):
    (tmp_path / "compose.yaml.j2").write_text("services:\n  {% for n in nodes %}\n")
    with pytest.raises(compose.TemplateError) as caught:
        compose.render(teardown_context(), tmp_path)
    assert caught.value.location.file == tmp_path / "compose.yaml.j2"
    assert caught.value.location.line == 3 or caught.value.location.line == 2


def test_templates_are_sandboxed(tmp_path):
    (tmp_path / "compose.yaml.j2").write_text("services: {{ ''.__class__.__mro__[1].__subclasses__() }}\n")
    with pytest.raises(compose.TemplateError) as caught:
        compose.render(teardown_context(), tmp_path)
    assert "not allowed" in caught.value.message or "unsafe" in caught.value.message


# --- where the built-in templates are ----------------------------------------------------------

def test_a_checkout_reads_the_top_level_templates():
    assert compose.template_dir() == ROOT / "compose-templates"


@pytest.mark.skipif(subprocess.run([sys.executable, "-c", "import wheel"], capture_output=True).returncode != 0,
                    reason="building a wheel needs the 'wheel' package (in the test extras)")
def test_a_wheel_carries_the_templates_inside_the_package(tmp_path):
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(tmp_path / "dist")], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert built.returncode == 0, built.stderr
    [wheel] = (tmp_path / "dist").glob("labctl-*.whl")
    installed = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(tmp_path / "site"), str(wheel)],
                               capture_output=True, text=True, timeout=300)
    assert installed.returncode == 0, installed.stderr
    found = subprocess.run([sys.executable, "-c", "from labctl.export.compose import template_dir; print(template_dir())"],
                           capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(tmp_path / "site")})
    assert found.returncode == 0, found.stderr
    assert Path(found.stdout.strip()) == tmp_path / "site" / "labctl" / "compose_templates"
    assert (Path(found.stdout.strip()) / "compose.yaml.j2").is_file()


# --- on the real engine --------------------------------------------------------------------

def _compose(directory: Path, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(["docker-compose", *argv], cwd=directory, capture_output=True, text=True, timeout=300)


def _remove_host_rule() -> None:
    """Take labctl's host rule out, so the test sees the exported service put it back.

    Its drop for what is routed out of a lab goes too: alone, that drop would take every
    frame of every other lab running on this host (the lead's repeated runs lost segments to
    it). Meanwhile the isolation chain's RETURN and Docker's own accept per bridge carry them."""
    for tool in ("iptables-nft", "iptables-legacy"):
        for chain in ("DOCKER-USER", "FORWARD"):
            for rule in (hostfw.ROUTED_OUT, hostfw.RULE):
                while subprocess.run([tool, "-w", "-C", chain, *rule], capture_output=True).returncode == 0:
                    subprocess.run([tool, "-w", "-D", chain, *rule], capture_output=True, check=True)


def _left(engine, lab: str, project: str) -> list[str]:
    """Every container, network and volume of the lab or of its Compose project that is still there."""
    left = []
    for label in (of_lab(lab), f"com.docker.compose.project={project}"):  # the default instance: others may be up
        filters = {"label": label}
        left += [f"container {c.name}" for c in engine.client.containers.list(all=True, filters=filters)]
        left += [f"network {n.name}" for n in engine.client.networks.list(filters=filters)]
        left += [f"volume {v.name}" for v in engine.client.volumes.list(filters=filters)]
    return sorted(set(left))


def _wait_healthy(engine, lab: str, count: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        containers = engine.client.containers.list(filters={"label": of_lab(lab)})  # its default instance only
        health = {c.name: (c.attrs.get("State", {}).get("Health") or {}).get("Status") for c in containers}
        if len(health) == count and all(h == "healthy" for h in health.values()):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"nodes not set up within {timeout} s: {health}")
        time.sleep(0.5)


@pytest.mark.engine
def test_the_teardown_lab_runs_under_docker_compose_as_under_labctl(engine, node_image, tmp_path):
    project = tmp_path / "teardown-compose"
    api.down("teardown", engine=engine)  # locked, as the other teardown tests do: its subnets and names are fixed
    exported = run_cli("export", "compose", "teardown", "-o", str(project), "--json")
    assert exported.returncode == 0, exported.stderr
    assert json.loads(exported.stdout)["image"] == node_image
    _remove_host_rule()
    try:
        up = _compose(project, "up", "-d")
        assert up.returncode == 0, up.stderr
        _wait_healthy(engine, "teardown", 3)

        # The one-shot service put the host rule back; without it nothing crosses the router.
        firewall = engine.client.containers.list(all=True, filters={"label": ["com.docker.compose.project=labctl-teardown",
                                                                              "com.docker.compose.service=labctl-host-firewall"]})
        logs = " ".join(c.logs().decode() for c in firewall)
        assert "rule added" in logs, logs

        ping = engine.exec("teardown", "client", ["ping", "-c", "2", "-W", "2", "server"])
        assert ping.exit_code == 0, ping.stdout + ping.stderr
        assert "ttl=63" in ping.stdout  # one router between them

        routes = engine.exec("teardown", "client", ["ip", "-j", "route"]).stdout
        assert all(r["dst"] != "default" for r in json.loads(routes))  # Docker's default route is gone
        offloads = engine.exec("teardown", "client", ["ethtool", "-k", "left"]).stdout
        assert "generic-receive-offload: off" in offloads and "tcp-segmentation-offload: off" in offloads

        status = run_cli("status", "teardown", "--json")
        assert status.returncode == 0, status.stderr
        [lab] = [entry for entry in json.loads(status.stdout) if entry["instance"] == "default"]  # other instances may be up
        assert {n["name"]: n["status"] for n in lab["nodes"]} == {"client": "running", "router": "running", "server": "running"}

        before = {c.name: c.id for c in engine.client.containers.list(filters={"label": of_lab("teardown")})}
        ran = run_cli("run", "teardown", "-s", "normal-close", "--results", str(tmp_path / "results"), "--json", timeout=300)
        assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-2000:]
        assert [r["passed"] for r in json.loads(ran.stdout)] == [True]
        after = {c.name: c.id for c in engine.client.containers.list(filters={"label": of_lab("teardown")})}
        assert after == before  # used as it was: nothing torn down and recreated
    finally:
        down = _compose(project, "down", "-v")  # as the README and compose.yaml say: -v takes the lab's record too
        hostfw.run_here()  # whatever happened above, the host keeps its rule for the other labs
    assert down.returncode == 0, down.stderr
    assert _left(engine, "teardown", "labctl-teardown") == []


@pytest.mark.engine
def test_compose_down_v_removes_everything_the_export_made_after_labctl_used_the_lab(engine, node_image, make_lab, tmp_path):
    directory = make_lab("""
nodes:
  a: {}
  b: {}
links:
  - {name: net, endpoints: [a, b]}
""")
    name = directory.name
    project = tmp_path / "compose"
    exported = run_cli("export", "compose", str(directory), "-o", str(project))
    assert exported.returncode == 0, exported.stderr
    label = {"label": f"org.labctl.lab={name}"}
    try:
        up = _compose(project, "up", "-d")
        assert up.returncode == 0, up.stderr
        _wait_healthy(engine, name, 2)
        # labctl uses the lab as its own: up finds it whole (the record Compose made is the one it would make)
        again = run_cli("up", str(directory), "--json")
        assert again.returncode == 0, again.stderr
        [record] = engine.client.volumes.list(filters=label)
        assert record.attrs["Labels"]["com.docker.compose.project"] == f"labctl-{name}"
        [state] = api.status(directory, engine=engine)
        assert state.health == "healthy", state.problems
    finally:
        down = _compose(project, "down", "-v")  # as the README and compose.yaml say
    assert down.returncode == 0, down.stderr
    assert lab_objects(engine, name) == [] and engine.client.volumes.list(filters=label) == []


@pytest.mark.engine
def test_a_node_on_its_own_image_starts_with_the_mounted_agent(engine, node_image, make_lab, tmp_path):
    """The agent is not in such an image: the export puts it beside compose.yaml and mounts it."""
    from labctl.engine.docker import image as images

    base = images.offline_base_tag()
    if not images.has_image(engine.client, base):
        images.bootstrap_base(engine.client, base, lambda _: None)
    directory = make_lab(f"""
nodes:
  plain: {{image: "{base}"}}
  server: {{}}
links:
  - {{name: net, endpoints: [plain, server]}}
""")
    name = directory.name
    project = tmp_path / "compose"
    exported = run_cli("export", "compose", str(directory), "-o", str(project))
    assert exported.returncode == 0, exported.stderr
    assert (project / "labctl-agent" / "labctl" / "agent" / "netsetup.py").is_file()
    try:
        up = _compose(project, "up", "-d")
        assert up.returncode == 0, up.stderr
        _wait_healthy(engine, name, 2)
        ping = engine.exec(name, "plain", ["ping", "-c", "1", "-W", "2", "server"])
        assert ping.exit_code == 0 and "ttl=64" in ping.stdout, ping.stdout + ping.stderr
        names = engine.exec(name, "plain", ["ip", "-j", "link"]).stdout
        assert "net" in [link["ifname"] for link in json.loads(names)]  # renamed by the agent's setup
    finally:
        down = _compose(project, "down", "-v")
    assert down.returncode == 0, down.stderr
    assert _left(engine, name, f"labctl-{name}") == []


@pytest.mark.engine
def test_a_compose_lab_on_pool_subnets_is_kept_when_the_pool_frees_up(engine, node_image, make_lab, tmp_path):
    """Exported while another network held the subnet the pool would give first, brought up
    after it went: `labctl up` keeps the lab on the subnet it holds instead of moving it."""
    import docker.types

    directory = make_lab("""
nodes:
  a: {}
  b: {}
links:
  - {name: net, endpoints: [a, b]}
""")
    name = directory.name
    first = yaml.safe_load(compose.render(compose.compose_context(plan_lab(load_lab(directory), engine.subnets_in_use()), IMAGE))
                           .files["compose.yaml"])["networks"]["net"]["ipam"]["config"][0]["subnet"]
    decoy = engine.client.networks.create(f"{name}-decoy", internal=True, labels={"org.labctl.test": name},
                                          ipam=docker.types.IPAMConfig(pool_configs=[docker.types.IPAMPool(subnet=first)]))
    project = tmp_path / "compose"
    try:
        exported = run_cli("export", "compose", str(directory), "-o", str(project))
        assert exported.returncode == 0, exported.stderr
    finally:
        decoy.remove()
    held = yaml.safe_load((project / "compose.yaml").read_text())["networks"]["net"]["ipam"]["config"][0]["subnet"]
    assert held != first
    try:
        up = _compose(project, "up", "-d")
        assert up.returncode == 0, up.stderr
        _wait_healthy(engine, name, 2)
        again = run_cli("up", str(directory), "--json")
        assert again.returncode == 0, again.stderr
        report = json.loads(again.stdout)
        assert (report["created"], report["removed"]) == ([], []), report
        assert [l.subnet for l in engine.links(name)] == [held]
    finally:
        down = _compose(project, "down", "-v")
    assert down.returncode == 0, down.stderr
    assert _left(engine, name, f"labctl-{name}") == []


def test_an_instance_is_exported_with_its_own_names_and_moved_subnets():
    plan = plan_lab(load_lab("teardown"), {}, {}, "b")
    context = compose.compose_context(plan, IMAGE)
    rendered = yaml.safe_load(compose.render(context).files["compose.yaml"])
    assert context["project"] == "labctl-teardown_b"
    assert {s["container_name"] for s in rendered["services"].values() if "container_name" in s} >= {
        "labctl-teardown.b-client", "labctl-teardown.b-router", "labctl-teardown.b-server"}
    moved = dict(plan.remap.moves)
    subnets = {str(link["subnet"]) for link in context["links"]}
    assert subnets == {str(new) for new in moved.values()} and not subnets & {"10.250.1.0/24", "10.250.2.0/24"}
    assert all(s["labels"]["org.labctl.instance"] == "b" for name, s in rendered["services"].items() if "org.labctl.node" in s["labels"])
