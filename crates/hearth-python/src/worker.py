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


def input_schema(info):
    """The `Input` component, as `cog build` writes it into the OpenAPI document."""
    properties, required = {}, []
    for name, field in sorted(info.inputs.items(), key=lambda kv: kv[1].order):
        prop = {"title": name.replace("_", " ").title(), "x-order": field.order}
        prop.update(field.type.json_type())
        default = _default_of(field)
        if default is not _MISSING:
            if default is not None:
                prop["default"] = field.type.json_encode(default) if not isinstance(default, (list, dict)) else default
        elif _is_required(field):
            required.append(name)
        if field.description is not None:
            prop["description"] = field.description
        if field.ge is not None:
            prop["minimum"] = field.ge
        if field.le is not None:
            prop["maximum"] = field.le
        if field.min_length is not None:
            prop["minLength"] = field.min_length
        if field.max_length is not None:
            prop["maxLength"] = field.max_length
        if field.regex is not None:
            prop["pattern"] = field.regex
        if field.choices is not None:
            prop["enum"] = list(field.choices)
        if field.deprecated:
            prop["deprecated"] = True
        properties[name] = prop
    schema = {"title": "Input", "type": "object", "properties": properties}
    if required:
        schema["required"] = required
    return schema


_MISSING = object()


def _default_of(field):
    from dataclasses import MISSING, Field

    default = field.default
    if isinstance(default, Field):
        if default.default is not MISSING:
            return default.default
        return _MISSING
    return _MISSING if default is None and _is_required(field) else default


def _is_required(field):
    from cog import _adt

    return field.type.repetition not in (
        _adt.Repetition.OPTIONAL,
        _adt.Repetition.OPTIONAL_REPEATED,
    )


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
        output = self.info.output.json_type()
        self.streams = output.get("x-cog-array-type") == "iterator"
        return {"input": input_schema(self.info), "output": output, "streams": self.streams}

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
