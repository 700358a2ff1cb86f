"""A node's config dataclass as declared ROS parameters: typed, described, ranged, read-only, validated.

    self.config = declare_config(self, FedClientConfig)

declares one parameter per field (the dataclass convention is in ``fedvla_core.config_fields``) and
returns the dataclass built from the values the node got (overrides from YAML / ``-p``, else the field
defaults). Each parameter gets a ``ParameterDescriptor``:

* ``type`` from the field's annotation, not from its default, so an ``int`` default of a ``float``
  field still makes a double parameter and an empty ``list[str]`` default a string array;
* ``description`` = the field's help (``ros2 param describe``);
* ``integer_range`` / ``floating_point_range`` from the field's ``"range"``, enforced by rclpy;
* ``read_only`` unless the field is ``"dynamic"``: the nodes read their parameters once, at start, so
  a ``ros2 param set`` is refused instead of accepted and silently ignored.

Anything wrong - a value of the wrong type, out of range, or refused by the dataclass's
``__post_init__`` - raises ``ParameterError``, whose message names the parameter(s), the value and
the help, so a node that cannot start says which of its parameters to fix.

A string array drops its empty entries: the rcl YAML parser cannot write an empty list, so the
YAML files write ``[""]`` for "none".
"""
from __future__ import annotations

import math
import typing
from dataclasses import MISSING, Field, fields
from typing import TypeVar

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.exceptions import InvalidParameterTypeException, InvalidParameterValueException
from rclpy.node import Node
from rclpy.parameter import Parameter

from fedvla_core.config_fields import field_help, field_range

T = TypeVar("T")

#: Annotation -> parameter type. Only these are supported; anything else is a programming error.
_TYPES = {bool: Parameter.Type.BOOL, int: Parameter.Type.INTEGER, float: Parameter.Type.DOUBLE,
          str: Parameter.Type.STRING, list[bool]: Parameter.Type.BOOL_ARRAY,
          list[int]: Parameter.Type.INTEGER_ARRAY, list[float]: Parameter.Type.DOUBLE_ARRAY,
          list[str]: Parameter.Type.STRING_ARRAY}
_ELEMENT = {Parameter.Type.BOOL: bool, Parameter.Type.INTEGER: int, Parameter.Type.DOUBLE: float,
            Parameter.Type.STRING: str, Parameter.Type.BOOL_ARRAY: bool, Parameter.Type.INTEGER_ARRAY: int,
            Parameter.Type.DOUBLE_ARRAY: float, Parameter.Type.STRING_ARRAY: str}
_ARRAYS = {Parameter.Type.BOOL_ARRAY, Parameter.Type.INTEGER_ARRAY, Parameter.Type.DOUBLE_ARRAY,
           Parameter.Type.STRING_ARRAY}
_INT64 = (-(2 ** 63), 2 ** 63 - 1)


class ParameterError(ValueError):
    """A node parameter that the node cannot start with; ``names`` are the parameters at fault."""

    def __init__(self, message: str, names: list[str]):
        super().__init__(message)
        self.names = names


def parameter_type(cls: type, f: Field) -> Parameter.Type:
    """The ROS parameter type of a config field, from its annotation."""
    hint = typing.get_type_hints(cls)[f.name]
    try:
        return _TYPES[hint]
    except (KeyError, TypeError):
        raise TypeError(f"{cls.__name__}.{f.name}: a ROS parameter must be bool, int, float, str or a list "
                        f"of one of them, not {hint!r}") from None


def descriptor_of(cls: type, f: Field) -> ParameterDescriptor:
    """The descriptor ``declare_config`` gives the parameter of field ``f``."""
    ptype = parameter_type(cls, f)
    descriptor = ParameterDescriptor(description=field_help(f), type=ptype.value,
                                     read_only=not f.metadata.get("dynamic", False))
    bounds = field_range(f)
    if bounds is not None:
        low, high = bounds
        if ptype == Parameter.Type.INTEGER:
            descriptor.integer_range = [IntegerRange(from_value=_INT64[0] if low is None else int(low),
                                                     to_value=_INT64[1] if high is None else int(high), step=0)]
        elif ptype == Parameter.Type.DOUBLE:
            descriptor.floating_point_range = [FloatingPointRange(
                from_value=-math.inf if low is None else float(low),
                to_value=math.inf if high is None else float(high), step=0.0)]
        else:
            raise TypeError(f"{cls.__name__}.{f.name}: a range needs an int or float field")
        descriptor.additional_constraints = (f"in [{'-inf' if low is None else low}, "
                                             f"{'inf' if high is None else high}]")
    return descriptor


def _normalized(ptype: Parameter.Type, value):
    """A parameter value as the dataclass expects it: plain lists (rclpy gives array.array), no '' strings."""
    if ptype in _ARRAYS:
        items = [_ELEMENT[ptype](v) for v in value]
        return [v for v in items if v] if ptype == Parameter.Type.STRING_ARRAY else items
    return _ELEMENT[ptype](value)


def _field_default(f: Field):
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    raise TypeError(f"field {f.name} needs a default to be a ROS parameter")


def _type_name(ptype: Parameter.Type) -> str:
    """'a double', 'an integer', 'a string array', ..."""
    name = ptype.name.lower().replace("_", " ")
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name}"


def declare_config(node: Node, cls: type[T]) -> T:
    """Declare one parameter per field of the dataclass ``cls`` on ``node``; return ``cls`` built from them.

    Raises ParameterError (naming the parameter) for a value of the wrong type, out of its range, or
    refused by ``cls.__post_init__``.
    """
    where = node.get_fully_qualified_name()
    values = {}
    for f in fields(cls):
        if not f.init:
            continue
        ptype = parameter_type(cls, f)
        descriptor = descriptor_of(cls, f)
        default = _normalized(ptype, _field_default(f))
        try:
            # An empty array has no type of its own: declare the type, and use the default when not set.
            param = node.declare_parameter(f.name, default if default != [] else ptype, descriptor)
        except (InvalidParameterValueException, InvalidParameterTypeException) as err:
            detail = str(err).removesuffix(f": {f.name}")  # rclpy appends the name; ours leads
            hint = (" (write a double with a decimal point, e.g. 10.0)"
                    if ptype == Parameter.Type.DOUBLE and "INTEGER" in detail else "")
            raise ParameterError(f"{where}: parameter '{f.name}' must be {_type_name(ptype)}"
                                 f"{_shown_range(descriptor)}{hint}; refused: {detail}. {f.name}: {field_help(f)}",
                                 [f.name]) from None
        values[f.name] = default if param.value is None else _normalized(ptype, param.value)
    return build_config(cls, values, where)


def _shown_range(descriptor: ParameterDescriptor) -> str:
    return f" {descriptor.additional_constraints}" if descriptor.additional_constraints else ""


def build_config(cls: type[T], values: dict, where: str = "") -> T:
    """``cls(**values)``; a ValueError/TypeError of its checks becomes a ParameterError naming the culprits.

    The culprits are the parameters whose value alone (every other one at its default) is refused;
    when only a combination is refused, the non-default parameters the message names (else all of
    the non-default ones).
    """
    try:
        return cls(**values)
    except (ValueError, TypeError) as err:
        problem = err
    defaults = {f.name: _field_default(f) for f in fields(cls) if f.init}
    changed = [name for name, value in values.items() if value != defaults.get(name)]

    def refused_alone(name: str) -> bool:
        try:
            cls(**dict(defaults, **{name: values[name]}))
        except (ValueError, TypeError):
            return True
        return False

    culprits = [n for n in changed if refused_alone(n)]
    if not culprits:
        words = set(str(problem).replace(".", " ").replace(",", " ").replace(":", " ").split())
        culprits = [n for n in changed if n in words] or changed
    shown = ", ".join(f"'{n}' = {values[n]!r}" for n in culprits)
    helps = " ".join(f"{n}: {field_help(next(f for f in fields(cls) if f.name == n))}" for n in culprits)
    prefix = f"{where}: " if where else ""
    raise ParameterError(f"{prefix}invalid parameter{'s' if len(culprits) > 1 else ''} {shown}: {problem}. {helps}",
                         culprits) from problem
