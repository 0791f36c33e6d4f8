"""Hearth's Python worker: runs one Cog predictor for the Hearth daemon.

Hearth starts this file with the package's own interpreter, in the package's directory, as
`python worker.py <predictor ref> <slots>`. It speaks Hearth's worker protocol (see
`protocol.rs` beside this file): one JSON object per line, commands on stdin, messages on the
file descriptor that was stdout when the worker started. The predictor's own stdout and stderr
become `log` messages of the prediction that printed them (a context variable says which);
output written below Python (C extensions) reaches the daemon's worker log.

Everything Cog's SDK already does is left to it: loading the predictor, reading its signature
(`cog._inspector.create_predictor`), checking and coercing inputs (`check_input`), encoding
outputs, and the JSON schema of each input and output type.
"""

import asyncio
import contextvars
import ctypes
import inspect
import io
import json
import os
import pathlib
import sys
import threading
import time
import traceback
import warnings

PROTOCOL_VERSION = 1

# The id of the prediction the current thread or task runs; None during setup.
current_prediction = contextvars.ContextVar("hearth_prediction", default=None)


class Channel:
    """The message side of the protocol: whole JSON lines, from any thread."""

    def __init__(self, fd):
        self._file = os.fdopen(fd, "w", encoding="utf-8", buffering=1)
        self._lock = threading.Lock()

    def send(self, **message):
        line = json.dumps(message, default=str, allow_nan=False)
        with self._lock:
            self._file.write(line + "\n")
            self._file.flush()


class LogStream(io.TextIOBase):
    """Stands in for sys.stdout / sys.stderr: each whole line becomes a `log` message of the
    prediction that wrote it (partial lines wait for their end, or for `flush`)."""

    def __init__(self, channel, source):
        self._channel = channel
        self._source = source
        self._partial = {}  # prediction id -> text without its newline yet
        self._lock = threading.Lock()

    def writable(self):
        return True

    def write(self, text):
        if not text:
            return 0
        pid = current_prediction.get()
        with self._lock:
            pending = self._partial.pop(pid, "") + text
            whole, newline, rest = pending.rpartition("\n")
            if rest:
                self._partial[pid] = rest
        if newline:
            self._send(pid, whole + newline)
        return len(text)

    def flush(self, pid=None):
        pid = pid if pid is not None else current_prediction.get()
        with self._lock:
            rest = self._partial.pop(pid, "")
        if rest:
            self._send(pid, rest)

    def _send(self, pid, data):
        self._channel.send(type="log", id=pid, source=self._source, data=data)


def encode_paths(value):
    """Marks files in an output so Hearth can turn them into data URIs or uploads."""
    if isinstance(value, pathlib.Path):
        return {"$hearth_path": str(value.resolve())}
    if isinstance(value, list):
        return [encode_paths(v) for v in value]
    if isinstance(value, dict):
        return {k: encode_paths(v) for k, v in value.items()}
    return value


# ---- the OpenAPI schema, as `cog build` writes it ------------------------------------------
#
# Cog's CLI reads the predictor's source (pkg/schema in Cog's repository); its SDK reads the
# signature at run time. The SDK's reading gives the types; the few things it does not keep
# (which inputs set a default, `accept`, the `@cog.streaming` decorator) are read off the
# source here, so the document equals the CLI's.


def predictor_schema(info, fn):
    """The `Input` and `Output` components, the enum components of inputs with choices, and
    whether the predictor streams (`@cog.streaming` on an iterator output)."""
    with_default, decorated = source_facts(fn)
    try:
        parameters = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        parameters = {}
    properties, required, enums = {}, [], {}
    for name, field in sorted(info.inputs.items(), key=lambda kv: kv[1].order):
        prop, enum = input_property(name, field)
        if enum is not None:
            enums[name] = enum
        explicit = name in with_default if with_default is not None else field.default is not None
        if apply_default(prop, field, explicit):
            required.append(name)
        accept = getattr(getattr(parameters.get(name), "default", None), "accept", None)
        if isinstance(accept, str):
            prop["x-cog-accept"] = accept
        properties[name] = prop
    schema = {"title": "Input", "type": "object", "properties": properties}
    if required:
        schema["required"] = required
    output = info.output.json_type()
    if not any(k in output for k in ("type", "anyOf", "allOf", "$ref", "items")):
        output["type"] = "object"  # `Any`: the CLI writes an object
    streams = output.get("x-cog-array-type") == "iterator"
    return {
        "input": schema,
        "output": output,
        "components": enums,
        "streams": streams,
        "streaming": streams and decorated,
        "cog_version": _cog_version(),
    }


def input_property(name, field):
    """An input's property, and the enum component its choices become (else None)."""
    prop = {"x-order": field.order}
    enum = None
    if field.choices is not None:
        kind = field.type.primitive.json_type().get("type") or "string"
        values = [json_number(_encode(field, c)) for c in field.choices]
        enum = {"title": name, "description": "An enumeration.", "enum": values, "type": kind}
        prop["allOf"] = [{"$ref": "#/components/schemas/" + name}]
    else:
        prop["title"] = title_case(name)
        prop.update(field.type.json_type())
    for key, value in (
        ("description", field.description),
        ("minimum", json_number(field.ge)),
        ("maximum", json_number(field.le)),
        ("minLength", field.min_length),
        ("maxLength", field.max_length),
        ("pattern", field.regex),
    ):
        if value is not None:
            prop[key] = value
    if field.deprecated:
        prop["deprecated"] = True
    return prop, enum


def apply_default(prop, field, explicit):
    """Adds the default and `nullable` by the CLI's rules; True when the input is required.
    A default of None on an input that cannot be null means "no default" (a seed made up at
    run time), except on a `Secret`, where it means an optional credential."""
    from cog import _adt

    repetition = field.type.repetition
    nullable = repetition in (_adt.Repetition.OPTIONAL, _adt.Repetition.OPTIONAL_REPEATED)
    default = _default_value(field) if explicit else None
    if (
        explicit
        and default is None
        and field.type.primitive == _adt.PrimitiveType.SECRET
        and repetition == _adt.Repetition.REQUIRED
    ):
        nullable = True
    has_default = explicit and (default is not None or nullable)
    if has_default:
        prop["default"] = json_number(_encode(field, default))
    if nullable:
        prop["nullable"] = True
        for variant in prop.get("anyOf", []):
            variant["nullable"] = True
    union = field.type.union_variants is not None
    return not has_default and (
        union or repetition in (_adt.Repetition.REQUIRED, _adt.Repetition.REPEATED)
    )


def source_facts(fn):
    """Off the predict function's source: the names of the inputs that set a default (`= x` or
    `Input(default=x)`), and whether `@cog.streaming` decorates it. (None, False) when the
    source cannot be read."""
    import ast
    import textwrap

    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
    except (OSError, TypeError, SyntaxError):
        return None, False
    node = tree.body[0] if tree.body else None
    if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        return None, False
    args = node.args
    positional = args.posonlyargs + args.args
    defaults = list(zip(positional[len(positional) - len(args.defaults) :], args.defaults))
    defaults += [(a, d) for a, d in zip(args.kwonlyargs, args.kw_defaults) if d is not None]
    with_default = set()
    for arg, default in defaults:
        is_input = isinstance(default, ast.Call) and _callee(default.func) == "Input"
        if not is_input or any(k.arg == "default" for k in default.keywords):
            with_default.add(arg.arg)
    decorated = any(_callee(d) == "streaming" for d in node.decorator_list)
    return with_default, decorated


def _callee(expr):
    """`Input` of `Input`, `cog.Input` and `Input(...)`."""
    import ast

    if isinstance(expr, ast.Call):
        return _callee(expr.func)
    if isinstance(expr, ast.Attribute):
        return expr.attr
    if isinstance(expr, ast.Name):
        return expr.id
    return None


def title_case(name):
    """The CLI's titles: each `_`-separated part with its first letter upper-cased."""
    return " ".join(part[:1].upper() + part[1:] for part in name.split("_"))


def json_number(value):
    """Whole floats as integers, as Go writes them (`1`, not `1.0`)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [json_number(v) for v in value]
    return value


def _encode(field, value):
    if value is None or isinstance(value, (list, dict)):
        return value
    return field.type.json_encode(value)


def _default_value(field):
    from dataclasses import MISSING, Field

    default = field.default
    if isinstance(default, Field):
        return None if default.default is MISSING else default.default
    return default


def _cog_version():
    try:
        import cog

        return cog.__version__
    except (ImportError, AttributeError):
        return ""


class Worker:
    def __init__(self, channel, ref, slots):
        self.channel = channel
        self.ref = ref
        self.slots = slots
        self.running = {}  # prediction id -> thread ident or asyncio future
        self.lock = threading.Lock()
        self.loop = None

    # ---- setup ----------------------------------------------------------------------------

    def setup(self):
        from cog._inspector import _selected_predict_method, create_predictor
        from cog.predictor import (
            extract_setup_weights,
            has_setup_weights,
            load_predictor_from_ref,
        )

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            self.predictor = load_predictor_from_ref(self.ref)
            module_name = os.path.basename(self.ref.split(":", 1)[0]).replace(".py", "")
            if inspect.isclass(type(self.predictor)) and not inspect.isfunction(self.predictor):
                class_name = type(self.predictor).__name__
                method, _ = _selected_predict_method(type(self.predictor), class_name)
                self.predict_fn = getattr(self.predictor, method)
            else:
                class_name = self.predictor.__name__
                self.predict_fn = self.predictor
            self.info = create_predictor(module_name, class_name)
        self.is_async = inspect.iscoroutinefunction(self.predict_fn) or inspect.isasyncgenfunction(
            self.predict_fn
        )
        if self.slots > 1 and not self.is_async:
            raise ValueError(
                f"concurrency.max is {self.slots}, but more than one slot needs an async "
                "run() or predict() method"
            )
        if hasattr(self.predictor, "setup"):
            if has_setup_weights(self.predictor):
                result = self.predictor.setup(weights=extract_setup_weights(self.predictor))
            else:
                result = self.predictor.setup()
            if inspect.iscoroutine(result):
                asyncio.run(result)
        if self.is_async:
            self.loop = asyncio.new_event_loop()
            threading.Thread(target=self.loop.run_forever, name="predict-loop", daemon=True).start()
        schema = predictor_schema(self.info, self.predict_fn)
        self.streams = schema["streams"]
        return schema

    # ---- predictions -----------------------------------------------------------------------

    def predict(self, pid, raw_input):
        from cog._inspector import check_input

        try:
            kwargs = check_input(self.info.inputs, raw_input)
        except ValueError as e:
            self.channel.send(type="invalid", id=pid, error=str(e))
            return
        self.channel.send(type="accepted", id=pid)
        if self.is_async:
            future = asyncio.run_coroutine_threadsafe(self._predict_async(pid, kwargs), self.loop)
            with self.lock:
                self.running[pid] = future
        else:
            thread = threading.Thread(
                target=self._predict_sync, args=(pid, kwargs), name=f"predict-{pid}", daemon=True
            )
            with self.lock:
                self.running[pid] = thread
            thread.start()

    def _predict_sync(self, pid, kwargs):
        current_prediction.set(pid)
        started = time.monotonic()
        try:
            result = self.predict_fn(**kwargs)
            if inspect.isgenerator(result) or self.streams:
                for item in result:
                    self._send_chunk(pid, item)
                self._done(pid, None, started)
            else:
                self._done(pid, self.info.output.json_encode(result), started)
        except BaseException as e:  # noqa: BLE001 — every outcome must reach the daemon
            self._failed(pid, e)
        finally:
            with self.lock:
                self.running.pop(pid, None)

    async def _predict_async(self, pid, kwargs):
        current_prediction.set(pid)
        started = time.monotonic()
        try:
            if inspect.isasyncgenfunction(self.predict_fn):
                async for item in self.predict_fn(**kwargs):
                    self._send_chunk(pid, item)
                self._done(pid, None, started)
            else:
                result = await self.predict_fn(**kwargs)
                if inspect.isasyncgen(result):
                    async for item in result:
                        self._send_chunk(pid, item)
                    self._done(pid, None, started)
                else:
                    self._done(pid, self.info.output.json_encode(result), started)
        except BaseException as e:  # noqa: BLE001
            self._failed(pid, e)
        finally:
            with self.lock:
                self.running.pop(pid, None)

    def _send_chunk(self, pid, item):
        chunk = self.info.output.type.json_encode(item)
        self.channel.send(type="output", id=pid, chunk=encode_paths(chunk))

    def _done(self, pid, output, started):
        flush_logs(pid)
        self.channel.send(
            type="done",
            id=pid,
            output=encode_paths(output),
            predict_time=time.monotonic() - started,
        )

    def _failed(self, pid, error):
        from cog import CancelationException

        flush_logs(pid)
        if isinstance(error, (CancelationException, asyncio.CancelledError, KeyboardInterrupt)):
            self.channel.send(type="cancelled", id=pid)
            return
        self.channel.send(
            type="failed",
            id=pid,
            error=f"{type(error).__name__}: {error}",
            traceback="".join(traceback.format_exception(error)),
        )

    def cancel(self, pid):
        from cog import CancelationException

        with self.lock:
            running = self.running.get(pid)
        if running is None:
            return
        if isinstance(running, threading.Thread):
            # Cog's semantics for a sync predictor: raise CancelationException inside it.
            ctypes.pythonapi.PyThreadState_SetAsyncExc(
                ctypes.c_ulong(running.ident), ctypes.py_object(CancelationException)
            )
        else:
            running.cancel()


def flush_logs(pid):
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, LogStream):
            stream.flush(pid)


def main():
    ref, slots = sys.argv[1], int(sys.argv[2])
    # The protocol keeps the real stdout; fd 1 then points where stderr does, so output that
    # bypasses sys.stdout (C extensions, subprocesses) reaches the daemon's log, not the protocol.
    channel = Channel(os.dup(1))
    os.dup2(2, 1)
    sys.stdout = LogStream(channel, "stdout")
    sys.stderr = LogStream(channel, "stderr")
    sys.path.insert(0, os.getcwd())

    worker = Worker(channel, ref, slots)
    started = time.monotonic()
    try:
        schema = worker.setup()
        flush_logs(None)
    except BaseException as e:  # noqa: BLE001 — setup failures are reported, not raised
        channel.send(
            type="setup_failed",
            error=f"{type(e).__name__}: {e}",
            traceback="".join(traceback.format_exception(e)),
        )
        return 1
    channel.send(
        type="ready",
        protocol=PROTOCOL_VERSION,
        schema=schema,
        is_async=worker.is_async,
        setup_time=time.monotonic() - started,
    )
    for line in sys.stdin:
        try:
            command = json.loads(line)
            kind = command["type"]
            if kind == "predict":
                worker.predict(command["id"], command.get("input") or {})
            elif kind == "cancel":
                worker.cancel(command["id"])
            elif kind == "shutdown":
                break
        except Exception as e:  # noqa: BLE001 — a bad command must not end the worker
            channel.send(type="log", id=None, source="worker", data=f"bad command: {e}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
