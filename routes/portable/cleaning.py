"""What full_clean() says of a model instance, found in one pass without a query per constraint.

full_clean() asks the database about every check constraint (a query and a savepoint each) and
about every link and unique field; a bulk import of thousands of rows cannot afford that per row.
clean_errors() runs the same field validators and clean(), and evaluates the check constraints
in Python, with the same messages; the caller checks links and uniqueness against rows it
loaded in bulk.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable, Collection
from typing import Any, cast

from django.core.exceptions import NON_FIELD_ERRORS, FieldDoesNotExist, ValidationError
from django.db import models
from django.db.models import Q

_COMPARISONS: dict[str, Callable[[Any, Any], bool]] = {
    "exact": operator.eq,
    "gt": operator.gt,
    "gte": operator.ge,
    "lt": operator.lt,
    "lte": operator.le,
    "in": lambda value, choices: value in choices,
}


# A check constraint's condition: a Q of (lookup, value) children and nested Qs.
Condition = Q | tuple[str, Any]


class _Unsupported(Exception):
    """A check constraint whose condition only the database can evaluate."""


def _condition_fields(condition: Condition) -> set[str]:
    """Return the names of the fields a check constraint's condition reads."""
    if isinstance(condition, tuple):
        return {condition[0].split("__")[0]}
    found: set[str] = set()
    for child in condition.children:
        if not isinstance(child, Q | tuple):
            raise _Unsupported
        found |= _condition_fields(child)
    return found


def _value_of(obj: models.Model, name: str) -> Any:
    """Return obj's stored value of the field name (its id for a link)."""
    try:
        model_field = obj._meta.get_field(name)
    except FieldDoesNotExist:
        raise _Unsupported from None
    if not isinstance(model_field, models.Field):
        raise _Unsupported
    return getattr(obj, model_field.attname)


def sql_value(condition: Condition, obj: models.Model) -> bool | None:
    """Return condition on obj's values as SQL has it: True, False, or None for NULL."""
    if isinstance(condition, tuple):
        lookup, expected = condition
        name, _sep, kind = lookup.partition("__")
        kind = kind or "exact"
        if "__" in kind or hasattr(expected, "resolve_expression"):
            raise _Unsupported
        value = _value_of(obj, name)
        if kind == "isnull" or (kind == "exact" and expected is None):
            return (value is None) == (expected if kind == "isnull" else True)
        if kind not in _COMPARISONS:
            raise _Unsupported
        return None if value is None else bool(_COMPARISONS[kind](value, expected))
    # _condition_fields() has made sure that every child is a Q or a (lookup, value) pair.
    values = [sql_value(cast("Condition", child), obj) for child in condition.children]
    if condition.connector == Q.AND:
        result = False if False in values else (None if None in values else True)
    else:
        result = True if True in values else (None if None in values else False)
    return (not result) if condition.negated and result is not None else result


# A check constraint with the fields its condition reads (None: only the database can say).
_Check = tuple[models.CheckConstraint, frozenset[str] | None]


@functools.cache
def _checks(model: type[models.Model]) -> list[_Check]:
    """Return model's check constraints, each with the fields its condition reads.

    None instead of the fields: a condition only the database can evaluate.
    """
    found = []
    for constraint in model._meta.constraints:
        if not isinstance(constraint, models.CheckConstraint):
            continue
        condition = constraint.condition
        try:
            if not isinstance(condition, Q):
                raise _Unsupported
            fields: frozenset[str] | None = frozenset(_condition_fields(condition))
        except _Unsupported:
            fields = None
        found.append((constraint, fields))
    return found


def _constraint_errors(obj: models.Model, *, skipped: set[str]) -> list[str]:
    """Return the messages of obj's check constraints that its values break.

    As validate_constraints() decides (a constraint on a skipped field is not checked, NULL
    passes), but in Python: the database answers one query and savepoint per constraint. A
    condition Python cannot evaluate is still asked of the database. Unique constraints are
    the importer's: it checks them against what it loaded.
    """
    messages: list[str] = []
    for constraint, fields in _checks(type(obj)):
        if fields is not None and fields & skipped:
            continue
        try:
            if fields is None:
                raise _Unsupported
            broken = sql_value(cast("Condition", constraint.condition), obj) is False
        except _Unsupported:
            try:
                constraint.validate(type(obj), obj, exclude=skipped)
            except ValidationError as exc:
                messages.extend(exc.messages)
            continue
        if broken:
            messages.append(str(constraint.get_violation_error_message()))
    return messages


def clean_errors(obj: models.Model, *, exclude: Collection[str]) -> dict[str, list[str]]:
    """Return what full_clean() says of obj, {field or "__all__": messages}, in one pass.

    The same validators and messages: the fields', clean()'s and the check constraints'
    (_constraint_errors). Uniqueness and the excluded links are left to the caller.
    """
    errors: dict[str, list[str]] = {}
    try:
        obj.full_clean(exclude=exclude, validate_unique=False, validate_constraints=False)
    except ValidationError as exc:
        errors = {name: list(messages) for name, messages in exc.message_dict.items()}
    skipped = set(exclude) | {name for name in errors if name != NON_FIELD_ERRORS}
    broken = _constraint_errors(obj, skipped=skipped)
    if broken:
        errors.setdefault(NON_FIELD_ERRORS, []).extend(broken)
    return errors
