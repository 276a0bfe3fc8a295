"""What labctl's Docker objects are called and carry: the engine's own record of a lab.

Labels are the source of truth: every network and container carries the
owner, lab, node or link and a hash of its planned spec, so ``deploy`` can
reconcile, ``destroy`` removes exactly a lab's objects, and a crashed run is
cleaned up from what the engine itself says.
"""

from __future__ import annotations

import hashlib

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
LABEL_STATE = "org.labctl.state"        # on a lab's record: the state_digest of its last complete deploy
# Short-lived helpers are labelled as labs of their own, which `labctl status` never lists.
HELPER_LABS = {"host-firewall": "__host__", "sysctl": "__helper__", "probe": "__probe__"}
# Linux caps interface names at 15 bytes; the prefix lets one host rule cover every lab bridge.
BRIDGE_PREFIX = "lcbr-"


def container_name(lab: str, node: str) -> str:
    return f"labctl-{lab}-{node}"


def network_name(lab: str, link: str) -> str:
    return f"labctl-{lab}-{link}"


def record_name(lab: str, digest: str) -> str:
    return f"labctl-{lab}-record-{digest}"


def bridge_name(network: str) -> str:
    return BRIDGE_PREFIX + hashlib.sha256(network.encode()).hexdigest()[:10]


def of_lab(lab: str | None) -> str:
    """The label filter for a lab's objects (every labctl object when None)."""
    return f"{LABEL_LAB}={lab}" if lab else f"{LABEL_OWNER}={OWNER}"


def helper(role: str) -> dict[str, str]:
    return {LABEL_OWNER: OWNER, LABEL_LAB: HELPER_LABS[role], LABEL_ROLE: role}
