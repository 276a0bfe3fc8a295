"""The node image: build context, content hash, and the offline base.

The tag carries a hash of everything that goes into the image (Dockerfile,
package list, agent code), so a changed agent rebuilds by itself and an
unchanged one is reused. When no Debian base can be found or pulled, the
base is bootstrapped offline: debootstrap on the host into a folder (OS
packages come in here, from the host's Debian mirror), then imported. The
image build itself then needs no network inside containers.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Callable

import docker
import docker.errors

from ...errors import EngineError
from .. import ImageEntry, ImageInfo, UnknownPackage
from ...nodes import ROOT, agent_files, tar_of

DOCKER_DIR = ROOT / "docker"
NODE_REPO = "labctl-node"
BASE_REPO = "labctl-base"
REGISTRY_BASE = "debian:bookworm-slim"
SUITE = "bookworm"

Progress = Callable[[str], None]
PER_PACKAGE = re.compile(r"^(Retrieving|Validating|Extracting|Unpacking|Configuring) \S+( \S+)?$")


def _quiet(_: str) -> None:
    pass


def packages() -> list[str]:
    lines = (DOCKER_DIR / "packages.txt").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def context_files() -> dict[str, bytes]:
    """Files of the build context by their path in it."""
    return {
        "Dockerfile": (DOCKER_DIR / "Dockerfile").read_bytes(),
        "packages.txt": (DOCKER_DIR / "packages.txt").read_bytes(),
        **agent_files(),
    }


def content_hash(files: dict[str, bytes], base: str = "") -> str:
    digest = hashlib.sha256(base.encode())
    for name in sorted(files):
        digest.update(name.encode() + b"\0" + hashlib.sha256(files[name]).digest())
    return digest.hexdigest()[:12]


def expected_tag() -> str:
    """The node image tag for the code in this checkout (base-independent: the base is a build arg)."""
    return f"{NODE_REPO}:{content_hash(context_files())}"


def has_image(client: docker.DockerClient, ref: str) -> bool:
    try:
        client.images.get(ref)
        return True
    except docker.errors.ImageNotFound:
        return False


def offline_base_tag() -> str:
    return f"{BASE_REPO}:{SUITE}-{hashlib.sha256(' '.join(packages()).encode()).hexdigest()[:12]}"


def choose_base(client: docker.DockerClient, offline: bool, progress: Progress) -> tuple[str, str]:
    """Return (base reference, how it was obtained). Normal base first, offline bootstrap last."""
    if explicit := os.environ.get("LABCTL_BASE_IMAGE"):
        return explicit, "explicit"
    if not offline:
        if has_image(client, REGISTRY_BASE):
            return REGISTRY_BASE, "local"
        progress(f"pulling {REGISTRY_BASE}")
        try:
            repo, tag = REGISTRY_BASE.split(":")
            client.images.pull(repo, tag=tag)
            return REGISTRY_BASE, "pulled"
        except docker.errors.APIError as exc:
            progress(f"cannot pull {REGISTRY_BASE} ({_short(exc)}); using the offline bootstrap")
    tag = offline_base_tag()
    if has_image(client, tag):
        return tag, "offline-bootstrap"
    bootstrap_base(client, tag, progress)
    return tag, "offline-bootstrap"


def _short(exc: Exception) -> str:
    text = str(getattr(exc, "explanation", None) or exc)
    return text if len(text) < 120 else text[:117] + "..."


def debian_mirror() -> str:
    """The host's own Debian mirror: the one place this machine is known to reach."""
    if mirror := os.environ.get("LABCTL_DEBIAN_MIRROR"):
        return mirror
    for source in [Path("/etc/apt/sources.list.d/debian.sources"), Path("/etc/apt/sources.list")]:
        if source.is_file():
            text = source.read_text()
            for pattern in (r"^URIs:\s*(\S+/debian)/?\s*$", r"^deb\s+(?:\[[^\]]*\]\s+)?(\S+/debian)/?\s+"):
                match = re.search(pattern, text, re.MULTILINE)
                if match:
                    return match.group(1)
    return "http://deb.debian.org/debian"


def bootstrap_base(client: docker.DockerClient, tag: str, progress: Progress) -> None:
    debootstrap = shutil.which("debootstrap")
    if debootstrap is None:
        raise EngineError("no Debian base image and no debootstrap to make one offline",
                          hint="install it (apt-get install debootstrap), or load a Debian image with `docker load`")
    if os.geteuid() != 0:
        raise EngineError("the offline bootstrap needs root (debootstrap makes device nodes and chroots)",
                          hint="run `sudo labctl image build --offline` once")
    mirror = debian_mirror()
    with tempfile.TemporaryDirectory(prefix="labctl-bootstrap-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        progress(f"debootstrap {SUITE} from {mirror} (OS packages come in here, on the host)")
        cmd = [debootstrap, "--variant=minbase", f"--include={','.join(packages())}", SUITE, str(rootfs), mirror]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        tail: list[str] = []
        assert proc.stdout is not None
        for line in proc.stdout:
            tail = (tail + [line.rstrip()])[-15:]
            # Forward the phases, not one line per package.
            if line.startswith("I: ") and not PER_PACKAGE.match(line[3:].strip()):
                progress(line[3:].strip())
        if proc.wait() != 0:
            raise EngineError(f"debootstrap failed (exit {proc.returncode}):\n" + "\n".join(tail),
                              hint="check that the host reaches its Debian mirror, or set LABCTL_DEBIAN_MIRROR")
        # Keep the image small: package lists and caches are not needed in nodes.
        for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
            shutil.rmtree(rootfs / junk, ignore_errors=True)
        progress(f"importing the bootstrapped root as {tag}")
        tar_path = Path(tmp) / "rootfs.tar"
        subprocess.run(["tar", "-C", str(rootfs), "--numeric-owner", "-cf", str(tar_path), "."], check=True)
        repo, version = tag.split(":")
        with open(tar_path, "rb") as fh:
            client.api.import_image_from_data(fh, repository=repo, tag=version,
                                              changes=['CMD ["sleep", "infinity"]', "ENV LANG=C.UTF-8"])
    if not has_image(client, tag):
        raise EngineError(f"importing {tag} did not produce an image")


def _build(client: docker.DockerClient, files: dict[str, bytes], tag: str, progress: Progress, failed: str, **options) -> None:
    """One build from an in-memory context: Docker's "Step" lines as progress, its errors as ``failed: why``."""
    try:
        for chunk in client.api.build(fileobj=tar_of(files), custom_context=True, tag=tag, rm=True, forcerm=True,
                                      decode=True, **options):
            if "error" in chunk:
                raise EngineError(f"{failed}: {chunk['error'].strip()}")
            if line := chunk.get("stream", "").strip():
                if line.startswith("Step "):
                    progress(line)
    except docker.errors.APIError as exc:
        raise EngineError(f"{failed}: {_short(exc)}") from None


def ensure_node_image(client: docker.DockerClient, *, offline: bool = False, rebuild: bool = False,
                      progress: Progress = _quiet) -> ImageInfo:
    files = context_files()
    tag = f"{NODE_REPO}:{content_hash(files)}"
    if not rebuild and has_image(client, tag):
        image = client.images.get(tag)
        labels = image.labels or {}
        return ImageInfo(tag, labels.get("org.labctl.base", "?"), labels.get("org.labctl.base-kind", "?"), built=False)
    base, kind = choose_base(client, offline, progress)
    progress(f"building {tag} on {base} ({kind})")
    _build(client, files, tag, progress, "image build failed", buildargs={"BASE": base},
           labels={"org.labctl.owner": "labctl", "org.labctl.base": base, "org.labctl.base-kind": kind})
    return ImageInfo(tag, base, kind, built=True)


# --- lab image variants: the node image plus a lab's Debian packages ----------------------------

VARIANT_REPO = "labctl-lab"
VARIANT_DOCKERFILE = """\
FROM {base}
COPY debs/ /tmp/labctl-debs/
# No network here: every package (with its dependencies) was fetched on the host's side.
# No service starts while packages are installed (there is no init to run it).
RUN set -eu; printf '#!/bin/sh\\nexit 101\\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; \\
    if ls /tmp/labctl-debs/*.deb >/dev/null 2>&1; then dpkg -i /tmp/labctl-debs/*.deb; fi; \\
    rm -rf /tmp/labctl-debs /usr/sbin/policy-rc.d
"""


def variant_tag(base: str, packages: list[str]) -> str:
    """Cached by the content hash of the package list (and of the node image it builds on)."""
    blob = base + "\n" + "\n".join(sorted(set(packages)))
    return f"{VARIANT_REPO}:{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


def _apt(argv: list[str]) -> subprocess.CompletedProcess:
    tool = shutil.which(argv[0])
    if tool is None:
        raise EngineError(f"lab packages need {argv[0]} on this host (a Debian {SUITE} host fetches them, as the offline bootstrap does)",
                          hint="run labctl on a Debian host, or add the packages to your own image (image: in the lab file)")
    return subprocess.run([tool, *argv[1:]], capture_output=True, text=True)


def check_packages(packages: list[str]) -> None:
    """Every package is one the host's archive knows; raises ``UnknownPackage`` naming the first that is not."""
    for package in packages:
        shown = _apt(["apt-cache", "show", "--no-all-versions", package])
        if shown.returncode != 0 or not shown.stdout.strip():
            raise UnknownPackage(package)


def image_dpkg_status(client: docker.DockerClient, image: str) -> bytes:
    """What the image has installed (its dpkg status file), for the host's apt to solve against."""
    return client.containers.run(image, ["cat", "/var/lib/dpkg/status"], network_mode="none", remove=True,
                                 labels={"org.labctl.owner": "labctl", "org.labctl.lab": "__probe__"})


def fetch_debs(packages: list[str], status: bytes, into: Path) -> list[Path]:
    """The .debs ``packages`` need on a system whose dpkg status is ``status``: the host's apt solves
    against the image's installed packages (not the host's) and downloads only what is missing."""
    work = into / "apt"
    (work / "archives" / "partial").mkdir(parents=True)
    (work / "status").write_bytes(status)
    options = {"Dir::State::status": work / "status", "Dir::Cache::archives": work / "archives",
               "Dir::Cache::pkgcache": "", "Dir::Cache::srcpkgcache": "", "APT::Sandbox::User": "root", "Debug::NoLocking": "1"}
    argv = ["apt-get", "install", "-y", "-q", "--download-only", "--no-install-recommends"]
    for key, value in options.items():
        argv += ["-o", f"{key}={value}"]
    result = _apt([*argv, *packages])
    if result.returncode != 0:
        raise EngineError(f"fetching {', '.join(packages)} on the host failed: {(result.stderr or result.stdout).strip()[-500:]}",
                          hint="check that the host reaches its Debian mirror (apt-get update)")
    return sorted((work / "archives").glob("*.deb"))


def ensure_variant(client: docker.DockerClient, base: str, packages: list[str], *, rebuild: bool = False,
                   progress: Progress = _quiet) -> str:
    """The node image ``base`` plus ``packages``: built once, found again by the hash of the list.

    OS packages come in on the host's side (its apt fetches the .debs from its Debian mirror);
    the build itself runs with no network, like the node image's.
    """
    wanted = sorted(set(packages))
    tag = variant_tag(base, wanted)
    if not rebuild and has_image(client, tag):
        return tag
    check_packages(wanted)
    files = {"Dockerfile": VARIANT_DOCKERFILE.format(base=base).encode()}
    with tempfile.TemporaryDirectory(prefix="labctl-debs-") as tmp:
        debs = fetch_debs(wanted, image_dpkg_status(client, base), Path(tmp))
        progress(f"building {tag}: {', '.join(wanted)} on {base} "
                 + (f"({len(debs)} .deb(s) fetched on the host)" if debs else "(all already in the image)"))
        for deb in debs:
            files[f"debs/{deb.name}"] = deb.read_bytes()
        files.setdefault("debs/.keep", b"")
        _build(client, files, tag, progress, f"building the lab image with {', '.join(wanted)} failed", network_mode="none",
               labels={"org.labctl.owner": "labctl", "org.labctl.base": base, "org.labctl.packages": " ".join(wanted)})
    return tag


# --- what labctl made, and cleaning it up -------------------------------------------------------

def _kind(tag: str) -> str | None:
    repo = tag.split(":", 1)[0]
    return {NODE_REPO: "node", BASE_REPO: "base", VARIANT_REPO: "lab"}.get(repo)


def list_images(client: docker.DockerClient, users: dict[str, list[str]]) -> list[ImageEntry]:
    """labctl's images by tag (node images, offline bases, lab variants). ``users``: image id -> the
    "lab/node" of each container that runs it. "current" marks the node image this code wants and
    the base it was built on: pruning keeps them unless told otherwise."""
    current = expected_tag()
    current_base = None
    entries: list[ImageEntry] = []
    try:
        images = client.images.list()
    except docker.errors.APIError as exc:
        raise EngineError(f"cannot list images: {_short(exc)}") from None
    for image in images:
        labels = image.labels or {}
        for tag in image.tags:
            if tag == current:
                current_base = labels.get("org.labctl.base")
    for image in images:
        labels = image.labels or {}
        for tag in sorted(image.tags):
            kind = _kind(tag)
            if kind is None:
                continue
            packages = tuple(labels.get("org.labctl.packages", "").split()) if kind == "lab" else ()
            entries.append(ImageEntry(tag, kind, int(image.attrs.get("Size") or 0), str(image.attrs.get("Created", ""))[:19],
                                      packages, tag in (current, current_base), tuple(sorted(users.get(image.id, ())))))
    order = {"node": 0, "lab": 1, "base": 2}
    return sorted(entries, key=lambda e: (order[e.kind], not e.current, e.tag))


def remove_image(client: docker.DockerClient, tag: str) -> None:
    if _kind(tag) is None:
        raise EngineError(f"{tag} is not an image labctl made; labctl removes only its own")
    try:
        client.images.remove(tag, noprune=False)
    except docker.errors.ImageNotFound:
        return
    except docker.errors.APIError as exc:
        raise EngineError(f"cannot remove {tag}: {_short(exc)}") from None
