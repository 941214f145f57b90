"""A FAKE Hugging Face hub serving local folders as model repos, for the hub tests and bench.

A real HTTP server (uvicorn in a thread) answering the paths huggingface_hub uses:
`/api/models/{org}/{repo}/revision/{rev}` (with `?blobs=true`: sizes and LFS SHA-256),
`/api/models/{org}/{repo}/tree/{rev}`, and HEAD/GET `/{org}/{repo}/resolve/{rev}/{file}` with
ETag, X-Repo-Commit, X-Linked-Size, X-Linked-Etag and real Range support. Errors carry the
hub's X-Error-Code (RepoNotFound, RevisionNotFound, EntryNotFound, GatedRepo).

Misbehaviour on demand, set on the object:
  ignore_range   answer every GET with the whole file (200), as a server without Range would
  cut_after      drop the connection after this many body bytes of each GET (an interruption)
  cut_once       with cut_after: only the first GET is cut, and the hub is `down` after it (so
                 that the download's own retry fails too: the connection lost for a while)
  down           every request answered 503 (set it False to bring the hub back)
  hold           a threading.Event every GET waits for before its status line (a slow server)
  corrupt        files served with one byte changed (the listing keeps the true SHA-256)
It records each request (method, path, Range header, whether a token came).
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from fakes.fake_upstream import ServerThread

TOKEN = "hf_fake_token_for_tests"


@dataclass
class FakeRepo:
    folder: Path
    gated: bool = False
    commit: str = ""
    hash_files: bool = True  # False: made-up SHA-256 (multi-GB sparse files in the bench)
    _sha: dict[str, str] = field(default_factory=dict)

    def files(self) -> list[str]:
        return sorted(
            str(p.relative_to(self.folder)) for p in self.folder.rglob("*") if p.is_file()
        )

    def sha256(self, file: str) -> str:
        if file not in self._sha:
            if not self.hash_files:
                self._sha[file] = hashlib.sha256(file.encode()).hexdigest()
            else:
                h = hashlib.sha256()
                with open(self.folder / file, "rb") as fh:
                    while chunk := fh.read(1 << 20):
                        h.update(chunk)
                self._sha[file] = h.hexdigest()
        return self._sha[file]


@dataclass
class Seen:
    method: str
    path: str
    range: str | None
    token: bool


class FakeHub:
    def __init__(self) -> None:
        self.repos: dict[str, FakeRepo] = {}
        self.ignore_range = False
        self.cut_after: int | None = None
        self.cut_once = False
        self.down = False
        self.hold: threading.Event | None = None
        self.waiting = threading.Event()  # set when a GET is held
        self.corrupt: set[str] = set()
        self.seen: list[Seen] = []
        self._thread = ServerThread(self.app(), lifespan="off")

    def add(self, name: str, folder: Path, **kw: Any) -> FakeRepo:
        repo = FakeRepo(folder, **kw)
        repo.commit = repo.commit or hashlib.sha1(name.encode()).hexdigest()
        self.repos[name] = repo
        return repo

    @property
    def url(self) -> str:
        return self._thread.url

    def start(self) -> FakeHub:
        self._thread.start()
        return self

    def stop(self) -> None:
        if self.hold is not None:
            self.hold.set()
        self._thread.stop()

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def gets(self, file: str) -> list[Seen]:
        return [s for s in self.seen if s.method == "GET" and s.path.endswith("/" + file)]

    # --- the app ---

    def _error(self, status: int, code: str, msg: str) -> Response:
        return JSONResponse({"error": msg}, status_code=status, headers={"X-Error-Code": code})

    def _repo(self, request: Request) -> tuple[FakeRepo | None, Response | None]:
        name = f"{request.path_params['org']}/{request.path_params['repo']}"
        auth = request.headers.get("authorization", "")
        self.seen.append(
            Seen(request.method, request.url.path, request.headers.get("range"), bool(auth))
        )
        repo = self.repos.get(name)
        if self.down:
            return None, self._error(503, "ServiceUnavailable", "the hub is down")
        if repo is None:
            return None, self._error(404, "RepoNotFound", f"Repository {name} not found")
        if repo.gated and auth != f"Bearer {TOKEN}":
            return None, self._error(
                401, "GatedRepo", f"Access to model {name} is restricted. You must have access."
            )
        rev = request.path_params["rev"]
        if rev not in ("main", repo.commit):
            return None, self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        return repo, None

    async def info(self, request: Request) -> Response:
        repo, err = self._repo(request)
        if repo is None:
            assert err is not None
            return err
        blobs = request.query_params.get("blobs") == "true"
        siblings: list[dict[str, Any]] = []
        for f in repo.files():
            s: dict[str, Any] = {"rfilename": f}
            if blobs:
                size = (repo.folder / f).stat().st_size
                s.update(
                    size=size,
                    blobId=hashlib.sha1(f.encode()).hexdigest(),
                    lfs={"sha256": repo.sha256(f), "size": size, "pointerSize": 134},
                )
            siblings.append(s)
        name = f"{request.path_params['org']}/{request.path_params['repo']}"
        return JSONResponse(
            {
                "id": name,
                "modelId": name,
                "sha": repo.commit,
                "private": False,
                "gated": "manual" if repo.gated else False,
                "siblings": siblings,
            }
        )

    async def tree(self, request: Request) -> Response:
        repo, err = self._repo(request)
        if repo is None:
            assert err is not None
            return err
        out = []
        for f in repo.files():
            size = (repo.folder / f).stat().st_size
            out.append(
                {
                    "type": "file",
                    "path": f,
                    "size": size,
                    "oid": hashlib.sha1(f.encode()).hexdigest(),
                    "lfs": {"oid": repo.sha256(f), "size": size, "pointerSize": 134},
                }
            )
        return JSONResponse(out)

    async def resolve(self, request: Request) -> Response:
        repo, err = self._repo(request)
        if repo is None:
            assert err is not None
            return err
        file = request.path_params["file"]
        path = repo.folder / file
        if ".." in file or not path.is_file():
            return self._error(404, "EntryNotFound", f"{file} does not exist")
        size = path.stat().st_size
        sha = repo.sha256(file)
        headers = {
            "ETag": f'"{sha}"',
            "X-Linked-Etag": f'"{sha}"',
            "X-Linked-Size": str(size),
            "X-Repo-Commit": repo.commit,
            "Accept-Ranges": "bytes",
        }
        if request.method == "HEAD":
            return Response(headers={**headers, "Content-Length": str(size)})
        if self.hold is not None:
            self.waiting.set()
            await asyncio.to_thread(self.hold.wait)
        start, end, status = 0, size - 1, 200
        rng = request.headers.get("range")
        if rng and not self.ignore_range and rng.startswith("bytes="):
            a, _, b = rng[len("bytes=") :].partition("-")
            start = int(a)
            end = min(int(b), size - 1) if b else size - 1
            if start >= size:
                return Response(status_code=416, headers={"Content-Range": f"bytes */{size}"})
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        headers["Content-Length"] = str(end - start + 1)
        corrupt = file in self.corrupt
        cut = self.cut_after
        if self.cut_once:
            self.cut_after = None  # this GET only

        async def body() -> AsyncIterator[bytes]:
            sent = 0
            with open(path, "rb") as fh:
                fh.seek(start)
                left = end - start + 1
                while left > 0:
                    chunk = fh.read(min(left, 1 << 16))
                    if corrupt and fh.tell() - len(chunk) <= size // 2 < fh.tell():
                        i = size // 2 - (fh.tell() - len(chunk))
                        chunk = chunk[:i] + bytes([chunk[i] ^ 0xFF]) + chunk[i + 1 :]
                    if cut is not None and sent + len(chunk) > cut:
                        yield chunk[: cut - sent]
                        if self.cut_once:
                            self.down = True
                        raise ConnectionResetError("fake hub: connection cut")
                    sent += len(chunk)
                    left -= len(chunk)
                    yield chunk

        return StreamingResponse(body(), status_code=status, headers=headers)

    def app(self) -> Starlette:
        base = "/api/models/{org}/{repo}"
        return Starlette(
            routes=[
                Route(base + "/revision/{rev}", self.info),
                Route(base + "/tree/{rev}", self.tree),
                Route(base + "/tree/{rev}/{sub:path}", self.tree),
                Route(
                    "/{org}/{repo}/resolve/{rev}/{file:path}", self.resolve, methods=["GET", "HEAD"]
                ),
            ]
        )
