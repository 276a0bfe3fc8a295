"""Parsing that cannot hang or blow up, and what it keeps: values from -p and {{ }} as data,
aliases within limits, the lines errors point at, and topology checks that scale."""

from __future__ import annotations

import random
import textwrap
import time
from collections import deque
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from labctl.errors import LabFileError
from tests.conftest import THREE_NODES
from labctl.loader import load_lab_text, load_scenario_file, rendered_data
from labctl.model import Lab
from labctl.template import parameter_value
from labctl.topology import forwarding_paths, neighbours, unreachable_pair

THREE = "name: t\n" + textwrap.dedent(THREE_NODES)  # the suite's three-node lab (tests/conftest.py)


def lab(text: str, **params):
    return load_lab_text(textwrap.dedent(text), Path("lab.yaml"), params)


@pytest.mark.parametrize("text, value", [("8080", 8080), ("-3", -3), ("0.5", 0.5), ("1e3", "1e3"), ("true", True), ("False", False),
                                         ("010", "010"), ("50ms", "50ms"), ("", ""), ("nan", "nan"), (".inf", ".inf"), ("yes", "yes")])
def test_a_p_value_is_typed_as_a_plain_scalar(text, value):
    assert parameter_value(text) == value and type(parameter_value(text)) is type(value)


def test_a_p_value_with_yaml_in_it_stays_one_value():
    loaded = lab(THREE + "description: {{ d }}\n", d="x\nnodes:\n  evil: {}\nlinks: []")
    assert loaded.lab.description == "x\nnodes:\n  evil: {}\nlinks: []"
    assert set(loaded.lab.nodes) == {"client", "router", "server"}


def test_a_p_value_inside_a_flow_mapping_cannot_close_it():
    with pytest.raises(LabFileError, match="expected 'host' or 'router'"):
        lab(THREE.replace("router: {role: router}", "router: {role: {{ r }}}"), r="router, image: evil}")


def test_typed_values_reach_template_logic_and_the_model():
    text = THREE + "description: '{% if n == 2 %}two{% endif %} {{ n + 1 }}'\n"
    assert lab(text, n="2").lab.description == "two 3"


def test_printed_values_keep_their_place_in_the_text():
    data = rendered_data("a: h{{ i }}\nb: '{{ i }}'\nc: {{ i }}\nd: {{ s }}\ne: \"x {{ s }} y\"\n", None, {"i": 7, "s": "1.5"})
    assert data == {"a": "h7", "b": "7", "c": 7, "d": 1.5, "e": "x 1.5 y"}


def test_keys_written_by_a_loop_are_names():
    text = "name: t\nnodes:\n{% for i in range(3) %}  h{{ i }}: {}\n{% endfor %}  r: {role: router}\nlinks:\n  - {name: l, endpoints: [h0, h1, h2, r]}\n"
    assert list(lab(text).lab.nodes) == ["h0", "h1", "h2", "r"]


def test_a_scenario_p_value_cannot_add_a_step(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("name: s\nsteps:\n  - {sleep: 0, note: \"{{ n }}\"}\n")
    [one] = load_scenario_file(path, lab(THREE), {"n": "x\"}\n  - {node: server, exec: id}\n  - {sleep: 0, note: \"y"})
    assert [step.kind for step in one.scenario.steps] == ["sleep"]
    assert "exec: id" in one.scenario.steps[0].note


def test_aliases_within_the_limits_are_fine_and_errors_in_them_are_located():
    loaded = lab("name: t\nnodes: {a: {}, b: {}}\nlinks:\n  - {name: l, endpoints: [a, b], impair: &slow {delay: 50ms}}\n"
                 "  - {name: m, endpoints: [a, b], impair: *slow}\n")
    assert [link.impair[0].delay for link in loaded.lab.links] == [0.05, 0.05]
    with pytest.raises(LabFileError) as caught:
        lab("name: t\nnodes: {a: {}, b: {}}\nlinks:\n  - {name: l, endpoints: [a, b], impair: &bad {delay: .nan}}\n"
            "  - {name: m, endpoints: [a, b], impair: *bad}\n")
    assert (caught.value.location.line, caught.value.location.field) == (4, "links[0].impair.delay")


def test_a_merge_key_is_refused_but_a_quoted_one_is_a_plain_key():
    with pytest.raises(LabFileError, match="merge keys"):
        lab(THREE + "x: &x {a: 1}\ny:\n  <<: *x\n")
    with pytest.raises(LabFileError, match="unknown key '<<'"):
        lab(THREE + "'<<': 1\n")


def test_a_matrix_is_counted_before_it_is_rendered(tmp_path):
    path = tmp_path / "s.yaml"
    axis = "[" + ", ".join(map(str, range(150))) + "]"
    path.write_text(f"name: s\nmatrix: {{a: {axis}, b: {axis}}}\nsteps:\n  - {{sleep: 0}}\n")
    started = time.monotonic()
    with pytest.raises(LabFileError, match="22,500 points"):
        load_scenario_file(path, lab(THREE), {})
    assert time.monotonic() - started < 5  # a hang guard: it used to validate for minutes
    # -p fixes an axis, and then it fits.
    assert len(load_scenario_file(path, lab(THREE), {"a": "1"})) == 150


def test_four_hundred_hosts_on_one_link_validate_in_a_moment():
    nodes = "".join(f"  h{i}: {{}}\n" for i in range(400))
    text = f"name: big\nnodes:\n{nodes}links:\n  - {{name: l, subnet: 10.0.0.0/16, endpoints: [{', '.join(f'h{i}' for i in range(400))}]}}\n"
    started = time.monotonic()
    load_lab_text(text)
    assert time.monotonic() - started < 10  # a hang guard (it took 210 s); figures: benchmarks/bench_validate.py


# --- topology against the obvious (and slow) definitions ---------------------------------------

def reference_paths(lab: Lab, start: str) -> dict[str, list[str]]:
    adjacent = neighbours(lab)
    paths = {start: [start]}
    queue = deque([start])
    while queue:
        here = queue.popleft()
        if here != start and lab.nodes[here].role != "router":
            continue
        for nxt in adjacent[here]:
            if nxt not in paths:
                paths[nxt] = [*paths[here], nxt]
                queue.append(nxt)
    return paths


def reference_unreachable(lab: Lab):
    for a in lab.hosts():
        reach = reference_paths(lab, a)
        for b in lab.hosts():
            if b not in reach:
                return a, b
    return None


@st.composite
def labs(draw) -> Lab:
    n = draw(st.integers(2, 9))
    names = [f"n{i}" for i in range(n)]
    roles = {name: draw(st.sampled_from(["host", "router"])) for name in names}
    links = []
    for k in range(draw(st.integers(1, 6))):
        ends = draw(st.lists(st.sampled_from(names), min_size=2, max_size=min(4, n), unique=True))
        links.append({"name": f"l{k}", "endpoints": ends})
    return Lab.model_validate({"name": "t", "nodes": {name: {"role": role} for name, role in roles.items()}, "links": links})


@settings(max_examples=300, deadline=None)
@given(labs())
def test_topology_agrees_with_the_obvious_definitions(lab):
    for name in lab.nodes:
        assert forwarding_paths(lab, name) == reference_paths(lab, name)
    assert unreachable_pair(lab) == reference_unreachable(lab)


def test_neighbours_keep_link_then_endpoint_order():
    lab = Lab.model_validate({"name": "t", "nodes": {"a": {}, "b": {}, "c": {}},
                              "links": [{"name": "x", "endpoints": ["a", "c"]}, {"name": "y", "endpoints": ["b", "a", "c"]}]})
    assert neighbours(lab) == {"a": ["c", "b"], "b": ["a", "c"], "c": ["a", "b"]}


def test_an_unreachable_pair_in_a_large_lab_is_found_quickly():
    rng = random.Random(7)
    nodes = {f"h{i}": {} for i in range(600)} | {"r": {"role": "router"}}
    links = [{"name": f"l{i}", "endpoints": ["r", *(f"h{j}" for j in range(i * 50, i * 50 + 50))]} for i in range(11)]
    links.append({"name": "island", "endpoints": ["h550", "h599"]})
    links[-2]["endpoints"] = [e for e in links[-2]["endpoints"] if e != "r"]  # cut the last group off
    rng.shuffle(links)
    lab = Lab.model_validate({"name": "t", "nodes": nodes, "links": links})
    started = time.monotonic()
    assert unreachable_pair(lab) is not None
    assert time.monotonic() - started < 5


def test_a_sweep_file_is_read_as_boundedly_as_a_lab_file(tmp_path):
    from labctl.errors import UserError
    from labctl.sweep.spec import load_sweep_file

    bomb = (Path(__file__).parent / "corpus" / "lab" / "yaml-alias-bomb.yaml").read_text()
    for name, body in (("bomb", bomb), ("latin1", "sweep: {scenario: caf\xe9}\n")):
        path = tmp_path / f"{name}.yaml"
        path.write_bytes(body.encode("latin-1"))
        started = time.monotonic()
        with pytest.raises(UserError) as caught:
            load_sweep_file("labs/teardown", path)
        assert str(path) in str(caught.value) and time.monotonic() - started < 10
