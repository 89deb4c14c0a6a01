"""A local stand-in for the Hugging Face Hub: the routes huggingface_hub uses for snapshot_download.

Repos are folders (the random-weight models the fixtures write) served at one commit each:
  GET  /api/models/ORG/NAME/revision/REV   -> {"id", "sha", "siblings"}   (repo_info: resolves REV to a commit)
  GET  /api/models/ORG/NAME/tree/REV       -> [{"type", "path", "size", "oid"}]  (list_repo_tree)
  HEAD /ORG/NAME/resolve/REV/PATH          -> X-Repo-Commit, ETag, Content-Length (file metadata)
  GET  /ORG/NAME/resolve/REV/PATH          -> the bytes, honouring Range (resumed downloads)
Errors carry the X-Error-Code the real Hub sends: RepoNotFound, RevisionNotFound, GatedRepo (no bearer token).
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit


@dataclass
class Repo:
    folder: Path
    commit: str
    gated: bool = False
    files: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, folder: Path, gated: bool = False) -> "Repo":
        files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
        digest = hashlib.sha1()
        for name in files:
            digest.update(name.encode() + (folder / name).read_bytes())
        return cls(folder, digest.hexdigest(), gated, files)


@dataclass
class HubStub:
    repos: dict[str, Repo] = field(default_factory=dict)
    requests: list[tuple[str, str, str]] = field(default_factory=list)  # (method, path, range header)
    # file path -> what its next GETs do, in turn: "cut" (half the bytes, then the connection drops) or "fail" (500)
    breaks: dict[str, list[str]] = field(default_factory=dict)

    def serve(self, repo_id: str, folder: Path, gated: bool = False) -> Repo:
        self.repos[repo_id] = Repo.of(folder, gated)
        return self.repos[repo_id]


ROUTE = re.compile(r"/(?:api/models/(?P<api_repo>[^/]+/[^/]+)/(?P<what>revision|tree)/(?P<api_rev>[^/?]+)"
                   r"|(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+))")


def _handler(hub: HubStub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_HEAD(self) -> None:
            self._answer(head=True)

        def do_GET(self) -> None:
            self._answer(head=False)

        def _fail(self, status: int, code: str = "") -> None:
            self.send_response(status)
            if code:
                self.send_header("X-Error-Code", code)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def _json(self, value: object) -> None:
            body = json.dumps(value).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _answer(self, head: bool) -> None:
            path = unquote(urlsplit(self.path).path)
            hub.requests.append((self.command, path, self.headers.get("Range", "")))
            match = ROUTE.fullmatch(path)
            if match is None:
                return self._fail(404)
            repo = hub.repos.get(match.group("api_repo") or match.group("repo"))
            if repo is None:
                return self._fail(404, "RepoNotFound")
            if repo.gated and not self.headers.get("Authorization", "").startswith("Bearer "):
                return self._fail(401, "GatedRepo")
            revision = match.group("api_rev") or match.group("rev")
            if revision not in ("main", repo.commit):
                return self._fail(404, "RevisionNotFound")
            if match.group("what") == "revision":
                return self._json({"id": match.group("api_repo"), "sha": repo.commit,
                                   "siblings": [{"rfilename": name} for name in repo.files]})
            if match.group("what") == "tree":
                return self._json([{"type": "file", "path": name, "size": (repo.folder / name).stat().st_size,
                                    "oid": hashlib.sha1((repo.folder / name).read_bytes()).hexdigest()}
                                   for name in repo.files])
            self._file(repo, match.group("path"), head)

        def _file(self, repo: Repo, name: str, head: bool) -> None:
            if name not in repo.files:
                return self._fail(404, "EntryNotFound")
            action = hub.breaks[name].pop(0) if not head and hub.breaks.get(name) else ""
            if action == "fail":
                return self._fail(500)
            data = (repo.folder / name).read_bytes()
            start = int(re.match(r"bytes=(\d+)-", self.headers.get("Range", "bytes=0-")).group(1))
            self.send_response(206 if start else 200)
            self.send_header("X-Repo-Commit", repo.commit)
            self.send_header("ETag", f'"{hashlib.sha1(data).hexdigest()}"')
            self.send_header("Content-Length", str(len(data) - start))
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.end_headers()
            if head:
                return
            if action == "cut":  # a connection that drops halfway: the client keeps the part it has
                self.wfile.write(data[start:start + (len(data) - start) // 2])
                self.wfile.flush()
                self.connection.close()
                return
            self.wfile.write(data[start:])

    return Handler


class running_hub:
    """`with running_hub() as (hub, url):` a HubStub served on a free local port for the block."""

    def __enter__(self) -> tuple[HubStub, str]:
        self.hub = HubStub()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self.hub))
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self.hub, f"http://127.0.0.1:{self.server.server_address[1]}"

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
