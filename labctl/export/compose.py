"""A lab as a Compose project: ``labctl export compose``.

The templates in ``compose-templates/`` (or the user's own) are rendered from a
context made of the lab's plan, with the same Docker facts labctl's own engine
uses: network and container names, the bridge names the host firewall rule
matches, internal networks, fixed addresses, capabilities, sysctls, and the
labels ``up``, ``status`` and ``run`` find a lab by. A node's start-up runs the
node agent's own ``setup`` with the node's planned setup (names, offloads, the
lab's routes in place of Docker's default route), so a lab brought up by Compose
is the lab labctl would have brought up, and ``labctl run`` keeps it as it is.

Pure: no engine is touched here; the caller gives the image tag and the plan.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import jinja2
import jinja2.sandbox
import yaml

from ..agent import protocol
from ..engine.docker import hostfw
from ..engine.docker.deploy import CAPABILITIES, plan_digest
from ..engine.docker.labels import (LABEL_LINK, LABEL_NODE, LABEL_ROLE, LABEL_SOURCE, LABEL_SPEC, LABEL_STATE, bridge_name, container_name,
                                    helper, identity, network_name, record_name)
from ..errors import Location, UserError
from ..nodes import agent_files
from ..plan import LabPlan, NodePlan

TEMPLATE_SUFFIX = ".j2"
# `dot-env.j2` renders to `.env`: a template directory without hidden files.
DOT_PREFIX = "dot-"
MAIN_TEMPLATE = "compose.yaml.j2"
HOST_FIREWALL_SERVICE = "labctl-host-firewall"
AGENT_MOUNT = protocol.AGENT_HOME
AGENT_DIR = "labctl-agent"  # beside compose.yaml, for nodes on an image of their own
READY_FILE = "/run/labctl-ready"
# The node's main process: the agent's setup with the node's plan, then stay alive as labctl's
# nodes do. Docker attaches every network before it starts the command. Compose would read
# `$` as its own variables: `$$` is a literal `$` there (the quote filter doubles them).
STARTUP = f'{{setup}} "$1" || exit 1; touch {READY_FILE}; exec sleep infinity'


class TemplateError(UserError):
    """A compose template could not be rendered: names the template, line and variable."""


@dataclass(frozen=True)
class Rendered:
    files: dict[str, str]  # path relative to the output directory -> text
    templates: Path


def template_dir() -> Path:
    """The built-in templates: beside the package in a checkout (and an editable install),
    inside it in a wheel (pyproject maps compose-templates/ to labctl/compose_templates)."""
    here = Path(__file__).resolve().parent.parent
    for candidate in (here.parent / "compose-templates", here / "compose_templates"):
        if (candidate / MAIN_TEMPLATE).is_file():
            return candidate
    raise UserError("labctl's compose templates are missing from this installation",
                    hint="reinstall labctl, or give your own with --templates DIR")


def compose_context(plan: LabPlan, image: str, *, description: str = "") -> dict[str, Any]:
    """Everything a template may use. Documented in compose-templates/README.md."""
    links = [{
        "name": link.name,
        "key": link.name,
        "network": network_name(plan.key, link.name),
        "bridge": bridge_name(network_name(plan.key, link.name)),
        "subnet": str(link.subnet),
        "gateway": str(link.reserved),
        "endpoints": list(link.endpoints),
        "labels": {**identity(plan.key), LABEL_LINK: link.name, LABEL_SPEC: link.spec_hash(), LABEL_SOURCE: plan.source},
    } for link in plan.links]
    nodes = [_node_context(plan, node, image) for node in plan.nodes]
    digest = plan_digest(plan, image)
    if any(n["name"] == HOST_FIREWALL_SERVICE for n in nodes):
        raise UserError(f"a node is called {HOST_FIREWALL_SERVICE}, the name of the exported host firewall service",
                        hint="rename that node in the lab file")
    return {
        "lab": {"name": plan.lab, "description": description, "source": plan.source, "params": dict(plan.params)},
        # Compose project names take no dots; lab names take no '_': one project per lab instance.
        "project": f"labctl-{plan.key.replace('.', '_')}",
        "image": image,
        "capabilities": list(CAPABILITIES),
        "links": links,
        "nodes": nodes,
        "agent_dir": AGENT_DIR if any(n["agent_mounted"] for n in nodes) else None,
        "host_firewall": {
            "service": HOST_FIREWALL_SERVICE,
            "image": image,
            "command": ["sh", "-c", hostfw.script()],
            "capabilities": ["NET_ADMIN"],
            # As the engine labels its own host-firewall helper: not a node of any lab.
            "labels": helper("host-firewall"),
        },
        "ready_file": READY_FILE,
        # The record labctl's engine keeps of a complete deploy (a volume with labels, no data), declared
        # here so that Compose owns it: `docker-compose down -v` removes it with the rest.
        "record": {"key": "labctl-record", "name": record_name(plan.key, digest),
                   "labels": {**identity(plan.key), LABEL_SOURCE: plan.source, LABEL_STATE: digest}},
    }


def _node_context(plan: LabPlan, node: NodePlan, image: str) -> dict[str, Any]:
    own_image = node.image is not None
    setup = json.dumps(node.setup(image).to_json(), sort_keys=True)
    return {
        "name": node.name,
        "service": node.name,
        "container": container_name(plan.key, node.name),
        "hostname": node.name,
        "role": node.role,
        "image": node.image or image,
        "agent_mounted": own_image,
        "networks": [{"key": i.link, "link": i.link, "interface": i.name, "address": str(i.address.ip),
                      "prefix": i.address.network.prefixlen} for i in node.interfaces],
        "routes": [{"to": r.to, "via": str(r.via), "dev": r.dev} for r in node.routes],
        "sysctls": dict(node.sysctls),
        # The labels the engine gives its own nodes: the spec hash is what `up` and `run` compare.
        "labels": {**identity(plan.key), LABEL_NODE: node.name, LABEL_SPEC: node.spec_hash(image),
                   LABEL_SOURCE: plan.source, LABEL_ROLE: node.role},
        "setup": node.setup(image).to_json(),
        "command": ["sh", "-c", STARTUP.format(setup=" ".join(protocol.command_line("setup"))), node.name, setup],
        "healthcheck": ["CMD", "test", "-e", READY_FILE],
    }


def render(context: Mapping[str, Any], templates: Path | None = None) -> Rendered:
    """Every ``*.j2`` in the template directory, rendered; compose.yaml must come out as YAML."""
    directory = Path(templates) if templates is not None else template_dir()
    if not directory.is_dir():
        raise UserError(f"template directory {directory} does not exist")
    if not (directory / MAIN_TEMPLATE).is_file():
        raise UserError(f"{directory} has no {MAIN_TEMPLATE}", hint="a template directory holds compose.yaml.j2 (and any other *.j2)")
    env = jinja2.sandbox.SandboxedEnvironment(loader=jinja2.FileSystemLoader(str(directory)), undefined=jinja2.StrictUndefined,
                                              keep_trailing_newline=True, autoescape=False, trim_blocks=True, lstrip_blocks=True)
    env.filters["quote"] = quote
    files: dict[str, str] = {}
    for path in sorted(directory.rglob(f"*{TEMPLATE_SUFFIX}")):
        name = path.relative_to(directory).as_posix()
        files[_output_name(name)] = _render_one(env, directory, name, context)
    compose = files[_output_name(MAIN_TEMPLATE)]
    try:
        parsed = yaml.safe_load(compose)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise TemplateError(f"{MAIN_TEMPLATE} rendered to invalid YAML: {getattr(exc, 'problem', None) or exc}",
                            location=Location(directory / MAIN_TEMPLATE, None),
                            hint=f"line {mark.line + 1} of the rendered compose.yaml" if mark else None) from None
    if not isinstance(parsed, dict) or not isinstance(parsed.get("services"), dict):
        raise TemplateError(f"{MAIN_TEMPLATE} rendered to a file without services", location=Location(directory / MAIN_TEMPLATE))
    return Rendered(files, directory)


def _output_name(template: str) -> str:
    parent, _, base = template.rpartition("/")
    base = base[: -len(TEMPLATE_SUFFIX)]
    if base.startswith(DOT_PREFIX):
        base = "." + base[len(DOT_PREFIX):]
    return f"{parent}/{base}" if parent else base


def _render_one(env: jinja2.Environment, directory: Path, name: str, context: Mapping[str, Any]) -> str:
    try:
        return env.get_template(name).render(**context)
    except jinja2.TemplateSyntaxError as exc:
        where = Path(exc.filename) if exc.filename else directory / name
        raise TemplateError(f"template syntax error: {exc.message}", location=Location(where, exc.lineno)) from None
    except jinja2.UndefinedError as exc:
        where, line = _template_frame(exc, directory / name)
        raise TemplateError(f"undefined variable: {exc.message}", location=Location(where, line),
                            hint="the variables a template may use are listed in compose-templates/README.md") from None
    except jinja2.exceptions.SecurityError as exc:
        where, line = _template_frame(exc, directory / name)
        raise TemplateError(f"not allowed in a template: {exc}", location=Location(where, line)) from None
    except jinja2.TemplateError as exc:
        where, line = _template_frame(exc, directory / name)
        raise TemplateError(f"template error: {exc}", location=Location(where, line)) from None


def _template_frame(exc: BaseException, default: Path) -> tuple[Path, int | None]:
    """The innermost template frame of a render error: Jinja2 rewrites tracebacks so the
    frames of a template carry its file name and line (an included template's own)."""
    where, line = default, None
    tb = exc.__traceback__
    while tb is not None:
        filename = tb.tb_frame.f_code.co_filename
        if filename.endswith(TEMPLATE_SUFFIX) or filename == "<template>":
            where, line = (Path(filename) if filename != "<template>" else default), tb.tb_lineno
        tb = tb.tb_next
    return where, line


def quote(value: Any) -> str:
    """A value as YAML Compose reads literally: JSON (a subset of YAML), ``$`` doubled."""
    return json.dumps(_dollars(value), sort_keys=False)


def _dollars(value: Any) -> Any:
    if isinstance(value, jinja2.Undefined):
        str(value)  # StrictUndefined: raises the error naming the variable, at the template's line
    if isinstance(value, str):
        return value.replace("$", "$$")
    if isinstance(value, Mapping):
        return {_dollars(k): _dollars(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_dollars(v) for v in value]
    return value


def write(rendered: Rendered, output: Path, context: Mapping[str, Any]) -> list[Path]:
    """Write the rendered files (and the agent for nodes on their own image) into ``output``."""
    output.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in rendered.files.items():
        path = output / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written.append(path)
    if context.get("agent_dir"):
        for name, data in agent_files().items():
            path = output / context["agent_dir"] / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            written.append(path)
    return written
