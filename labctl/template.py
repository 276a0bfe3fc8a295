"""Jinja2 for lab and scenario files: sandboxed, bounded, and values as data.

A lab file is code from someone else (an instructor, a colleague, a download),
rendered on a machine next to a Docker engine as root. So a template runs in an
immutable sandbox with no loader (no ``include``, ``import`` or ``extends``: a lab
file is one file), and with budgets: ``range()`` sizes, loop iterations over one
rendering, the size of any value it builds, the size of its output. Exceeding
one is a located error, never a hang or a blow-up.

What ``{{ ... }}`` prints is never pasted into the YAML text. It becomes a token
the YAML parser sees as a plain word; the parser puts the value back as data
(see ``Rendered.value_of``). So a parameter can be a number, a word or a
sentence with newlines and colons, but it can never add a key, a step or a
document. Structure comes from ``{% for %}`` and ``{% if %}`` only.
"""

from __future__ import annotations

import math
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

import jinja2
import jinja2.filters
import jinja2.nodes as nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

from .errors import LabFileError, Location

MAX_RENDERED_CHARS = 2_000_000  # what one rendering may output (a 1,000-node lab is ~60 kB)
MAX_VALUE_SIZE = 1_000_000      # characters of a string, items of a list, that an expression may build
MAX_RANGE = 10_000              # items of one range()
MAX_ITERATIONS = 100_000        # loop iterations in one rendering, all loops together
MAX_INT_BITS = 4096             # a ** b beyond this is refused before it is computed
MAX_WIDTH = 10_000              # a field width or count in formatting (center, indent, "%9999d")

PLAIN = (str, int, float, bool, type(None))


class TemplateBudget(Exception):
    """A template asked for more than a lab file may (see the MAX_ constants)."""


@dataclass
class Rendered:
    """A template's output, with the values its ``{{ }}`` expressions printed, by token."""

    text: str
    values: dict[str, Any] = field(default_factory=dict)
    pattern: re.Pattern | None = None

    def has_tokens(self, text: str) -> bool:
        return self.pattern is not None and self.pattern.search(text) is not None

    def whole(self, text: str) -> tuple[bool, Any]:
        """(True, value) when ``text`` is exactly one token."""
        return (True, self.values[text]) if text in self.values else (False, None)

    def substitute(self, text: str) -> str:
        """Tokens inside a longer text become the printed form of their values (str())."""
        if self.pattern is None:
            return text
        return self.pattern.sub(lambda m: _printed(self.values[m.group(0)]), text)


def _printed(value: Any) -> str:
    return "" if value is None else str(value)


def parameter_value(text: str) -> Any:
    """A -p value as data: whole decimal numbers are int, decimal fractions float, true/false bool, the rest text."""
    stripped = text.strip()
    if re.fullmatch(r"[-+]?(0|[1-9][0-9]*)", stripped):
        return int(stripped)
    if re.fullmatch(r"[-+]?([0-9]+\.[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?", stripped):
        value = float(stripped)
        return value if math.isfinite(value) else text
    if stripped.lower() in ("true", "false"):
        return stripped.lower() == "true"
    return text


def _weight(value: Any, seen: dict[int, int] | None = None) -> int:
    """Characters plus items of a value, with shared parts counted each time they appear."""
    if isinstance(value, str):
        return len(value)
    if not isinstance(value, (list, tuple, dict, set, frozenset)):
        return 1
    seen = {} if seen is None else seen
    key = id(value)
    if key in seen:
        return seen[key]
    seen[key] = 1  # a cycle counts once
    items = value.items() if isinstance(value, dict) else value
    total = 1
    for item in items:
        total += _weight(item, seen)
        if total > MAX_VALUE_SIZE:
            break
    seen[key] = total
    return total


def _bounded(size: int, what: str = "a value") -> None:
    if size > MAX_VALUE_SIZE:
        raise TemplateBudget(f"{what} of more than {MAX_VALUE_SIZE:,} characters or items")


_WIDTHS = re.compile(r"%[#0\- +]*(\*|\d+)?(?:\.(\*|\d+))?")
_BRACE_WIDTHS = re.compile(r"\{[^{}]*?:[^{}]*?(\d+)")
_NESTED_SPEC = re.compile(r"\{[^{}]*:[^{}]*\{")


def _check_printf(spec: str) -> None:
    for width, precision in _WIDTHS.findall(spec):
        for number in (width, precision):
            if number == "*" or (number and int(number) > MAX_WIDTH):
                raise TemplateBudget(f"a field width above {MAX_WIDTH} in '{spec[:40]}'")


def _check_widths(args: Iterable[Any]) -> None:
    for arg in args:
        if isinstance(arg, int) and not isinstance(arg, bool) and arg > MAX_WIDTH:
            raise TemplateBudget(f"a width or count of {arg} (at most {MAX_WIDTH})")


def _expanding_filters() -> dict[str, Callable[..., Any]]:
    """Filters that can make a value much larger than their input, with their growth checked first."""
    base = jinja2.filters.FILTERS

    def center(value: Any, width: int = 80) -> Any:
        _check_widths([width])
        return base["center"](value, width)

    def indent(s: Any, width: Any = 4, first: bool = False, blank: bool = False) -> Any:
        text = str(s)
        _bounded(len(text) + (len(width) if isinstance(width, str) else int(width)) * (text.count("\n") + 1))
        return base["indent"](s, width, first, blank)

    def format_(value: Any, *args: Any, **kwargs: Any) -> Any:
        _check_printf(str(value))
        return base["format"](value, *args, **kwargs)

    def replace(eval_ctx: Any, s: Any, old: Any, new: Any, count: int | None = None) -> Any:
        text, old_s, new_s = str(s), str(old), str(new)
        hits = (len(text) + 1) if old_s == "" else text.count(old_s)
        if count is not None and count >= 0:
            hits = min(hits, count)
        _bounded(len(text) + hits * max(0, len(new_s) - len(old_s)))
        return base["replace"](eval_ctx, s, old, new, count)

    def join(eval_ctx: Any, value: Any, d: str = "", attribute: Any = None) -> Any:
        items = list(_take(value))
        _bounded(sum(_weight(str(i)) for i in items) + len(str(d)) * max(0, len(items) - 1))
        return base["join"](eval_ctx, items, d, attribute)

    def slice_(value: Any, slices: int, fill_with: Any = None) -> Any:
        _check_widths([slices])
        return base["slice"](value, slices, fill_with)

    def batch(value: Any, linecount: int, fill_with: Any = None) -> Any:
        _check_widths([linecount])
        return base["batch"](value, linecount, fill_with)

    def truncate(env: Any, s: str, length: int = 255, killwords: bool = False, end: str = "...", leeway: int | None = None) -> Any:
        return base["truncate"](env, s, length, killwords, end, leeway)

    replace.jinja_pass_arg = base["replace"].jinja_pass_arg  # type: ignore[attr-defined]
    join.jinja_pass_arg = base["join"].jinja_pass_arg  # type: ignore[attr-defined]
    truncate.jinja_pass_arg = base["truncate"].jinja_pass_arg  # type: ignore[attr-defined]
    return {"center": center, "indent": indent, "format": format_, "replace": replace, "join": join,
            "slice": slice_, "batch": batch, "truncate": truncate}


def _take(value: Any) -> Iterator[Any]:
    for n, item in enumerate(value):
        if n >= MAX_VALUE_SIZE:
            raise TemplateBudget(f"a sequence of more than {MAX_VALUE_SIZE:,} items")
        yield item


class LabEnvironment(ImmutableSandboxedEnvironment):
    """One rendering's environment: the sandbox with budgets, and the table of printed values."""

    intercepted_binops = frozenset({"*", "**", "+", "%", "//"})

    def __init__(self, undefined: type[jinja2.Undefined]):
        super().__init__(undefined=undefined, keep_trailing_newline=True, autoescape=False, finalize=self._token,
                         loader=None)
        self.filters.update(_expanding_filters())
        self.globals.pop("lipsum", None)  # lipsum(n) writes n paragraphs
        self.globals["range"] = self._range
        self.iterations = 0
        self.nonce = "labctlv" + secrets.token_hex(4)
        self.values: dict[str, Any] = {}
        self._by_value: dict[tuple[type, str], str] = {}

    # what {{ }} prints -------------------------------------------------------
    def _token(self, value: Any) -> str:
        if isinstance(value, jinja2.Undefined):
            text = str(value)  # StrictUndefined raises here, with the name
            if not text:
                return ""
            value = text
        value = _as_data(value)
        key = (type(value), repr(value))
        token = self._by_value.get(key)
        if token is None:
            token = f"{self.nonce}x{len(self.values)}x"
            self._by_value[key] = token
            self.values[token] = value
        return token

    # budgets ------------------------------------------------------------------
    def _range(self, *args: int) -> range:
        numbers = range(*args)
        if len(numbers) > MAX_RANGE:
            raise TemplateBudget(f"range() of {len(numbers):,} items (at most {MAX_RANGE:,})")
        return numbers

    def labctl_iterate(self, iterable: Any) -> Iterator[Any]:
        for item in iterable:
            self.iterations += 1
            if self.iterations > MAX_ITERATIONS:
                raise TemplateBudget(f"more than {MAX_ITERATIONS:,} loop iterations")
            yield item

    def labctl_concat(self, *parts: Any) -> str:
        texts = [str(p) for p in parts]
        _bounded(sum(len(t) for t in texts), "a string")
        return "".join(texts)

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            for seq, n in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple)) and isinstance(n, int):
                    _bounded(_weight(seq) * max(n, 0))
        elif operator == "+":
            if isinstance(left, (str, list, tuple)) and isinstance(right, (str, list, tuple)):
                _bounded(_weight(left) + _weight(right))
        elif operator == "**":
            if isinstance(left, int) and isinstance(right, int) and right > 0 and abs(left) > 1:
                if right * math.log2(abs(left)) > MAX_INT_BITS:
                    raise TemplateBudget(f"{left} ** {right} is too large a number")
        elif operator == "%" and isinstance(left, str):
            _check_printf(left)
        return super().call_binop(context, operator, left, right)

    def wrap_str_format(self, value: Any) -> Any:
        owner = getattr(value, "__self__", None)
        if isinstance(owner, str) and getattr(value, "__name__", "") in ("format", "format_map"):
            if _NESTED_SPEC.search(owner):
                raise TemplateBudget(f"a width taken from an argument in '{owner[:40]}'")
            _check_widths(int(width) for width in _BRACE_WIDTHS.findall(owner))
        return super().wrap_str_format(value)

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805 (Jinja's signature)
        owner = getattr(__obj, "__self__", None)
        name = getattr(__obj, "__name__", "")
        if isinstance(owner, str):
            if name in ("center", "ljust", "rjust", "zfill", "expandtabs"):
                _check_widths([*args, *kwargs.values()])
            elif name == "replace" and len(args) >= 2:
                old, new = str(args[0]), str(args[1])
                hits = len(owner) + 1 if old == "" else owner.count(old)
                _bounded(len(owner) + hits * max(0, len(new) - len(old)))
            elif name == "join" and args:
                items = list(_take(args[0]))
                _bounded(sum(_weight(i) for i in items) + len(owner) * len(items))
                args = (items, *args[1:])
        return super().call(__context, __obj, *args, **kwargs)


def _as_data(value: Any) -> Any:
    """What a printed value becomes in the YAML data: plain values as they are, anything else its text."""
    if isinstance(value, jinja2.runtime.Undefined):
        return str(value)
    if isinstance(value, PLAIN):
        return str(value) if isinstance(value, str) else value
    if isinstance(value, (list, tuple, dict)) and _plain_tree(value):
        _bounded(_weight(value))
        return value
    _bounded(_weight(value))
    return str(value)


def _plain_tree(value: Any, depth: int = 0) -> bool:
    if depth > 20:
        return False
    if isinstance(value, PLAIN):
        return True
    if isinstance(value, (list, tuple)):
        return all(_plain_tree(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain_tree(v, depth + 1) for k, v in value.items())
    return False


_REFUSED = {nodes.Include: "include", nodes.Import: "import", nodes.FromImport: "from ... import", nodes.Extends: "extends"}


def _bound_template(env: LabEnvironment, tree: nodes.Template, path: Path | None) -> None:
    """Refuse what a one-file lab has no use for; route loops and ~ through the budgets."""
    for kind, word in _REFUSED.items():
        for found in tree.find_all(kind):
            raise LabFileError(f"template {{% {word} %}} is not allowed: a lab or scenario file is one file",
                               location=Location(path, found.lineno),
                               hint="write the values in this file, or pass them with -p NAME=VALUE")
    for loop in tree.find_all(nodes.For):
        loop.iter = nodes.Call(nodes.EnvironmentAttribute("labctl_iterate", lineno=loop.lineno), [loop.iter], [], None, None,
                               lineno=loop.lineno)
    for concat in list(tree.find_all(nodes.Concat)):
        parts = concat.nodes
        call = nodes.Call(nodes.EnvironmentAttribute("labctl_concat", lineno=concat.lineno), parts, [], None, None, lineno=concat.lineno)
        _replace(tree, concat, call)


def _replace(tree: nodes.Node, old: nodes.Node, new: nodes.Node) -> None:
    for parent in [tree, *tree.find_all(nodes.Node)]:
        for name in parent.fields:
            value = getattr(parent, name, None)
            if value is old:
                setattr(parent, name, new)
                return
            if isinstance(value, list):
                for i, item in enumerate(value):
                    if item is old:
                        value[i] = new
                        return


class LabTemplate:
    """A lab or scenario file compiled once; rendered once per set of parameters (a matrix point)."""

    def __init__(self, text: str, path: Path | None, undefined: type[jinja2.Undefined] = jinja2.StrictUndefined):
        self.path = path
        self.env = env = LabEnvironment(undefined)
        try:
            tree = env.parse(text)
        except jinja2.TemplateSyntaxError as exc:
            raise LabFileError(f"template syntax error: {exc.message}", location=Location(path, exc.lineno)) from None
        except RecursionError:
            raise LabFileError("template nested too deeply", location=Location(path, _deepest_line(text))) from None
        _bound_template(env, tree, path)
        try:
            self.template = env.template_class.from_code(env, env.compile(tree), env.make_globals(None), None)
        except jinja2.TemplateSyntaxError as exc:
            raise LabFileError(f"template syntax error: {exc.message}", location=Location(path, exc.lineno)) from None
        except (RecursionError, SyntaxError, MemoryError, ValueError):
            raise LabFileError("template nested too deeply to compile", location=Location(path, _deepest_line(text))) from None

    def render(self, params: Mapping[str, Any]) -> Rendered:
        """Every problem is a LabFileError at the template's line."""
        env, path = self.env, self.path
        env.iterations = 0
        chunks: list[str] = []
        size = 0
        try:
            output = self.template.generate(**params)
            for chunk in output:
                size += len(chunk)
                if size > MAX_RENDERED_CHARS:
                    # Thrown in where the template stands, so the error names its line.
                    output.throw(TemplateBudget(f"output of more than {MAX_RENDERED_CHARS:,} characters"))
                chunks.append(chunk)
        except jinja2.UndefinedError as exc:
            raise LabFileError(f"template parameter missing: {exc.message}", location=Location(path, _template_line(exc)),
                               hint="give it with -p NAME=VALUE, or use a default: {{ name | default('x') }}") from None
        except TemplateBudget as exc:
            raise LabFileError(f"template too large: {exc}", location=Location(path, _template_line(exc)),
                               hint="lab files are bounded so that no file can hang or exhaust labctl (see Limits in the README)") from None
        except jinja2.exceptions.SecurityError as exc:
            raise LabFileError(f"template not allowed: {exc}", location=Location(path, _template_line(exc))) from None
        except jinja2.TemplateSyntaxError as exc:
            raise LabFileError(f"template syntax error: {exc.message}", location=Location(path, exc.lineno)) from None
        except RecursionError as exc:
            raise LabFileError("template recursion too deep", location=Location(path, _template_line(exc))) from None
        except Exception as exc:  # noqa: BLE001 - anything a template's own expressions raise is the author's to fix
            raise LabFileError(f"template error: {_describe(exc)}", location=Location(path, _template_line(exc))) from None
        # Printed values accumulate over renderings (constants are printed once, when compiling).
        pattern = re.compile(re.escape(env.nonce) + r"x[0-9]+x") if env.values else None
        return Rendered("".join(chunks), env.values, pattern)


def render(text: str, path: Path | None, params: Mapping[str, Any], undefined: type[jinja2.Undefined] = jinja2.StrictUndefined) -> Rendered:
    """Render a lab or scenario file once; every problem is a LabFileError at the template's line."""
    return LabTemplate(text, path, undefined).render(params)


def _deepest_line(text: str, deep: int = 30) -> int:
    """The line where brackets first nest ``deep`` levels: where a too-deep expression is."""
    depth, line = 0, 1
    for char in text:
        if char in "([{":
            depth += 1
            if depth >= deep:
                return line
        elif char in ")]}":
            depth = max(0, depth - 1)
        elif char == "\n":
            line += 1
    return 1


def _describe(exc: BaseException) -> str:
    words = {ZeroDivisionError: "division by zero", OverflowError: "number too large"}
    for kind, word in words.items():
        if isinstance(exc, kind):
            return word
    text = str(exc).strip() or type(exc).__name__
    return text[:300]


def _template_line(exc: BaseException) -> int | None:
    # Render errors carry no line; Jinja2 rewrites the traceback so the
    # template's own frames (named '<template>') hold its line numbers.
    line = None
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<template>":
            line = tb.tb_lineno
        tb = tb.tb_next
    return line
