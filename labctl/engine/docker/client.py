"""Reaching the Docker engine, through docker-py (never the docker CLI)."""

from __future__ import annotations

import os

import docker
import docker.errors
import requests.exceptions

from ...environment import check_docker_host
from ...errors import EngineError

PARALLEL = 8  # containers created, set up or removed at once


def connect() -> docker.DockerClient:
    check_docker_host()  # a malformed DOCKER_HOST is docker-py's ValueError: say what it is instead
    try:
        client = docker.from_env(timeout=120, max_pool_size=PARALLEL + 4)
        client.ping()
    except (docker.errors.DockerException, requests.exceptions.RequestException, ValueError) as exc:
        raise EngineError(f"cannot reach the Docker engine at {engine_host()}: {reason(exc)}",
                          hint="is dockerd running (systemctl start docker) and may you use its socket?") from None
    return client


def engine_host() -> str:
    return os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")


def engine_is_local() -> bool:
    """Whether the engine runs on this machine (so its nodes share this kernel)."""
    return engine_host().startswith("unix://")


def reason(exc: BaseException) -> str:
    text = getattr(exc, "explanation", None) or str(exc)
    return str(text).strip()
