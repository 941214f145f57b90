#!/usr/bin/env python3
"""FAKE llama-server for the tests: does on demand what a real llama-server cannot.

It speaks just enough of llama-server: binds the port before "loading", answers /health 503
while loading and 200 after, prints llama-server-style log lines ("model loaded",
"listening on"), and answers /v1/models and /v1/chat/completions with a canned reply.

Modes (--mode):
  ok                 load for --load-time seconds (a progress line every --progress-every), then serve
  die                print --message, "exiting due to model loading error", exit --exit-code
  hang               print a few lines, then nothing, never become ready
  dots               load printing progress dots without newlines (progress without lines)
  ignore-term        like ok, but ignores SIGTERM (only SIGKILL stops it)
  port-exit          become ready, then fork a child of the same session that keeps the port,
                     and exit (the leader is gone, the port still taken)
  exit-after-ready   become ready, then exit --exit-delay seconds later
  save-crash         like ok; GET /slots shows slot 0 holding 1000 tokens; POST /slots/0?action=save
                     writes half a file under --slot-save-path, then the process dies unanswered
  save-hang          like save-crash, but the save never answers (the process stays)
  restore-crash      like ok, but dies on POST /slots/N?action=restore

Out of memory beside others: with $FAKE_LLAMA_OOM_PORTS (comma-separated ports), a load while
another server answers on one of them fails with llama.cpp's own out-of-memory lines for the CPU
buffer (a load beside nothing there succeeds): a device budget the formula gets wrong, on
purpose. $FAKE_LLAMA_LAUNCHES names a file that gets one line per launch.
As server.binary: --help, --version and --list-devices answer and exit.
--pose-build N: pose as llama.cpp build N from before `--log-jsonl` and slot token counts:
`--version` prints `version: N (bN)`, `--help` lists an old build's flags (no --log-jsonl,
--mmap/--no-mmap instead of --load-mode), and GET /slots has no n_prompt_tokens.

--exit-file PATH (port-exit, exit-after-ready): leave once PATH exists, not --exit-delay after
ready. --started-file PATH: touched once the fake is loading. --ready-file PATH: keep loading (ok
mode) until PATH exists, whatever --load-time says: a test decides when the load ends.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

T0 = time.monotonic()
READY = threading.Event()
OPTS: dict[str, str] = {}


def log(level: str, msg: str) -> None:
    t = time.monotonic() - T0
    stamp = f"{int(t // 60):d}.{int(t % 60):02d}.{int((t * 1000) % 1000):03d}.000"
    sys.stderr.write(f"{stamp} {level} {msg}\n")
    sys.stderr.flush()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _send(self, code: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _loading(self) -> bool:
        if READY.is_set():
            return False
        self._send(
            503, {"error": {"message": "Loading model", "type": "unavailable_error", "code": 503}}
        )
        return True

    def do_GET(self) -> None:
        if self._loading():
            return
        if self.path == "/health":
            self._send(200, {"status": "ok"})
        elif self.path == "/slots" and OPTS.get("pose_build"):
            self._send(200, [{"id": 0, "is_processing": False}])  # no n_prompt_tokens
        elif self.path == "/slots" and OPTS.get("mode", "").startswith("save-"):
            self._send(200, [{"id": 0, "is_processing": False, "n_prompt_tokens": 1000}])
        elif self.path == "/v1/models":
            self._send(200, {"object": "list", "data": [{"id": "fake", "object": "model"}]})
        else:
            self._send(404, {"error": {"message": "File Not Found", "code": 404}})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        if self._loading():
            return
        if self.path.startswith("/slots/") and OPTS.get("mode") == "restore-crash":
            log("E", "fake: dies while restoring a slot")
            os._exit(3)
        if self.path.startswith("/slots/") and OPTS.get("mode", "").startswith("save-"):
            name = json.loads(body)["filename"]
            with open(os.path.join(OPTS["slot_save_path"], name), "wb") as f:
                f.write(b"ggsq" + b"\0" * 4096)  # half of a slot file
            log("I", f"fake: {OPTS['mode']} while writing {name}")
            if OPTS["mode"] == "save-crash":
                os._exit(3)
            while True:
                time.sleep(3600)
        self._send(
            200,
            {
                "object": "chat.completion",
                "model": "fake",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "fake reply"},
                        "finish_reason": "stop",
                    }
                ],
            },
        )


def other_alive(ports: str) -> bool:
    """Whether a server answers on one of `ports` (127.0.0.1)."""
    import socket

    for port in filter(None, (p.strip() for p in ports.split(","))):
        with socket.socket() as s:
            s.settimeout(1.0)
            if s.connect_ex(("127.0.0.1", int(port))) == 0:
                return True
    return False


def out_of_memory(args: argparse.Namespace) -> int:
    """llama.cpp's lines for a CPU buffer it cannot allocate (b11312, llama-model.cpp/ggml)."""
    size = 437944320
    log("I", "llama_model_loader: loaded meta data")
    log("I", "load_tensors: loading model tensors, this can take a while... (mmap = false)")
    log("E", f"ggml_backend_cpu_buffer_type_alloc_buffer: failed to allocate buffer of size {size}")
    log("E", f"alloc_tensor_range: failed to allocate CPU buffer of size {size}")
    log("E", "llama_model_load: error loading model: unable to allocate CPU buffer")
    log("E", "llama_model_load_from_file_impl: failed to load model")
    log("E", "srv  load_model: failed to load model, '" + args.model + "'")
    log("I", "srv  operator(): cleaning up before exit...")
    log("E", "main: exiting due to model loading error")
    return 1


# what an old build's --help lists (one flag per line, as llama-server prints them)
OLD_HELP = """\
-h,    --help, --usage                  print usage and exit
--version                               show version and build info
-t,    --threads N                      number of threads to use during generation
-c,    --ctx-size N                     size of the prompt context
-n,    --predict, --n-predict N         number of tokens to predict
-b,    --batch-size N                   logical maximum batch size
-ub,   --ubatch-size N                  physical maximum batch size
-fa,   --flash-attn [on|off|auto]       set Flash Attention use
--mlock                                 force system to keep model in RAM
--mmap, --no-mmap                       whether to memory-map model
-ngl,  --gpu-layers, --n-gpu-layers N   max. number of layers to store in VRAM
-m,    --model FNAME                    model path
-a,    --alias STRING                   set alias for model name
-np,   --parallel N                     number of parallel sequences to decode
--host HOST                             ip address to listen
--port PORT                             port to listen
--slot-save-path PATH                   path to save slot kv cache
"""


def pose(build: str) -> int | None:
    """Answer --version and --help as llama.cpp build `build` would; None for a launch."""
    if "--version" in sys.argv:
        sys.stderr.write(f"version: {build} (b{build})\nbuilt with cc for x86_64 (FAKE)\n")
        return 0
    if "--help" in sys.argv:
        sys.stdout.write(OLD_HELP)
        return 0
    return None


def wait_to_exit(args: argparse.Namespace) -> None:
    """--exit-delay after ready, or once --exit-file exists (the test says when: after the
    supervisor has seen it ready, whatever the machine's load)."""
    if args.exit_file:
        while not os.path.exists(args.exit_file):
            time.sleep(0.01)
    else:
        time.sleep(args.exit_delay)


def main() -> int:
    if "--pose-build" in sys.argv:
        build = sys.argv[sys.argv.index("--pose-build") + 1]
        OPTS["pose_build"] = build
        answered = pose(build)
        if answered is not None:
            return answered
    if "--help" in sys.argv:
        print("usage: llama-server [options]\n-m,    --model FNAME\n--port PORT")
        return 0
    if "--version" in sys.argv:
        print("version: 0 (fake)", file=sys.stderr)  # build 0: the newest rules
        return 0
    if "--list-devices" in sys.argv:
        print("Available devices:")
        return 0
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--pose-build", default="")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8080)
    ap.add_argument("--mode", default="ok")
    ap.add_argument("--load-time", type=float, default=0.05)
    ap.add_argument("--progress-every", type=float, default=0.1)
    ap.add_argument("--message", default="llama_model_load: error loading model: fake failure")
    ap.add_argument("--exit-code", type=int, default=1)
    ap.add_argument("--exit-delay", type=float, default=0.05)
    ap.add_argument("--exit-file", default="")
    ap.add_argument("-m", "--model", default="")
    ap.add_argument("--slot-save-path", default="")
    ap.add_argument("--started-file", default="")
    ap.add_argument("--ready-file", default="")
    args, _ = ap.parse_known_args()
    OPTS.update(mode=args.mode, slot_save_path=args.slot_save_path)
    if args.pose_build:
        OPTS["pose_build"] = args.pose_build

    if args.mode == "ignore-term":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)

    log("I", "build: fake (FAKE llama-server for tests)")
    launches = os.environ.get("FAKE_LLAMA_LAUNCHES")
    if launches:
        with open(launches, "a") as f:
            f.write(f"{os.getpid()}\n")
    if other_alive(os.environ.get("FAKE_LLAMA_OOM_PORTS", "")):
        return out_of_memory(args)
    httpd = ThreadingHTTPServer((args.host, args.port), Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    log("I", f"srv  init: fake server bound to http://{args.host}:{args.port}")

    if args.mode == "die":
        time.sleep(args.load_time)
        log("I", "llama_model_loader: loaded meta data")
        log("E", args.message)
        log("E", "srv  load_model: failed to load model")
        log("I", "srv  operator(): cleaning up before exit...")
        log("E", "main: exiting due to model loading error")
        return args.exit_code

    if args.mode == "hang":
        log("I", "llama_model_loader: loading model")
        while True:
            time.sleep(3600)

    if args.started_file:
        with open(args.started_file, "a"):
            pass
    deadline = time.monotonic() + args.load_time

    def loading() -> bool:
        if args.ready_file:
            return not os.path.exists(args.ready_file)
        return time.monotonic() < deadline

    next_progress = time.monotonic()
    while loading():
        if args.mode == "dots":
            sys.stderr.write(".")
            sys.stderr.flush()
        elif time.monotonic() >= next_progress:
            log("I", f"load_tensors: loading ... {time.monotonic() - T0:.2f} s")
            next_progress += args.progress_every
        pause = args.progress_every if args.ready_file else deadline - time.monotonic()
        time.sleep(min(args.progress_every, max(0.0, pause)))
    if args.mode == "dots":
        sys.stderr.write("\n")
    log("I", "load_tensors:          CPU model buffer size =     1.50 MiB")
    log("I", "llama_kv_cache:        CPU KV buffer size =     2.00 MiB")
    log("I", "sched_reserve:        CPU compute buffer size =     0.75 MiB")
    READY.set()
    log("I", "srv  llama_server: model loaded")
    log("I", f"srv  llama_server: listening on http://{args.host}:{args.port}")

    if args.mode == "exit-after-ready":
        wait_to_exit(args)
        log("I", "fake: exiting right after becoming ready")
        return 0

    if args.mode == "port-exit":
        wait_to_exit(args)
        if os.fork() == 0:
            # the child keeps the listening socket and serves; the leader exits
            httpd.serve_forever()
            os._exit(0)
        log("I", "fake: leader exits, a child keeps the port")
        os._exit(0)

    while True:
        time.sleep(3600)


if __name__ == "__main__":
    sys.exit(main())
