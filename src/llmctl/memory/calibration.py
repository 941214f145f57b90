"""Measured memory from real llama-server launches, kept beside the formula's figures.

A measurement is keyed by the model file (path, size, modification time), the launch arguments
that change memory (host, port and alias left out) and the llama-server build (`--version`), so a
new model file, other flags or another build never reuse an old figure. Nothing here starts a
process except `measure`, which is a real launch: llama-server at `-lv 4` (the level at which it
prints its buffers; the default prints none), stopped as soon as the model is loaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmctl.llama.binary import LlamaBuild, llama_build
from llmctl.memory.measured import FAILED, LOADED, Reported, parse_reported

# arguments that do not change memory: left out of the key
_UNKEYED = {"--host": 1, "--port": 1, "--alias": 1, "-a": 1, "-lv": 1, "--verbosity": 1}
_UNKEYED_SWITCHES = {"--no-warmup", "-v", "--verbose"}


def memory_args(argv: Sequence[str]) -> list[str]:
    """The arguments of a llama-server command line (binary left out) that can change memory."""
    args = list(argv[1:]) if argv and not argv[0].startswith("-") else list(argv)
    out: list[str] = []
    i = 0
    while i < len(args):
        flag = args[i].split("=", 1)[0]
        if flag in _UNKEYED:
            i += 1 if "=" in args[i] else 2
            continue
        if flag not in _UNKEYED_SWITCHES:
            out.append(args[i])
        i += 1
    return out


def calibration_key(model: str, argv: Sequence[str], build: LlamaBuild | None) -> str:
    path = Path(os.path.expanduser(model))
    try:
        st = path.stat()
        ident = [str(path.resolve()), st.st_size, st.st_mtime_ns]
    except OSError:
        ident = [str(path), 0, 0]
    blob = json.dumps(
        {"model": ident, "args": memory_args(argv), "build": build.label if build else None}
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


@dataclass
class Measurement:
    key: str
    model: str
    args: list[str]
    build: str | None
    reported: Reported

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "model": self.model,
            "args": self.args,
            "build": self.build,
            "reported": self.reported.to_json(),
        }


class CalibrationStore:
    """A JSON file of measurements (`calibration.json` in the state folder)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _load(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def get(self, key: str) -> Measurement | None:
        if not self.path.exists():
            return None
        item = self._load().get(key)
        if not isinstance(item, dict):
            return None
        return Measurement(
            key,
            str(item.get("model", "")),
            list(item.get("args", [])),
            item.get("build"),
            Reported.from_json(item.get("reported", {})),
        )

    def put(self, m: Measurement) -> None:
        data = self._load()
        data[m.key] = m.to_json()
        self._save(data)

    def _save(self, data: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        tmp.replace(self.path)

    def build(self, binary: str | None, *, ask: bool = True) -> LlamaBuild | None:
        """The build of `binary`, remembered per file (path, size, mtime) so that an estimate
        does not start llama-server each time; asked again when the binary changes."""
        if not binary:
            return None
        try:
            st = Path(binary).stat()
        except OSError:
            return None
        ident = f"{Path(binary).resolve()}:{st.st_size}:{st.st_mtime_ns}"
        data = self._load()
        builds = data.get("_builds", {})
        known = builds.get(ident) if isinstance(builds, dict) else None
        if isinstance(known, list) and len(known) == 3:
            return LlamaBuild(str(known[0]), int(known[1]), str(known[2]))
        if not ask:
            return None
        found = llama_build(binary)
        if found is not None:
            builds = builds if isinstance(builds, dict) else {}
            builds[ident] = [found.version, found.build, found.commit]
            data["_builds"] = builds
            self._save(data)
        return found


def record_log(
    store: CalibrationStore,
    model: str,
    argv: Sequence[str],
    build: LlamaBuild | None,
    log_text: str,
) -> Measurement | None:
    """Keep the buffers a llama-server log reports (None when it printed none: below -lv 4)."""
    reported = parse_reported(log_text)
    if reported.empty or not reported.compute:
        return None
    key = calibration_key(model, argv, build)
    m = Measurement(key, model, memory_args(argv), build.label if build else None, reported)
    store.put(m)
    return m


def measure_launch(
    store: CalibrationStore,
    model: str,
    argv: Sequence[str],
    build: LlamaBuild | None,
    env: dict[str, str] | None = None,
    unset_env: Sequence[str] = (),
) -> Measurement | None:
    """A real launch of `argv`, its buffers kept under the key of (model, argv, build)."""
    return record_log(store, model, argv, build, measure(argv, env=env, unset_env=unset_env))


def measure_reported(
    argv: Sequence[str],
    *,
    warmup: bool = False,
    env: dict[str, str] | None = None,
    unset_env: Sequence[str] = (),
) -> tuple[Reported, str]:
    """A real launch of `argv` (see `measure`): what its log reports, and the log."""
    log = measure(argv, warmup=warmup, env=env, unset_env=unset_env)
    return parse_reported(log), log


def on_free_port(argv: Sequence[str]) -> list[str]:
    """`argv` listening on a free port of 127.0.0.1 (any --port it gives replaced): llama-server
    binds before it loads, so two measurements at once must not share a port."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        if argv[i] == "--port":
            i += 2
            continue
        if not argv[i].startswith("--port="):
            out.append(argv[i])
        i += 1
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return [*out, "--port", str(port)]


def measure(
    argv: Sequence[str],
    *,
    timeout: float = 600.0,
    warmup: bool = False,
    env: dict[str, str] | None = None,
    unset_env: Sequence[str] = (),
) -> str:
    """Run llama-server (argv[0]) at -lv 4 on a free port until the model is loaded or it exits;
    return its log.

    Without `warmup`, --no-warmup: the buffers are reserved before the warm-up, except a
    multimodal projector's compute buffer, reserved during its warm-up only.
    The process is stopped (SIGTERM, then SIGKILL) before returning, whatever happens. A process
    that neither loads nor exits is stopped after `timeout` seconds.
    """
    cmd = [*on_free_port(argv), "-lv", "4", *([] if warmup else ["--no-warmup"])]
    proc = subprocess.Popen(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        # like every llmctl launch: the router's and upstreams' keys are not passed on
        env={**{k: v for k, v in os.environ.items() if k not in unset_env}, **(env or {})},
    )
    lines: list[str] = []
    # a launch that hangs is killed, which ends the read below
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            if LOADED in line or FAILED in line:
                break
    finally:
        timer.cancel()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
    return "".join(lines)
