"""Course pieces that need no engine: files: references, packages and points in the models, labctl new."""

from __future__ import annotations

import subprocess
import sys
import tarfile
import io
import textwrap

import pytest

from labctl import api
from labctl.errors import UserError
from labctl.loader import load_lab
from labctl.nodefiles import FileSource, archive, content_hash
from labctl.plan import plan_lab

NODES = """
nodes:
  client: {{}}
  server:
    files: [{{src: "{src}", dst: /srv/app}}]
links:
  - {{name: left, endpoints: [client, server]}}
"""


def lab_with(tmp_path, src: str):
    lab = tmp_path / "lab"
    lab.mkdir(exist_ok=True)
    (lab / "lab.yaml").write_text("name: files\n" + NODES.format(src=src))
    return lab


def test_a_src_leaving_the_lab_directory_is_refused_with_its_line(tmp_path):
    (tmp_path / "secret").write_text("no")
    with pytest.raises(UserError) as caught:
        load_lab(lab_with(tmp_path, "../secret"))
    assert str(caught.value.location).endswith("lab.yaml:6: nodes.server.files[0].src")
    assert "leaves the lab directory" in caught.value.message


def test_a_symlink_out_of_the_lab_directory_is_refused(tmp_path):
    (tmp_path / "secret").write_text("no")
    lab = lab_with(tmp_path, "link")
    (lab / "link").symlink_to(tmp_path / "secret")
    with pytest.raises(UserError, match="leaves the lab directory"):
        load_lab(lab)


def test_a_path_given_with_p_may_be_anywhere(tmp_path):
    outside = tmp_path / "student"
    outside.mkdir()
    (outside / "server.py").write_text("print(1)\n")
    loaded = load_lab(lab_with(tmp_path, "{{ submission }}/server.py"), {"submission": str(outside)})
    [source] = plan_lab(loaded).node("server").files
    assert source.src == outside / "server.py" and source.mode == "ro"


def test_a_missing_src_and_a_system_dst_are_refused(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_lab(lab_with(tmp_path, "nothing-here"))
    lab = lab_with(tmp_path, ".")
    (lab / "lab.yaml").write_text((lab / "lab.yaml").read_text().replace("/srv/app", "/proc/x"))
    with pytest.raises(UserError, match="node's system"):
        load_lab(lab)


def test_the_archive_keeps_symlinks_as_links_and_the_hash_follows_content(tmp_path):
    app = tmp_path / "app"
    app.mkdir()
    (app / "a.py").write_text("one")
    (app / "link").symlink_to("/etc/shadow")
    source = [FileSource(app, "/srv/app", "ro")]
    before = content_hash(source)
    with tarfile.open(fileobj=io.BytesIO(archive(source))) as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert set(members) == {"srv/app", "srv/app/a.py", "srv/app/link"}
    assert members["srv/app/link"].issym() and members["srv/app/link"].linkname == "/etc/shadow"
    assert content_hash(source) == before
    (app / "a.py").write_text("two")
    assert content_hash(source) != before


def test_startup_strings_packages_and_points_in_the_models(tmp_path):
    lab = tmp_path / "lab"
    lab.mkdir()
    (lab / "lab.yaml").write_text(textwrap.dedent("""
        name: pk
        packages: [iperf3]
        nodes:
          client: {packages: [jq]}
          server: {startup: ["echo hi", {cmd: "sleep 100", service: true}]}
        links:
          - {name: left, endpoints: [client, server]}
        """))
    plan = plan_lab(load_lab(lab))
    assert plan.node("client").packages == ("iperf3", "jq") and plan.node("server").packages == ("iperf3",)
    assert [(s.cmd, s.service) for s in plan.node("server").startup] == [("echo hi", False), ("sleep 100", True)]
    (lab / "lab.yaml").write_text((lab / "lab.yaml").read_text().replace("[iperf3]", "[Not_A_Name]"))
    with pytest.raises(UserError):
        load_lab(lab)


def test_labctl_new_scaffolds_a_lab_that_validates(tmp_path):
    target = tmp_path / "my-lab"
    proc = subprocess.run([sys.executable, "-m", "labctl", "new", str(target)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert {p.name for p in target.iterdir()} == {"lab.yaml", "scenarios", "README.md", ".gitignore"}
    assert "results/" in (target / ".gitignore").read_text()
    proc = subprocess.run([sys.executable, "-m", "labctl", "validate", str(target)], capture_output=True, text=True)
    assert proc.returncode == 0 and "all valid" in proc.stdout, proc.stderr
    again = subprocess.run([sys.executable, "-m", "labctl", "new", str(target)], capture_output=True, text=True)
    assert again.returncode == 2 and "not an empty directory" in again.stderr


def test_the_course_lab_validates_with_each_sample_submission():
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    for submission in ("right", "no-reuseaddr", "crashes"):
        result = api.validate(root / "labs" / "teardown-course", params={"submission": str(root / "tests" / "submissions" / submission)})
        assert [s["scenario"] for s in result["scenarios"]] == ["abort", "restart"]
