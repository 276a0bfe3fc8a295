"""Lab files -> the lab model, with every error pointing at file, line and field.

Order of work: find the file, render it through sandboxed Jinja2 with the
user's parameters, parse YAML keeping each value's line, validate against the
model, then check what the schema cannot say (names that must exist,
addresses inside their subnet, every host reachable). Nothing is created
until all of this has passed.
"""

from __future__ import annotations

import os
from itertools import product
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence, Union, get_args, get_origin

import jinja2
import yaml
from pydantic import BaseModel, ValidationError

from . import template
from .errors import LabFileError, LabNotFound, Location
from .model import Lab, Link
from .template import Rendered
from .units import shown
from .topology import forwarding_paths, links_of, neighbours, share_link, unreachable_pair  # noqa: F401 (plan imports them from here)

LAB_FILE = "lab.yaml"
BUILTIN_LABS = Path(__file__).resolve().parent.parent / "labs"

FieldPath = tuple[Union[str, int], ...]


def lab_search_path() -> list[Path]:
    """Directories holding labs by name: $LABCTL_LABS_PATH entries, then the built-in ones."""
    extra = [Path(p) for p in os.environ.get("LABCTL_LABS_PATH", "").split(os.pathsep) if p]
    return [*extra, BUILTIN_LABS]


def available_labs() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for root in lab_search_path():
        if root.is_dir():
            for child in sorted(root.iterdir()):
                if (child / LAB_FILE).is_file():
                    found.setdefault(child.name, child / LAB_FILE)
    return found


def resolve_lab_file(ref: str | Path) -> Path:
    """A lab reference is a directory, a file, or the name of a built-in lab."""
    path = Path(ref)
    if path.is_dir() and (path / LAB_FILE).is_file():
        return path / LAB_FILE
    if path.is_file():
        return path
    if path.is_dir():
        raise LabNotFound(f"{path} is a directory without a {LAB_FILE}")
    labs = available_labs()
    if str(ref) in labs:
        return labs[str(ref)]
    names = ", ".join(labs) or "none"
    raise LabNotFound(f"no lab named '{ref}' and no such file or directory", hint=f"built-in labs: {names}; or give a path to a lab directory")


@dataclass(frozen=True)
class SourceMap:
    """Line numbers of every value in a parsed YAML document, by field path."""

    file: Path | None
    lines: Mapping[FieldPath, int] = field(default_factory=dict)

    def locate(self, path: FieldPath) -> Location:
        # Fall back to the nearest enclosing value that has a line.
        for end in range(len(path), -1, -1):
            if path[:end] in self.lines:
                return Location(self.file, self.lines[path[:end]], _dotted(path) or None)
        return Location(self.file, None, _dotted(path) or None)


def _dotted(path: FieldPath) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


@dataclass(frozen=True)
class LoadedLab:
    """A validated lab and where each of its values came from."""

    lab: Lab
    source: SourceMap
    params: Mapping[str, str] = field(default_factory=dict)

    @property
    def path(self) -> Path | None:
        return self.source.file

    def error(self, path: FieldPath, message: str, hint: str | None = None) -> LabFileError:
        return LabFileError(message, location=self.source.locate(path), hint=hint)


def load_lab(ref: str | Path, params: Mapping[str, str] | None = None) -> LoadedLab:
    path = resolve_lab_file(ref)
    return load_lab_text(read_source(path), path, params or {})


def load_lab_text(text: str, path: Path | None = None, params: Mapping[str, str] | None = None) -> LoadedLab:
    params = dict(params or {})
    rendered = render_template(text, path, typed_params(params))
    data, source = parse_yaml(rendered.text, path, rendered)
    lab = validate_model(Lab, data, source)
    loaded = LoadedLab(lab, source, params)
    check_lab(loaded)
    return loaded


# --- Jinja2 ------------------------------------------------------------------

def render_template(text: str, path: Path | None, params: Mapping[str, Any]) -> Rendered:
    """Render parameters into a file: sandboxed and bounded (see labctl.template)."""
    return template.render(text, path, params)


def rendered_data(text: str, path: Path | None, params: Mapping[str, Any]) -> Any:
    """A file as the models see it: rendered with ``params`` and parsed (not yet validated)."""
    rendered = render_template(text, path, typed_params(params))
    return parse_yaml(rendered.text, path, rendered)[0]


def typed_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """-p values as data: 8080 an int, 0.5 a float, true a boolean, anything else text."""
    return {key: template.parameter_value(value) if isinstance(value, str) else value for key, value in params.items()}


# --- YAML with line numbers -------------------------------------------------

# Limits that keep any file, however written, from hanging or exhausting labctl
# (the README's "Limits" lists them for authors).
MAX_FILE_BYTES = 1_000_000   # a lab or scenario file on disk
MAX_DEPTH = 40               # mappings and lists inside each other
MAX_VALUES = 200_000         # values in a document, each alias counting what it repeats
MAX_ALIASES = 1_000          # *alias uses in a document

_PLAIN_TAGS = {f"tag:yaml.org,2002:{t}" for t in ("str", "int", "float", "bool", "null", "seq", "map")}
_STR = "tag:yaml.org,2002:str"


def read_source(path: Path) -> str:
    """A lab or scenario file's text: bounded in size, UTF-8 only."""
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise LabFileError(f"the file is {size:,} bytes; lab and scenario files are at most {MAX_FILE_BYTES:,}",
                               location=Location(path, None))
        with path.open("rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise LabNotFound(f"cannot read {path}: {exc.strerror}") from exc
    if len(data) > MAX_FILE_BYTES:
        raise LabFileError(f"the file is larger than {MAX_FILE_BYTES:,} bytes", location=Location(path, None))
    return decode_source(data, path)


def decode_source(data: bytes, path: Path | None) -> str:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise LabFileError(f"the file is not UTF-8 text (byte 0x{data[exc.start]:02x} at line {line})",
                           location=Location(path, line), hint="save it as UTF-8") from None
    if "\x00" in text:
        line = text[:text.index("\x00")].count("\n") + 1
        raise LabFileError("the file is binary, not YAML text (it holds a NUL byte)", location=Location(path, line)) from None
    return text.removeprefix("\ufeff")


def parse_yaml(text: str, path: Path | None, rendered: Rendered | None = None) -> tuple[Any, SourceMap]:
    """YAML as plain data (mappings, lists, strings, numbers, booleans, null), each value's line kept.

    Built from the parser's events, iteratively: no recursion to exhaust, aliases counted
    as what they expand to, tags other than plain data's refused, ``<<`` merge keys refused.
    ``rendered``: the template output this text is, whose printed values go back in as data.
    """
    builder = _Builder(path, rendered)
    loader = None
    try:
        loader = _EventLoader(text)
        data = builder.build(loader)
    except yaml.reader.ReaderError as exc:
        line = text[:exc.position].count("\n") + 1 if isinstance(exc.position, int) else None
        raise LabFileError(f"character #x{exc.character:04x} is not allowed in YAML (a control character, not text)",
                           location=Location(path, line)) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "invalid YAML"
        raise LabFileError(f"YAML syntax error: {problem}", location=Location(path, mark.line + 1 if mark else None)) from None
    except yaml.YAMLError as exc:
        raise LabFileError(f"YAML error: {exc}", location=Location(path, None)) from None
    finally:
        if loader is not None:
            loader.dispose()
    if data is _EMPTY:
        raise LabFileError("the file is empty", location=Location(path, 1))
    return data, SourceMap(path, builder.lines)


_EMPTY = object()
# Plain scalars already read (a matrix renders the same file once per point): (tag, text) -> value.
# Only immutable values (numbers, booleans, null, text) are kept.
_SCALARS: dict[tuple[str | None, str], Any] = {}
# libyaml's parser where PyYAML has it (the same events, several times faster); both are
# iterative state machines, so neither recurses however deep a document nests.
_EventLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclass
class _Open:
    """A mapping or list being built."""

    value: Any
    here: FieldPath
    anchor: str | None
    first_record: int
    key: Any = None
    key_line: int = 0
    has_key: bool = False


class _Builder:
    def __init__(self, path: Path | None, rendered: Rendered | None):
        self.path = path
        self.rendered = rendered
        self.lines: dict[FieldPath, int] = {}
        self.records: list[tuple[FieldPath, int]] = []  # every line set, in order: what an anchor repeats
        self.anchors: dict[str, tuple[Any, FieldPath, list[tuple[FieldPath, int]], int]] = {}
        self.open_anchors: set[str] = set()
        self.values = 0
        self.aliases = 0
        self.constructor = yaml.SafeLoader("")

    def fail(self, message: str, event: Any, field: FieldPath = (), hint: str | None = None) -> LabFileError:
        return LabFileError(message, location=Location(self.path, event.start_mark.line + 1, _dotted(field) or None), hint=hint)

    def mark(self, here: FieldPath, line: int) -> None:
        self.lines[here] = line
        self.records.append((here, line))

    def count(self, n: int, event: Any, here: FieldPath) -> None:
        self.values += n
        if self.values > MAX_VALUES:
            raise self.fail(f"the document has more than {MAX_VALUES:,} values (counting what aliases repeat)", event, here[:3],
                            hint="an alias bomb? write the values out, or split the file")

    def build(self, loader: yaml.SafeLoader) -> Any:
        stack: list[_Open] = []
        result: Any = _EMPTY
        documents = 0
        while loader.check_event():
            event = loader.get_event()
            if isinstance(event, (yaml.StreamStartEvent, yaml.StreamEndEvent, yaml.DocumentEndEvent)):
                continue
            if isinstance(event, yaml.DocumentStartEvent):
                documents += 1
                if documents > 1:
                    raise self.fail("a file holds one YAML document; this is a second one", event)
                continue
            if isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
                done = stack.pop()
                self.close_anchor(done)
                value, here = done.value, done.here
            else:
                parent = stack[-1] if stack else None
                if parent is not None and isinstance(parent.value, dict) and not parent.has_key:
                    self.take_key(parent, event)
                    continue
                here = self.child_path(parent)
                if isinstance(event, yaml.AliasEvent):
                    value = self.alias(event, here)
                elif isinstance(event, yaml.ScalarEvent):
                    self.count(1, event, here)
                    self.mark(here, event.start_mark.line + 1)
                    value = self.scalar(event, here)
                    if event.anchor:
                        self.anchors[event.anchor] = (value, here, [(here, event.start_mark.line + 1)], 1)
                else:  # a mapping or a list starts
                    self.count(1, event, here)
                    if event.tag not in (None, "!") and event.tag not in _PLAIN_TAGS:
                        raise self.fail(f"tag {event.tag} is not allowed: lab files hold plain data only", event, here)
                    if len(stack) >= MAX_DEPTH:
                        raise self.fail(f"nested more than {MAX_DEPTH} levels deep", event, here[:3])
                    self.mark(here, event.start_mark.line + 1)
                    if event.anchor:
                        self.open_anchors.add(event.anchor)
                    container: Any = {} if isinstance(event, yaml.MappingStartEvent) else []
                    stack.append(_Open(container, here, event.anchor, len(self.records) - 1))
                    continue
            # a finished value goes into its parent
            if not stack:
                result = value
                continue
            parent = stack[-1]
            if isinstance(parent.value, dict):
                parent.value[parent.key] = value
                # A block value starts on the line after its key; point at the key the author wrote.
                self.mark((*parent.here, parent.key), parent.key_line)
                parent.has_key = False
            else:
                parent.value.append(value)
        return result

    def child_path(self, parent: _Open | None) -> FieldPath:
        if parent is None:
            return ()
        if isinstance(parent.value, dict):
            return (*parent.here, parent.key)
        return (*parent.here, len(parent.value))

    def take_key(self, parent: _Open, event: Any) -> None:
        where = parent.here
        if not isinstance(event, yaml.ScalarEvent):
            raise self.fail("a key must be a plain word", event, where)
        if event.value == "<<" and not event.style and event.tag is None:
            raise self.fail("merge keys (<<) are not supported: write the keys out (an alias may repeat one value)", event, where)
        if event.tag not in (None, "!") and event.tag not in _PLAIN_TAGS:
            raise self.fail(f"tag {event.tag} is not allowed: lab files hold plain data only", event, where)
        # Keys are names (nodes, links, fields, sysctls): the text written, never a number or a boolean.
        key = self.rendered.substitute(event.value) if self.rendered is not None else event.value
        if key in parent.value:
            # PyYAML silently keeps the last of two equal keys; a lab author never means that.
            raise self.fail(f"duplicate key '{key}'", event, (*where, key))
        parent.key, parent.key_line, parent.has_key = key, event.start_mark.line + 1, True

    def scalar(self, event: Any, here: FieldPath) -> Any:
        if event.tag not in (None, "!") and event.tag not in _PLAIN_TAGS:
            raise self.fail(f"tag {event.tag} is not allowed: lab files hold plain data only", event, here)
        text = event.value
        plain = not event.style and event.tag is None  # libyaml says "" for plain, PyYAML None
        rendered = self.rendered
        if rendered is not None and rendered.has_tokens(text):
            whole, value = rendered.whole(text)
            if whole and plain and not isinstance(value, str):
                return value  # a printed number, boolean or list: the value itself
            text = rendered.substitute(text)
            if not plain:
                return text
        if event.tag is None and not plain:
            return text  # quoted or a block: text as written
        key = (event.tag, text)
        if key in _SCALARS:
            return _SCALARS[key]
        if event.tag in (None, "!"):
            tag = self.constructor.resolve(yaml.ScalarNode, text, event.implicit if not plain else (True, False))
        else:
            tag = event.tag
        if tag not in _PLAIN_TAGS:
            return text  # timestamps, '=' and the like: YAML 1.1 extras read as the text written
        try:
            value = self.constructor.yaml_constructors[tag](self.constructor, yaml.ScalarNode(tag, text, event.start_mark, event.end_mark))
        except (ValueError, yaml.YAMLError) as exc:
            raise self.fail(f"{text[:40]!r} is not a valid {tag.rsplit(':', 1)[-1]}: {str(exc).splitlines()[0][:80]}", event, here) from None
        if len(_SCALARS) > 100_000:
            _SCALARS.clear()
        _SCALARS[key] = value
        return value

    def alias(self, event: Any, here: FieldPath) -> Any:
        name = event.anchor
        if name in self.open_anchors:
            raise self.fail(f"alias *{name} is inside the value it refers to (a recursive alias)", event, here)
        if name not in self.anchors:
            raise self.fail(f"unknown alias *{name}", event, here, hint="an alias refers to an &anchor written before it")
        self.aliases += 1
        if self.aliases > MAX_ALIASES:
            raise self.fail(f"more than {MAX_ALIASES:,} aliases", event, here)
        value, origin, records, size = self.anchors[name]
        self.count(size, event, here)
        for path, line in records:
            self.mark((*here, *path[len(origin):]), line)
        return value

    def close_anchor(self, done: _Open) -> None:
        if done.anchor is None:
            return
        self.open_anchors.discard(done.anchor)
        records = self.records[done.first_record:]
        self.anchors[done.anchor] = (done.value, done.here, records, len(records))


# --- schema validation -----------------------------------------------------

def validate_model(model: type[BaseModel], data: Any, source: SourceMap) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = [_describe(model, err, source) for err in exc.errors()]
        # First in the file; on one line the most specific (of `str | Accept`, what the mapping got wrong).
        problems.sort(key=lambda p: (p[0].line or 0, -len(p[0].field or "")))
        location, message, hint = problems[0]
        if len(problems) > 1:
            hint = (hint + "; " if hint else "") + f"{len(problems) - 1} more problem(s) after this one"
        raise LabFileError(message, location=location, hint=hint) from None


def _describe(model: type[BaseModel], err: Mapping[str, Any], source: SourceMap) -> tuple[Location, str, str | None]:
    loc = _data_path(err["loc"], err["type"], source)
    kind = err["type"]
    hint = None
    if kind == "extra_forbidden":
        allowed = _allowed_keys(model, loc[:-1])
        message = f"unknown key '{loc[-1]}'"
        hint = f"allowed here: {', '.join(allowed)}" if allowed else None
    elif kind == "missing":
        message = f"required key '{loc[-1]}' is missing"
    elif kind == "string_pattern_mismatch":
        described = _field_description(model, loc, "[key]" in err["loc"]) or _PATTERN_WORDS.get(err.get("ctx", {}).get("pattern"))
        message = f"{shown(err['input'])} is not allowed: {described or 'wrong form'}"
    elif kind in ("literal_error", "enum"):
        message = f"{shown(err['input'])} is not allowed; expected {err['ctx']['expected']}"
    elif kind.endswith("_type") or kind.startswith("ip_"):
        message = f"{err['msg'][0].lower()}{err['msg'][1:]}, got {type(err['input']).__name__} {shown(err['input'])}"
    elif kind == "value_error" and err.get("ctx", {}).get("error") is not None:
        # Our own validators (units: 50ms, 5%, 1mbit) say what was written and what is allowed.
        message = str(err["ctx"]["error"])
    else:
        message = err["msg"][0].lower() + err["msg"][1:]
    return source.locate(loc), message, hint


def _pattern_words() -> dict[str, str]:
    """What each constrained word type means, by its pattern: for step models reached through unions."""
    from . import units

    words = {}
    for annotated in (units.TcpFlags, units.SysctlName, get_args(units.SysctlValue)[0]):
        for meta in getattr(annotated, "__metadata__", ()):
            for inner in getattr(meta, "metadata", ()):
                if getattr(inner, "pattern", None) and meta.description:
                    text = meta.description.rstrip(".")
                    words[inner.pattern] = text[0].lower() + text[1:] if text[1:2].islower() else text
    return words


_PATTERN_WORDS = _pattern_words()


def _data_path(loc: tuple[Any, ...], kind: str, source: SourceMap) -> FieldPath:
    # Pydantic adds tags for unions and validators (e.g. 'str', 'int') that are not
    # steps in the data: keep the steps the document really has.
    # A single mapping given where a list is allowed (`impair: {...}`) is validated as item 0,
    # which the document does not have either: skip such steps, keep the ones it has.
    path: FieldPath = ()
    for part in loc:
        if (*path, part) in source.lines:
            path = (*path, part)
    if kind == "missing" and loc:
        path = (*path, loc[-1])
    return path


def _model_at(model: type[BaseModel], path: FieldPath) -> type[BaseModel] | None:
    current: Any = model
    for part in path:
        if isinstance(current, type) and issubclass(current, BaseModel):
            info = current.model_fields.get(str(part))
            if info is None:
                return None
            current = info.annotation
        elif get_origin(current) in (dict, list):
            current = get_args(current)[-1]
        else:
            return None
        current = _unwrap(current)
    if get_origin(current) is list:
        current = _unwrap(get_args(current)[0])  # a mapping written where a list of them is allowed
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _unwrap(annotation: Any) -> Any:
    while True:
        args = get_args(annotation)
        origin = get_origin(annotation)
        if origin is Union or (origin is not None and str(origin) == "types.UnionType") or type(annotation).__name__ == "UnionType":
            non_none = [a for a in args if a is not type(None)]
            annotation = non_none[0] if len(non_none) == 1 else annotation
            if len(non_none) != 1:
                return annotation
        elif getattr(annotation, "__metadata__", None) is not None:
            annotation = args[0]
        else:
            return annotation


def _allowed_keys(model: type[BaseModel], path: FieldPath) -> list[str]:
    target = _model_at(model, path)
    return [info.alias or name for name, info in target.model_fields.items()] if target else []


def _field_description(model: type[BaseModel], path: FieldPath, is_key: bool = False) -> str | None:
    parent = _model_at(model, path[:-1])
    if parent and isinstance(path[-1], str) and path[-1] in parent.model_fields:
        info = parent.model_fields[path[-1]]
        if info.description:
            return info.description
        for meta in getattr(info.annotation, "__metadata__", ()) or ():
            if getattr(meta, "description", None):
                return meta.description
    # Keys of a dict (node names) and list items (endpoints) carry the description on their type.
    descriptions = {"nodes": "a node name: lowercase letters, digits and '-', starting with a letter",
                    "endpoints": "a node name: lowercase letters, digits and '-', starting with a letter",
                    "addresses": "a node name", "sysctls": "a network sysctl (net.*): only these are per node"}
    if not is_key and len(path) >= 2 and path[-2] == "sysctls":
        return "a sysctl value: a number, or words and numbers (e.g. '4096 87380 6291456')"
    for part in reversed(path):
        if isinstance(part, str) and part in descriptions:
            return descriptions[part]
    return None


# --- meaning -----------------------------------------------------------------

def check_lab(loaded: LoadedLab) -> None:
    """Rules the schema cannot express. Raises the first problem found, in file order."""
    lab = loaded.lab
    seen_links: dict[str, int] = {}
    attached: set[str] = set()
    for i, link in enumerate(lab.links):
        if link.name == "lo":
            raise loaded.error(("links", i, "name"), "'lo' is the loopback interface's name; choose another link name")
        if link.name in seen_links:
            raise loaded.error(("links", i, "name"), f"duplicate link name '{link.name}'", hint=f"link {seen_links[link.name]} has the same name")
        seen_links[link.name] = i
        seen_ends: set[str] = set()
        for j, end in enumerate(link.endpoints):
            if end not in lab.nodes:
                raise loaded.error(("links", i, "endpoints", j), f"unknown node '{end}'", hint=f"nodes are: {_names(lab.nodes)}")
            if end in seen_ends:
                raise loaded.error(("links", i, "endpoints", j), f"node '{end}' is listed twice on link '{link.name}'")
            seen_ends.add(end)
        attached |= seen_ends
        for node, address in link.addresses.items():
            where = ("links", i, "addresses", node)
            if node not in link.endpoints:
                raise loaded.error(where, f"'{node}' is not an endpoint of link '{link.name}'", hint=f"endpoints: {', '.join(link.endpoints)}")
            if link.subnet is None:
                raise loaded.error(where, "a fixed address needs the link's subnet", hint="add subnet: to this link")
            _check_address(loaded, where, link.subnet, address)
        if len(set(link.addresses.values())) != len(link.addresses):
            taken: dict[IPv4Address, str] = {}
            for node, address in link.addresses.items():
                if address in taken:
                    raise loaded.error(("links", i, "addresses", node), f"address {address} is already given to '{taken[address]}'")
                taken[address] = node
        _check_impairments(loaded, i, link)
        if link.subnet is not None:
            usable = link.subnet.num_addresses - 2
            # One address of every subnet goes to the engine's bridge gateway.
            if usable - 1 < len(link.endpoints):
                raise loaded.error(("links", i, "subnet"), f"subnet {link.subnet} is too small for {len(link.endpoints)} endpoints",
                                   hint="it needs one address per endpoint plus one for the bridge; /29 or larger")
    for name in lab.nodes:
        if name not in attached:
            raise loaded.error(("nodes", name), f"node '{name}' is on no link", hint="add it to a link's endpoints, or remove it")
    _check_overlaps(loaded)
    links = links_of(lab)
    for name, node in lab.nodes.items():
        if node.role != "router" and str(node.sysctls.get("net.ipv4.ip_forward", "0")).strip() not in ("0", "False", "false"):
            raise loaded.error(("nodes", name, "sysctls", "net.ipv4.ip_forward"), f"'{name}' is a host, and hosts do not forward packets",
                               hint="give it role: router to let it forward")
        for k, route in enumerate(node.routes or []):
            _check_route(loaded, links, name, k, route.to, route.via)
    _check_reachability(loaded)
    _check_files(loaded)


def _check_files(loaded: LoadedLab) -> None:
    """Every `files:` entry names something inside the lab directory (or a -p path), and a sane node path."""
    from .nodefiles import FilesError, check_destination, resolve_source

    lab = loaded.lab
    entries = [(("files", i), f) for i, f in enumerate(lab.files)]
    entries += [(("nodes", name, "files", i), f) for name, node in lab.nodes.items() for i, f in enumerate(node.files)]
    for where, entry in entries:
        try:
            resolve_source(entry.src, loaded.path, loaded.params)
        except FilesError as exc:
            raise loaded.error((*where, "src"), str(exc), hint="copy it into the lab directory, or pass its path with -p NAME=PATH and write src: \"{{ NAME }}\"") from None
        try:
            check_destination(entry.dst)
        except FilesError as exc:
            raise loaded.error((*where, "dst"), str(exc)) from None


def _check_overlaps(loaded: LoadedLab) -> None:
    """No two fixed subnets overlap. Sorted, a CIDR block can only overlap the widest one open before it."""
    lab = loaded.lab
    explicit = sorted(((link.subnet, i) for i, link in enumerate(lab.links) if link.subnet is not None),
                      key=lambda e: (e[0].network_address, e[0].prefixlen))
    clash = None
    widest: tuple[IPv4Network, int] | None = None
    for subnet, i in explicit:
        if widest is not None and subnet.overlaps(widest[0]):
            clash = (min(i, widest[1]), max(i, widest[1]))
            break
        if widest is None or subnet.broadcast_address > widest[0].broadcast_address:
            widest = (subnet, i)
    if clash is None:
        return
    # Report the first clash in file order, as a reader scanning the file would find it.
    fixed = [(i, link.subnet) for i, link in enumerate(lab.links) if link.subnet is not None]
    for a, (i, net_i) in enumerate(fixed):
        for j, net_j in fixed[a + 1:]:
            if net_i.overlaps(net_j):
                raise loaded.error(("links", j, "subnet"), f"subnet {net_j} overlaps {net_i} of link '{lab.links[i].name}'")


def _check_impairments(loaded: LoadedLab, i: int, link: Link) -> None:
    """Each entry names an endpoint (or none: every endpoint), at most one entry per direction."""
    entries = link.impairments()
    # `impair: {...}` has no item index in the file; a list has one per entry.
    listed = ("links", i, "impair", 0) in loaded.source.lines

    def where(k: int, *rest: str) -> FieldPath:
        return ("links", i, "impair", *((k,) if listed else ()), *rest)

    directions: dict[str, int] = {}
    for k, entry in enumerate(entries):
        if entry.from_ is not None and entry.from_ not in link.endpoints:
            raise loaded.error(where(k, "from"), f"'{entry.from_}' is not an endpoint of link '{link.name}'",
                               hint=f"endpoints: {', '.join(link.endpoints)}")
        problem = entry.problem()
        if problem is not None:
            raise loaded.error(where(k, problem[0]), problem[1])
        if len(entries) > 1 and entry.from_ is None:
            raise loaded.error(where(k), f"entry {k} has no `from`, so it covers every direction of link '{link.name}' that the others set too",
                               hint="with several entries, give each one `from:` (one entry per direction)")
        if entry.from_ in directions:
            raise loaded.error(where(k, "from"), f"a second impairment from '{entry.from_}' on link '{link.name}'",
                               hint=f"entry {directions[entry.from_]} already sets that direction: merge them into one")
        if entry.from_ is not None:
            directions[entry.from_] = k


def _check_address(loaded: LoadedLab, where: FieldPath, subnet: IPv4Network, address: IPv4Address) -> None:
    if address not in subnet:
        raise loaded.error(where, f"address {address} is outside the link's subnet {subnet}")
    if address in (subnet.network_address, subnet.broadcast_address):
        raise loaded.error(where, f"address {address} is the network or broadcast address of {subnet}")
    if address == gateway_address(subnet):
        raise loaded.error(where, f"address {address} is reserved for the bridge gateway of {subnet}", hint="labctl gives the last usable address to the bridge")


def gateway_address(subnet: IPv4Network) -> IPv4Address:
    """The address the engine's bridge takes: the last usable one, so nodes can be numbered from .1."""
    return subnet.broadcast_address - 1


def _check_route(loaded: LoadedLab, links: Mapping[str, list[Link]], name: str, k: int, to: str, via: str) -> None:
    lab = loaded.lab
    if to != "default":
        try:
            IPv4Network(to, strict=True)
        except ValueError:
            raise loaded.error(("nodes", name, "routes", k, "to"), f"'{to}' is not 'default' or a network like 10.250.2.0/24") from None
    if via in lab.nodes:
        if not share_link(lab, name, via, links):
            raise loaded.error(("nodes", name, "routes", k, "via"), f"next hop '{via}' shares no link with '{name}'")
        return
    try:
        via_ip = IPv4Address(via)
    except ValueError:
        raise loaded.error(("nodes", name, "routes", k, "via"), f"next hop '{via}' is neither a node nor an IPv4 address", hint=f"nodes are: {_names(lab.nodes)}") from None
    on_link = [link.subnet for link in links[name] if link.subnet is not None]
    if any(via_ip == gateway_address(subnet) for subnet in on_link):
        # The bridge's end of a link is the host: a route there leads out of the lab (issue 11).
        raise loaded.error(("nodes", name, "routes", k, "via"), f"next hop {via} is the bridge address of its link: the host, outside the lab",
                           hint="route via a lab node (a role: router) instead")
    pooled = any(link.subnet is None for link in links[name])
    # With pool-allocated links the subnet is not known yet: use a node name for the next hop there.
    if not pooled and not any(via_ip in subnet for subnet in on_link):
        raise loaded.error(("nodes", name, "routes", k, "via"), f"next hop {via} is on none of the subnets of '{name}'",
                           hint=f"its subnets: {', '.join(map(str, on_link))}")


def _names(names: Iterable[str], most: int = 12) -> str:
    """Names for a hint: all of a small lab's, the first few of a large one's."""
    listed = list(names)
    return ", ".join(listed[:most]) + (f", ... ({len(listed)} in all)" if len(listed) > most else "")


def _check_reachability(loaded: LoadedLab) -> None:
    lab = loaded.lab
    if any(node.routes is not None for node in lab.nodes.values()):
        return  # hand-written routes: the author takes charge of reachability
    pair = unreachable_pair(lab)
    if pair is not None:
        a, b = pair
        raise loaded.error(("nodes", a), f"host '{a}' cannot reach host '{b}': no path through routers",
                           hint="connect them through a node with role: router")


# --- scenarios ---------------------------------------------------------------

SCENARIO_DIR = "scenarios"


@dataclass(frozen=True)
class LoadedScenario:
    """One runnable scenario: a matrix point of a scenario file, rendered and validated."""

    scenario: Any  # labctl.scenario.Scenario
    source: SourceMap
    params: Mapping[str, Any]
    point: Mapping[str, Any]  # the matrix values of this run (empty without a matrix)

    @property
    def label(self) -> str:
        if not self.point:
            return self.scenario.name
        return self.scenario.name + "[" + ",".join(f"{k}={v}" for k, v in self.point.items()) + "]"

    def error(self, path: FieldPath, message: str, hint: str | None = None) -> LabFileError:
        return LabFileError(message, location=self.source.locate(path), hint=hint)


class _Blank(jinja2.Undefined):
    """An unknown name that is empty in every use, arithmetic included (first pass only)."""

    def _blank(self, *args: Any, **kwargs: Any) -> str:
        return ""


for _op in ("__add__", "__radd__", "__sub__", "__rsub__", "__mul__", "__rmul__", "__truediv__", "__rtruediv__",
            "__floordiv__", "__rfloordiv__", "__mod__", "__rmod__", "__pos__", "__neg__", "__getitem__", "__call__",
            "__lt__", "__le__", "__gt__", "__ge__", "__int__", "__float__", "__pow__", "__rpow__", "__getattr__"):
    setattr(_Blank, _op, _Blank._blank)


def scenario_files(lab_file: Path) -> dict[str, Path]:
    directory = lab_file.parent / SCENARIO_DIR
    if not directory.is_dir():
        return {}
    return {path.stem: path for path in sorted(directory.glob("*.yaml"))}


def load_scenarios(loaded: LoadedLab, names: Sequence[str] = (), params: Mapping[str, str] | None = None) -> list[LoadedScenario]:
    """The lab's scenarios (all, or those named; a name may also be a path), one per matrix point."""
    if loaded.path is None:
        raise LabNotFound("this lab was not loaded from a file, so it has no scenarios directory")
    available = scenario_files(loaded.path)
    chosen: list[Path] = []
    for name in names or list(available):
        if name in available:
            chosen.append(available[name])
        elif Path(name).is_file():
            chosen.append(Path(name))
        else:
            raise LabNotFound(f"lab '{loaded.lab.name}' has no scenario '{name}'",
                              hint=f"its scenarios: {', '.join(available) or 'none'} (in {loaded.path.parent / SCENARIO_DIR})")
    if not chosen:
        raise LabNotFound(f"lab '{loaded.lab.name}' has no scenarios", hint=f"add YAML files to {loaded.path.parent / SCENARIO_DIR}")
    result: list[LoadedScenario] = []
    for path in chosen:
        result.extend(load_scenario_file(path, loaded, params or {}))
    return result


MAX_MATRIX_POINTS = 1_000  # runs one scenario file's matrix may ask for
MAX_MATRIX_WORK = 2_000_000  # values parsed over all of its points together (each point renders the whole file)


def load_scenario_file(path: Path, loaded: LoadedLab, overrides: Mapping[str, str]) -> list[LoadedScenario]:
    from .scenario import Scenario

    text = read_source(path)
    overrides = typed_params(overrides)
    head, head_source = _scenario_head(text, path)
    defaults = head.get("params") if isinstance(head.get("params"), dict) else {}
    matrix = head.get("matrix") if isinstance(head.get("matrix"), dict) else {}
    # A parameter given with -p fixes that axis of the matrix.
    axes = {k: (v if isinstance(v, list) else [v]) for k, v in matrix.items() if k not in overrides}
    total = 1
    for values in axes.values():
        total *= len(values)
    if total > MAX_MATRIX_POINTS:
        sizes = " x ".join(str(len(v)) for v in axes.values())
        raise LabFileError(f"the matrix has {total:,} points ({sizes}); a scenario file may ask for at most {MAX_MATRIX_POINTS:,} runs",
                           location=head_source.locate(("matrix",)), hint="fix some axes with -p NAME=VALUE, or split the sweep")
    points = [dict(zip(axes, values)) for values in product(*axes.values())] or [{}]
    result = []
    compiled = template.LabTemplate(text, path)
    for point in points:
        params = {**defaults, **point, **overrides}
        rendered = compiled.render(params)
        data, source = parse_yaml(rendered.text, path, rendered)
        if len(points) * len(source.lines) > MAX_MATRIX_WORK:
            raise LabFileError(f"the matrix renders this file {len(points):,} times with {len(source.lines):,} values each; "
                               f"validating all of them is limited to {MAX_MATRIX_WORK:,} values",
                               location=head_source.locate(("matrix",)), hint="fewer points, or fewer values per point (e.g. long lists)")
        scenario = validate_model(Scenario, data, source)
        one = LoadedScenario(scenario, source, params, point)
        check_scenario(one, loaded)
        result.append(one)
    return result


def _scenario_head(text: str, path: Path) -> tuple[dict, SourceMap]:
    """The defaults and the matrix, from a first look: rendered leniently (unknown names are
    empty, conditions false), so a file with {% if %} blocks still parses. Problems are left
    for the real rendering to report."""
    try:
        rendered = template.render(text, path, {}, undefined=_Blank)
        head, source = parse_yaml(rendered.text, path, rendered)
    except LabFileError:
        return {}, SourceMap(path)
    return (head if isinstance(head, dict) else {}), source


def check_scenario(one: LoadedScenario, loaded: LoadedLab) -> None:
    """Names a scenario uses must exist: nodes in the lab, sockets and rules defined by earlier steps.

    What each step or expectation needs is its kind's business (``labctl.steps``, ``labctl.expectations``).
    """
    from .expectations import EXPECTATION_KINDS
    from .steps import STEP_KINDS, Names

    lab = loaded.lab
    names = Names(lab, one.error)
    for i, step in enumerate(one.scenario.steps):
        here: FieldPath = ("steps", i)
        kind = STEP_KINDS[step.kind]
        if step.node is not None and step.node not in lab.nodes:
            raise one.error((*here, "node"), f"unknown node '{step.node}'", hint=f"nodes: {', '.join(lab.nodes)}")
        if kind.makes_socket and not step.as_:
            raise one.error(here, f"a {step.kind} step needs `as:` to name its socket")
        kind.check(step.action, step, here, names)
        if step.as_:
            if step.as_ in names.steps:
                raise one.error((*here, "as"), f"the name '{step.as_}' is used by an earlier step")
            names.steps[step.as_] = step
            if kind.makes_socket:
                names.sockets[step.as_] = step.node
    for k, expectation in enumerate(one.scenario.expect):
        EXPECTATION_KINDS[expectation.kind].check(getattr(expectation, expectation.kind), ("expect", k), names)
