"""Let frames cross a lab bridge even when the host filters bridged traffic.

With br_netfilter on (net.bridge.bridge-nf-call-iptables=1, common on
Docker hosts), bridged frames go through the host's FORWARD chain, where
Docker's isolation rules for internal networks drop every packet whose
source or destination lies outside the bridge's own subnet. Routed lab
traffic always has such an address (the client talks to the server's
subnet across the client's link), so without this rule no packet would
cross a router. DOCKER-USER is the chain Docker keeps for the operator's
own rules. The rule matches only frames being bridged (physdev), and only
on labctl's bridges, so nothing routed through the host is let through; two
more drop what a lab bridge sends the host itself, or the host would route on.

One shell script does it, run by ``sh`` on the engine's own host when labctl
runs there as root (milliseconds), or else in a short-lived helper container
on the host's network namespace.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from typing import Callable

from .labels import BRIDGE_PREFIX

RULE = ["-m", "physdev", "--physdev-is-bridged", "-i", f"{BRIDGE_PREFIX}+", "-o", f"{BRIDGE_PREFIX}+",
        "-m", "comment", "--comment", "labctl: frames bridged within a lab link", "-j", "ACCEPT"]
# Containment, on the host itself (a node's own routes are the node's to change, these are not):
# whatever comes in from a lab bridge and is not bridged within it would be routed by the host,
# out of the lab (FORWARD, right after RULE); and nothing from a lab bridge is for the host (INPUT).
ROUTED_OUT = ["-i", f"{BRIDGE_PREFIX}+", "-m", "comment", "--comment", "labctl: nothing routed out of a lab", "-j", "DROP"]
TO_HOST = ["-i", f"{BRIDGE_PREFIX}+", "-m", "comment", "--comment", "labctl: nothing from a lab to the host", "-j", "DROP"]
TO_HOST_COMMENT = "labctl: nothing from a lab to the host"
# Docker moves its jumps whenever any network is created (seen with 20.10: the jump to
# DOCKER-ISOLATION-STAGE-1 is deleted and put back on top of FORWARD, then the jump to
# DOCKER-USER). In between, for some milliseconds, frames meet the isolation rules of internal
# networks before RULE, and a routed lab packet (its source or destination outside the link's
# subnet) is dropped: about 2% of a 5 ms ping across a router while networks come and go. So
# the isolation chains themselves begin by letting bridged lab frames through (RETURN: back
# to FORWARD, where DOCKER-USER or Docker's own accept for the bridge takes them). Docker
# puts a new network's drops on top of that chain, so every deploy moves this rule back to
# the top once its networks exist: in one iptables-restore transaction, never absent.
ISOLATION_CHAINS = ("DOCKER-ISOLATION-STAGE-1", "DOCKER-INTERNAL")  # Docker 20-27, and 28's
SKIP_COMMENT = "labctl: bridged lab frames pass Docker isolation"
SKIP_ISOLATION = ["-m", "physdev", "--physdev-is-bridged", "-i", f"{BRIDGE_PREFIX}+", "-o", f"{BRIDGE_PREFIX}+",
                  "-m", "comment", "--comment", SKIP_COMMENT, "-j", "RETURN"]


def script() -> str:
    """Prints one line per backend and chain: ``TOOL CHAIN: rule added`` or ``... rule present``."""
    rule, routed, to_host, skip = (" ".join(shlex.quote(word) for word in r) for r in (RULE, ROUTED_OUT, TO_HOST, SKIP_ISOLATION))
    # iptables-restore reads its own quoting: the comment in double quotes.
    restore_words = " ".join(f'"{word}"' if " " in word else word for word in SKIP_ISOLATION)
    # Also at the top of FORWARD itself: when Docker creates a network it takes the jump to
    # DOCKER-USER out and puts it back on top, and frames crossing in between would meet
    # the isolation rules alone. The drop goes right after the accept (`iptables -S` prints
    # the chain's policy or name first, so rule k is its line k+1).
    return ("set -e\n"
            "for tool in iptables-nft iptables-legacy; do\n"
            "  command -v $tool >/dev/null || continue\n"
            "  $tool -w -S DOCKER-USER >/dev/null 2>&1 || continue  # this backend holds no Docker chains\n"
            "  for chain in DOCKER-USER FORWARD; do\n"
            f"    if $tool -w -C $chain {rule} 2>/dev/null; then echo \"$tool $chain: rule present\"\n"
            f"    else $tool -w -I $chain 1 {rule}; echo \"$tool $chain: rule added\"; fi\n"
            f"    if $tool -w -C $chain {routed} 2>/dev/null; then echo \"$tool $chain: drop present\"\n"
            "    else\n"
            "      at=$($tool -w -S $chain | grep -n -F -- 'labctl: frames bridged within a lab link' | head -n 1 | cut -d: -f1)\n"
            f"      $tool -w -I $chain \"$at\" {routed}; echo \"$tool $chain: drop added\"\n"
            "    fi\n"
            "  done\n"
            f"  if $tool -w -C INPUT {to_host} 2>/dev/null; then echo \"$tool INPUT: drop present\"\n"
            f"  else $tool -w -I INPUT 1 {to_host}; echo \"$tool INPUT: drop added\"; fi\n"
            f"  for chain in {' '.join(ISOLATION_CHAINS)}; do\n"
            "    $tool -w -S $chain >/dev/null 2>&1 || continue\n"
            "    case \"$($tool -w -S $chain | sed -n 2p)\" in\n"
            f"      *{shlex.quote(SKIP_COMMENT)}*) echo \"$tool $chain: skip first\";;\n"
            f"      *) if $tool -w -C $chain {skip} 2>/dev/null; then\n"
            f"           printf '*filter\\n-D %s %s\\n-I %s 1 %s\\nCOMMIT\\n' $chain {shlex.quote(restore_words)} $chain {shlex.quote(restore_words)} | $tool-restore -w --noflush\n"
            "           echo \"$tool $chain: skip moved first\"\n"
            f"         else $tool -w -I $chain 1 {skip}; echo \"$tool $chain: skip added\"; fi;;\n"
            "    esac\n"
            "  done\n"
            "done\n")


def can_run_here(engine_is_local: bool) -> bool:
    return engine_is_local and os.geteuid() == 0 and shutil.which("iptables") is not None


def run_here() -> list[str] | None:
    """The script on this host; None when it could not run here (then a helper must)."""
    proc = subprocess.run(["sh", "-c", script()], capture_output=True, text=True)
    return proc.stdout.splitlines() if proc.returncode == 0 else None


def report(actions: list[str], progress: Callable[[str], None]) -> None:
    if any("rule added" in a for a in actions):
        progress("allowed bridged frames on lab bridges in the host's DOCKER-USER chain")
    if any("drop added" in a for a in actions):
        progress("dropped whatever lab bridges send to the host itself (INPUT) or out of the lab (FORWARD)")
