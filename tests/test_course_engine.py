"""Files, startup commands, services and packages in nodes, on the real engine."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from labctl import api

from .conftest import lab_objects

pytestmark = pytest.mark.engine

LAB = """
files:
  - {src: common.txt, dst: /etc/course/common.txt}
nodes:
  client: {}
  router: {role: router}
  server:
    files:
      - {src: app/, dst: /srv/app}
      - {src: data/, dst: /srv/data, mode: rw}
    startup:
      - "cat /srv/app/version > /tmp/started-with"
      - {cmd: "python3 /srv/app/serve.py", service: true}
links:
  - {name: left, endpoints: [client, router]}
  - {name: right, endpoints: [router, server]}
"""

SERVE = "import http.server, os, socketserver\nos.chdir('/srv/app')\nsocketserver.TCPServer(('', 8000), http.server.SimpleHTTPRequestHandler).serve_forever()\n"


def write_lab(make_lab, body=LAB):
    directory = make_lab(body)
    (directory / "common.txt").write_text("for every node\n")
    (directory / "app").mkdir()
    (directory / "app" / "version").write_text("v1\n")
    (directory / "app" / "serve.py").write_text(SERVE)
    (directory / "data").mkdir()
    (directory / "data" / "notes").write_text("scratch\n")
    return directory


def sh(engine, lab, node, cmd):
    result = engine.exec(lab, node, ["sh", "-c", cmd])
    return result.exit_code, result.stdout.strip()


def test_files_and_a_startup_service_reach_a_node_and_survive_up_twice(make_lab, engine, node_image):
    directory = write_lab(make_lab)
    first = api.up(directory, engine=engine)
    lab = first.plan.lab
    assert sh(engine, lab, "server", "cat /srv/app/version") == (0, "v1")
    assert sh(engine, lab, "client", "cat /etc/course/common.txt") == (0, "for every node")
    assert sh(engine, lab, "server", "cat /tmp/started-with") == (0, "v1")
    # ro: no write bit for anyone; rw: writable.
    assert sh(engine, lab, "server", "stat -c %A /srv/app/version")[1] == "-r--r--r--"
    assert sh(engine, lab, "server", "su nobody -s /bin/sh -c 'echo x >> /srv/app/version'")[0] != 0
    assert sh(engine, lab, "server", "echo more >> /srv/data/notes && cat /srv/data/notes") == (0, "scratch\nmore")
    # The service answers over the router, from the client.
    assert sh(engine, lab, "client", "curl -s --retry 20 --retry-connrefused --retry-delay 0 http://server:8000/version")[1] == "v1"
    [service] = [s for n in api.status(lab, engine=engine)[0].nodes if n.name == "server" for s in n.services]
    assert service["state"] == "running" and service["pid"] > 0
    # The startup output is in the node's log.
    assert "cat /srv/app/version" in sh(engine, lab, "server", "cat /var/log/labctl/startup.log")[1]

    second = api.up(directory, engine=engine)
    assert second.report.created == [] and second.report.removed == []
    [again] = [s for n in api.status(lab, engine=engine)[0].nodes if n.name == "server" for s in n.services]
    assert again["pid"] == service["pid"] and again["state"] == "running"
    assert sh(engine, lab, "client", "curl -s http://server:8000/version")[1] == "v1"


def test_a_changed_file_is_refreshed_in_place_and_its_service_restarted(make_lab, engine, node_image):
    directory = write_lab(make_lab)
    first = api.up(directory, engine=engine)
    lab = first.plan.lab
    ids = {c.name: c.id for c in engine.client.containers.list(filters={"label": f"org.labctl.lab={lab}"})}
    [before] = [s for n in api.status(lab, engine=engine)[0].nodes if n.name == "server" for s in n.services]
    (directory / "app" / "version").write_text("v2\n")
    second = api.up(directory, engine=engine)
    assert second.report.created == [] and second.report.removed == []
    assert {c.name: c.id for c in engine.client.containers.list(filters={"label": f"org.labctl.lab={lab}"})} == ids
    assert sh(engine, lab, "server", "cat /srv/app/version") == (0, "v2")
    assert sh(engine, lab, "server", "cat /tmp/started-with") == (0, "v2")
    [after] = [s for n in api.status(lab, engine=engine)[0].nodes if n.name == "server" for s in n.services]
    assert after["pid"] != before["pid"] and after["state"] == "running"
    assert sh(engine, lab, "client", "curl -s --retry 20 --retry-connrefused --retry-delay 0 http://server:8000/version")[1] == "v2"


def test_path_traversal_in_files_is_exit_2_with_nothing_created(make_lab, engine):
    directory = make_lab("""
        nodes:
          client: {}
          server:
            files:
              - {src: ../../../etc/passwd, dst: /srv/passwd}
        links:
          - {name: left, endpoints: [client, server]}
        """)
    lab = directory.name
    proc = subprocess.run([sys.executable, "-m", "labctl", "up", str(directory)], capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    assert "lab.yaml:7: nodes.server.files[0].src" in proc.stderr and "leaves the lab directory" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert lab_objects(engine, lab) == []


def test_a_path_given_with_p_may_be_outside_the_lab(make_lab, engine, node_image, tmp_path):
    outside = tmp_path / "submission"
    outside.mkdir()
    (outside / "server.py").write_text("print('hi')\n")
    directory = make_lab("""
        nodes:
          client: {}
          server:
            files: [{src: "{{ submission }}/server.py", dst: /srv/app/server.py}]
        links:
          - {name: left, endpoints: [client, server]}
        """)
    result = api.up(directory, {"submission": str(outside)}, engine=engine)
    assert sh(engine, result.plan.lab, "server", "python3 /srv/app/server.py") == (0, "hi")


def test_a_failing_startup_command_names_node_and_command_and_rolls_back(make_lab, engine, node_image):
    directory = make_lab("""
        nodes:
          client: {}
          server:
            startup: ["echo preparing", "echo broken >&2; exit 3"]
        links:
          - {name: left, endpoints: [client, server]}
        """)
    proc = subprocess.run([sys.executable, "-m", "labctl", "up", str(directory)], capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    assert "node server: startup command 2 `echo broken >&2; exit 3` failed: exit status 3" in proc.stderr
    assert "broken" in proc.stderr and "Traceback" not in proc.stderr
    assert lab_objects(engine, directory.name) == []


def test_a_lab_with_packages_runs_iperf3_between_client_and_server_through_the_router(make_lab, engine, node_image):
    # iperf3 for every node; jq (not in the node image) on the server: fetched on the host, installed offline.
    directory = make_lab("""
        packages: [iperf3]
        nodes:
          client: {}
          router: {role: router}
          server:
            packages: [jq]
            startup: [{cmd: "iperf3 -s", service: true}]
        links:
          - {name: left, endpoints: [client, router]}
          - {name: right, endpoints: [router, server]}
        """)
    result = api.up(directory, engine=engine)
    lab = result.plan.lab
    images = {n.name: n.image for n in result.plan.nodes}
    assert images["client"] == images["router"] != images["server"]
    assert all(tag.startswith("labctl-lab:") for tag in images.values())
    assert sh(engine, lab, "server", "echo '{\"a\": 1}' | jq .a") == (0, "1")
    code, output = sh(engine, lab, "client", "for i in $(seq 50); do iperf3 -c server -t 1 -J && exit 0; sleep 0.1; done; exit 1")
    assert code == 0, output
    report = json.loads(output)
    assert report["end"]["sum_received"]["bytes"] > 0
    # Through the router: the client's route to the server's subnet goes via it.
    server_ip = report["start"]["connected"][0]["remote_host"]
    assert sh(engine, lab, "client", f"ip route get {server_ip}")[1].split()[2] == str(result.plan.node("router").interfaces[0].address.ip)
    # The same list again: the variant is reused, nothing is recreated.
    again = api.up(directory, engine=engine)
    assert again.report.created == [] and {n.name: n.image for n in again.plan.nodes} == images


def test_an_unknown_package_is_exit_2_naming_it(make_lab, engine, node_image):
    directory = make_lab("""
        packages: [iperf3, no-such-package-here]
        nodes:
          client: {}
          server: {}
        links:
          - {name: left, endpoints: [client, server]}
        """)
    proc = subprocess.run([sys.executable, "-m", "labctl", "up", str(directory)], capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    assert "lab.yaml:3: packages[1]" in proc.stderr and "unknown Debian package 'no-such-package-here'" in proc.stderr
    assert lab_objects(engine, directory.name) == []
