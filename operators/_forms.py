"""Helpers shared by the operators: plain one-line user errors, failing a
delegated run with a message, and form checks of dataset fields.

(Not an operator module: the leading ``_`` keeps it out of registration.)
"""

from __future__ import annotations

import functools
import queue
import threading
from collections.abc import Callable, Generator
from typing import Any

import fiftyone as fo
import fiftyone.operators.types as types
from fiftyone.operators.delegated import DelegatedOperationService
from fiftyone.operators.executor import ExecutionResult

from fiftyone_lazsl.errors import UserError
from fiftyone_lazsl.fo.apply import check_label_field
from fiftyone_lazsl.fo.fields import ground_truth_fields

#: What the forms say about scheduling in open-source FiftyOne.
DELEGATION_HELP = (
    "Schedule (delegated execution) needs FIFTYONE_ALLOW_LEGACY_ORCHESTRATORS=true in the "
    "App server's environment, and a worker that runs the queue: `fiftyone delegated launch` "
    "(same database and plugins dir as the App)."
)


def plain(e: BaseException) -> str:
    """The one-line message of a user error (its first non-empty line)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return lines[0] if lines else type(e).__name__


def fail_delegated(ctx: Any, message: str) -> dict:
    """Mark the delegated operation running ``ctx`` as failed with ``message``
    as its error and error message (instead of a traceback), and return
    ``{"error": message}``.

    FiftyOne 1.22.1 records only ``traceback.format_exc()`` (and no
    ``error_message``) for an exception raised by a delegated operator, and
    the execution context has no public accessor of the operation's id: the
    private ``ctx._delegated_operation_id`` is read here. Without it, the
    error is raised as :class:`UserError` (FiftyOne then records the traceback).
    """
    op_id = getattr(ctx, "_delegated_operation_id", None)
    if op_id is None:
        raise UserError(message)
    DelegatedOperationService().set_failed(
        doc_id=op_id, result=ExecutionResult(error=message, error_message=message)
    )
    return {"error": message}


def class_label_fields(dataset: Any) -> list[str]:
    """Top-level ``Classification`` fields holding class labels that are not
    outputs of a LaZSL run (the only fields offered as classes / ground truth)."""
    return sorted(ground_truth_fields(dataset)) if dataset is not None else []


def field_problem(dataset: Any, name: str | None, kinds: tuple, what: str) -> str | None:
    """Why ``name`` is not a usable field of ``dataset`` (None if it is).

    Args:
        kinds: accepted embedded document types (e.g. ``(fo.Classification,)``).
        what: how the message names the accepted kind ("a Classification field").
    """
    if not name:
        return None
    schema = dataset.get_field_schema(flat=True)
    if name not in schema:
        return f"dataset {dataset.name!r} has no field {name!r}"
    ft = schema[name]
    if not (isinstance(ft, fo.EmbeddedDocumentField) and ft.document_type in kinds):
        return f"field {name!r} is not {what}"
    return None


def label_field_problem(dataset: Any, label_field: Any) -> str | None:
    """Why an operation may not write its outputs to ``label_field`` on
    ``dataset`` (None if it may): the one check every form that writes a
    field uses, the same one the library runs before writing
    (:func:`fiftyone_lazsl.fo.apply.check_label_field`: a plain top-level
    name, not another run's outputs, not a field no LaZSL run wrote)."""
    if dataset is None:
        return None
    try:
        check_label_field(dataset, label_field)
    except UserError as e:
        return plain(e)
    return None


def invalid(prop: types.Property, message: str) -> None:
    """Mark a form input invalid with ``message`` (the App shows it under the
    input and disables Execute; the server refuses the params too)."""
    prop.invalid = True
    prop.error_message = message


def notice(inputs: types.Object, name: str, message: str, kind: str = "warning") -> None:
    """A read-only notice in the form (``warning``, ``error`` or ``notice``)."""
    view = {"warning": types.Warning, "error": types.Error}.get(kind, types.Notice)
    inputs.view(name, view(label=message))


def user_errors(execute: Callable) -> Callable:
    """Decorate a (non-generator) ``execute``: a :class:`UserError` becomes one
    plain line, as an error notification in the App plus ``{"error": line}``
    as the result (shown by the operator's output view), or a failed delegated
    operation with that line as its message. Other exceptions propagate with
    their traceback."""

    @functools.wraps(execute)
    def wrapper(self: Any, ctx: Any) -> Any:
        try:
            return execute(self, ctx)
        except UserError as e:
            msg = plain(e)
            if ctx.delegated:
                return fail_delegated(ctx, msg)
            if ctx.executor is not None:
                ctx.ops.notify(msg, variant="error")
            return {"error": msg}

    return wrapper


def error_output(ctx: Any, outputs: types.Object) -> bool:
    """Add the ``error`` line to an output view when the result carries one;
    returns whether it did (then the other outputs are left out)."""
    err = (ctx.results or {}).get("error") if isinstance(ctx.results, dict) else None
    if err:
        outputs.view("error", types.Error(label=err))
        return True
    return False


def stream_progress(
    ctx: Any, work: Callable[[Callable[[float, str], None]], Any]
) -> Generator[Any, None, Any]:
    """Generator for immediate (``execute_as_generator``) runs: calls
    ``work(progress)`` in a thread, yields one ``set_progress`` trigger per
    ``progress(fraction, label)`` call while it runs, and returns what
    ``work`` returned (``result = yield from stream_progress(ctx, work)``).
    An exception of ``work`` is raised here, in the operator's thread."""
    events, out = queue.Queue(), {}

    def run() -> None:
        try:
            out["result"] = work(lambda f, label: events.put((f, label)))
        except BaseException as e:  # re-raised below
            out["error"] = e
        finally:
            events.put(None)

    threading.Thread(target=run, daemon=True).start()
    while (ev := events.get()) is not None:
        yield ctx.trigger("set_progress", {"progress": ev[0], "label": ev[1]})
    if "error" in out:
        raise out["error"]
    return out["result"]
