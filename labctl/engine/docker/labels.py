"""What labctl's Docker objects are called and carry: the engine's own record of a lab.

Labels are the source of truth: every network and container carries the
owner, lab, node or link and a hash of its planned spec, so ``deploy`` can
reconcile, ``destroy`` removes exactly a lab's objects, and a crashed run is
cleaned up from what the engine itself says.
"""

from __future__ import annotations

import hashlib

from ...instances import split_key

OWNER = "labctl"
LABEL_OWNER = "org.labctl.owner"
LABEL_LAB = "org.labctl.lab"
LABEL_NODE = "org.labctl.node"
LABEL_LINK = "org.labctl.link"
LABEL_SPEC = "org.labctl.spec"
LABEL_SOURCE = "org.labctl.source"
LABEL_ROLE = "org.labctl.role"
LABEL_INSTANCE = "org.labctl.instance"  # with lab and source: a lab's identity on the engine
LABEL_DEPLOY = "org.labctl.deploy"      # the deploy that made an object: rollback finds them all by it
LABEL_WIRING = "org.labctl.wiring"      # on a node: "host" (links wired from the host) or "docker" (Docker networks)
LABEL_STATE = "org.labctl.state"        # on a lab's record: the state_digest of its last complete deploy
# Short-lived helpers are labelled as labs of their own, which `labctl status` never lists.
HELPER_LABS = {"host-firewall": "__host__", "sysctl": "__helper__", "probe": "__probe__"}
# Linux caps interface names at 15 bytes; the prefix lets one host rule cover every lab bridge.
BRIDGE_PREFIX = "lcbr-"
# The host ends of the veths of links wired from the host (hostlinks.py): one per node interface.
VETH_PREFIX = "lcve-"


# Names are made from a lab instance's key (``labctl.instances.lab_key``): the lab's name for the
# default instance, LAB.INSTANCE for another, so no two instances' objects share a name.

def container_name(key: str, node: str) -> str:
    return f"labctl-{key}-{node}"


def network_name(key: str, link: str) -> str:
    return f"labctl-{key}-{link}"


def record_name(key: str, digest: str) -> str:
    return f"labctl-{key}-record-{digest}"


def bridge_name(network: str) -> str:
    """A Linux bridge's name (at most 15 bytes) for a network name: unique as the network name is."""
    return BRIDGE_PREFIX + hashlib.sha256(network.encode()).hexdigest()[:10]


def veth_name(key: str, node: str, link: str) -> str:
    """The host end of a node's interface on a link: from the node's container name, so it is as unique."""
    return VETH_PREFIX + hashlib.sha256(f"{container_name(key, node)}|{link}".encode()).hexdigest()[:10]


def of_lab(key: str | None) -> list[str]:
    """The label filter for a lab instance's objects (every labctl object when None)."""
    if not key:
        return [f"{LABEL_OWNER}={OWNER}"]
    lab, instance = split_key(key)
    return [f"{LABEL_LAB}={lab}", f"{LABEL_INSTANCE}={instance}"]


def identity(key: str) -> dict[str, str]:
    """The labels that say which lab instance an object belongs to."""
    lab, instance = split_key(key)
    return {LABEL_OWNER: OWNER, LABEL_LAB: lab, LABEL_INSTANCE: instance}


def key_of(labels: dict[str, str]) -> str | None:
    """The key of the lab instance an object's labels name (None: not a lab's)."""
    from ...instances import DEFAULT_INSTANCE, lab_key

    lab = labels.get(LABEL_LAB)
    return lab_key(lab, labels.get(LABEL_INSTANCE) or DEFAULT_INSTANCE) if lab else None


def helper(role: str) -> dict[str, str]:
    return {LABEL_OWNER: OWNER, LABEL_LAB: HELPER_LABS[role], LABEL_ROLE: role}
