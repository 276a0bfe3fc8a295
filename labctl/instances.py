"""Lab instances: one lab up several times at once, each copy isolated from the others.

An instance is a name (``default`` unless asked otherwise). A lab's instance is known to
an engine by its *key*: the lab's name for the default instance (so labs brought up before
instances existed keep their names), ``LAB.INSTANCE`` for any other. Lab names never hold
a dot and instance names never hold a dot or a dash, so a key (and every engine name made
from it, ``labctl-KEY-NODE``) belongs to exactly one lab instance.

Engine-neutral and pure: what an engine calls its objects is the engine's (it makes them
from the key); which subnets and addresses an instance uses is the planner's
(``labctl.remap``).
"""

from __future__ import annotations

import re

from .errors import UserError

DEFAULT_INSTANCE = "default"
INSTANCE_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_]{0,19}$")
SEPARATOR = "."


def check_instance(name: str | None) -> str:
    """An instance name as given by a user (None: the default), or a ``UserError``."""
    if name is None:
        return DEFAULT_INSTANCE
    if not INSTANCE_PATTERN.match(name):
        raise UserError(f"instance name '{name}' is not valid: lowercase letters, digits and '_', "
                        "starting with a letter or digit, at most 20 characters",
                        hint="e.g. --instance a, --instance run2, --instance alice_1")
    return name


def lab_key(lab: str, instance: str = DEFAULT_INSTANCE) -> str:
    """What an engine knows a lab instance by: the lab's name for the default instance."""
    return lab if instance == DEFAULT_INSTANCE else f"{lab}{SEPARATOR}{instance}"


def split_key(key: str) -> tuple[str, str]:
    """A key back to (lab, instance)."""
    lab, sep, instance = key.partition(SEPARATOR)
    return lab, instance if sep else DEFAULT_INSTANCE


def describe(lab: str, instance: str) -> str:
    """A lab instance as messages name it: ``teardown`` or ``teardown (instance a)``."""
    return lab if instance == DEFAULT_INSTANCE else f"{lab} (instance {instance})"


def flag(instance: str) -> str:
    """The option that names this instance on a command line ('' for the default)."""
    return "" if instance == DEFAULT_INSTANCE else f" --instance {instance}"
