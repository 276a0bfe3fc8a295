"""`labctl image list` and `image prune` on the real engine: what labctl made, who runs it, and
pruning that removes only labctl's unused images (never one a container runs, never another's)."""

from __future__ import annotations

import secrets

import pytest
from labctl import api
from labctl.engine.docker.labels import LABEL_LAB, LABEL_NODE, LABEL_OWNER, OWNER
from tests.test_cli_errors import labctl

pytestmark = pytest.mark.engine


@pytest.fixture
def extra_tags(engine, node_image):
    """An old node image, an unused lab variant and a lab variant a container runs: each its own
    image (a commit of a container that wrote one file, so nothing is built), removed again
    whatever the test did."""
    suffix = secrets.token_hex(6)
    tags = {"old": f"labctl-node:old{suffix}", "unused": f"labctl-lab:unused{suffix}", "running": f"labctl-lab:running{suffix}"}
    for name, tag in tags.items():
        maker = engine.client.containers.run(node_image, ["sh", "-c", f"echo {name} > /prune-test"], detach=True, network_mode="none")
        maker.wait()
        repo, version = tag.split(":")
        maker.commit(repo, version)
        maker.remove(force=True)
    # A container of a lab of its own runs the "running" variant (labelled as lab nodes are).
    ctr = engine.client.containers.run(tags["running"], ["sleep", "60"], detach=True, network_mode="none",
                                       labels={LABEL_OWNER: OWNER, LABEL_LAB: f"prune-{suffix}", LABEL_NODE: "n1"})
    yield tags
    ctr.remove(force=True)
    for tag in tags.values():
        try:
            engine.client.images.remove(tag)
        except Exception:
            pass


def test_list_names_kinds_and_users(extra_tags):
    entries = {e.tag: e for e in api.images()}
    assert entries[extra_tags["old"]].kind == "node" and not entries[extra_tags["old"]].current
    assert entries[extra_tags["unused"]].kind == "lab" and entries[extra_tags["unused"]].used_by == ()
    lab = "prune-" + extra_tags["running"].split("running")[1]
    assert f"{lab}/n1" in entries[extra_tags["running"]].used_by
    current = [e for e in entries.values() if e.kind == "node" and e.current]
    assert len(current) == 1 and current[0].tag == api.default_engine().image_wanted()


def test_prune_removes_only_unused_and_keeps_current(engine, extra_tags):
    # Only these tags: the test must not remove images other tests on this engine made.
    result = labctl("image", "prune", extra_tags["old"], extra_tags["unused"], extra_tags["running"])
    assert result.returncode == 0, result.stderr
    remaining = {t for image in engine.client.images.list() for t in image.tags}
    assert extra_tags["old"] not in remaining and extra_tags["unused"] not in remaining
    assert extra_tags["running"] in remaining  # a container still runs it
    assert api.default_engine().image_wanted() in remaining  # the current node image stays without --all
    assert f"removed {extra_tags['old']}" in result.stdout


def test_prune_refuses_what_labctl_did_not_make():
    result = labctl("image", "prune", "debian:bookworm-slim")
    assert result.returncode == 2
    assert "not an image labctl made: debian:bookworm-slim" in result.stderr and "Traceback" not in result.stderr
