"""Let frames cross a lab bridge even when the host filters bridged traffic.

With br_netfilter on (net.bridge.bridge-nf-call-iptables=1, common on
Docker hosts), bridged frames go through the host's FORWARD chain, where
Docker's isolation rules for internal networks drop every packet whose
source or destination lies outside the bridge's own subnet. Routed lab
traffic always has such an address (the client talks to the server's
subnet across the client's link), so without this rule no packet would
cross a router. DOCKER-USER is the chain Docker keeps for the operator's
own rules. The rule matches only frames being bridged (physdev), and only
on labctl's bridges, so nothing routed through the host is let through.

Run by the engine in a short-lived helper on the host's network namespace.
"""

from __future__ import annotations

import subprocess

RULE = ["-m", "physdev", "--physdev-is-bridged", "-i", "lcbr+", "-o", "lcbr+",
        "-m", "comment", "--comment", "labctl: frames bridged within a lab link", "-j", "ACCEPT"]


def ensure() -> dict:
    done = []
    for tool in ("iptables-nft", "iptables-legacy"):
        listed = subprocess.run([tool, "-w", "-S", "DOCKER-USER"], capture_output=True, text=True)
        if listed.returncode != 0:
            continue  # this backend holds no Docker chains
        # Also at the top of FORWARD itself: when Docker creates a network it takes the jump to
        # DOCKER-USER out and puts it back on top, and frames crossing in between would meet
        # the isolation rules alone.
        for chain in ("DOCKER-USER", "FORWARD"):
            present = subprocess.run([tool, "-w", "-C", chain, *RULE], capture_output=True, text=True)
            if present.returncode != 0:
                subprocess.run([tool, "-w", "-I", chain, "1", *RULE], check=True, capture_output=True, text=True)
                done.append(f"{tool} {chain}: rule added")
            else:
                done.append(f"{tool} {chain}: rule present")
    return {"ok": True, "actions": done, "docker_user_chain": bool(done)}
