"""A short-lived helper in a node's network namespace, for what the node itself may not do.

/proc/sys is read-only in nodes, and making it writable there would let a node
change the host's kernel.* settings. The helper shares only the node's network
namespace, runs only labctl's own code on the node image, and has no read-only
/proc/sys, so it can write the node's net.* sysctls.
"""

from __future__ import annotations

from typing import Sequence

import docker.errors

from .. import ExecResult
from .client import reason
from .labels import helper

TIMEOUT = 30


def run(api, ident: str, image: str, argv: Sequence[str]) -> ExecResult:
    host_config = api.create_host_config(network_mode=f"container:{ident}", cap_add=["NET_ADMIN"])
    # What `--security-opt systempaths=unconfined` means: no read-only /proc/sys in this helper.
    host_config["ReadonlyPaths"], host_config["MaskedPaths"] = [], []
    container = None
    try:
        container = api.create_container(image, list(argv), labels=helper("sysctl"), host_config=host_config)["Id"]
        api.start(container)
        code = api.wait(container, timeout=TIMEOUT)["StatusCode"]
        return ExecResult(code, api.logs(container, stdout=True, stderr=False).decode(errors="replace"),
                          api.logs(container, stdout=False, stderr=True).decode(errors="replace"))
    except docker.errors.APIError as exc:
        return ExecResult(-1, "", reason(exc))
    finally:
        if container:
            api.remove_container(container, force=True)
