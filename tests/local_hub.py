"""A Hub on loopback for tests: the few routes of the Hub's HTTP API that ``huggingface_hub``
uses to create a model repo, commit files to it and download them again.

Files are answered as "regular" at preupload, so the client sends them inline in the commit and
no LFS or Xet storage is needed. Repos live in memory. A request with the token
``LocalHub.BAD_TOKEN`` is refused with 401, and every request is recorded in ``requests`` as
(time, method, path).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit


@dataclass
class Repo:
    files: dict[str, bytes] = field(default_factory=dict)
    sha: str = "0" * 40


def _git_blob_sha(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


class LocalHub:
    BAD_TOKEN = "hf_refused"

    def __init__(self):
        self.repos: dict[str, Repo] = {}
        self.requests: list[tuple[float, str, str]] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> "LocalHub":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler_class(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                hub._route(self, "GET")

            def do_HEAD(self):
                hub._route(self, "HEAD")

            def do_POST(self):
                hub._route(self, "POST")

        return Handler

    # ---------------------------------------------------------------- routing

    def _route(self, request: BaseHTTPRequestHandler, method: str) -> None:
        path = urlsplit(request.path).path
        self.requests.append((time.time(), method, path))
        body = request.rfile.read(int(request.headers.get("Content-Length") or 0)) if method == "POST" else b""
        if request.headers.get("Authorization") == f"Bearer {self.BAD_TOKEN}":
            return self._json(request, {"error": "Invalid credentials in Authorization header"}, 401)
        routes = [
            ("POST", r"/api/repos/create", self._create_repo),
            ("POST", r"/api/validate-yaml", self._validate_yaml),
            ("POST", r"/api/models/(?P<repo>[^/]+/[^/]+)/preupload/(?P<rev>[^/]+)", self._preupload),
            ("POST", r"/api/models/(?P<repo>[^/]+/[^/]+)/commit/(?P<rev>[^/]+)", self._commit),
            ("GET", r"/api/models/(?P<repo>[^/]+/[^/]+)(?:/revision/(?P<rev>[^/]+))?", self._repo_info),
            ("GET", r"/api/models/(?P<repo>[^/]+/[^/]+)/tree/(?P<rev>[^/]+)(?:/(?P<sub>.*))?", self._tree),
            (None, r"/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<file>.+)", self._resolve),
        ]
        for verb, pattern, handler in routes:
            match = re.fullmatch(pattern, path)
            if match and verb in (None, method):
                return handler(request, method, body, **{k: unquote(v) if v else v for k, v in match.groupdict().items()})
        self._json(request, {"error": f"no route for {method} {path}"}, 404)

    def _json(self, request, payload, status: int = 200, headers: dict | None = None) -> None:
        data = json.dumps(payload).encode()
        request.send_response(status)
        request.send_header("Content-Type", "application/json")
        request.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            request.send_header(key, value)
        request.end_headers()
        request.wfile.write(data)

    def _missing(self, request, repo: str):
        self._json(request, {"error": f"Repository {repo} not found"}, 404,
                   {"X-Error-Code": "RepoNotFound", "X-Error-Message": "Repository not found"})

    # ---------------------------------------------------------------- routes

    def _create_repo(self, request, method, body):
        payload = json.loads(body or b"{}")
        repo_id = f"{payload['organization']}/{payload['name']}" if payload.get("organization") else payload["name"]
        if "/" not in repo_id:
            repo_id = f"tester/{repo_id}"
        if repo_id in self.repos:
            return self._json(request, {"error": "You already created this model repo", "url": f"{self.url}/{repo_id}"}, 409)
        self.repos[repo_id] = Repo()
        self._json(request, {"url": f"{self.url}/{repo_id}", "name": repo_id})

    def _validate_yaml(self, request, method, body):
        """The model card's metadata must parse, as the Hub checks before a commit with a README."""
        import yaml

        content = json.loads(body)["content"]
        match = re.match(r"^---\n(.*?)\n---", content, re.S)
        try:
            yaml.safe_load(match.group(1) if match else "")
        except yaml.YAMLError as error:
            return self._json(request, {"error": f"Invalid metadata in README.md: {error}"}, 400)
        self._json(request, {"errors": [], "warnings": []})

    def _preupload(self, request, method, body, repo, rev):
        if repo not in self.repos:
            return self._missing(request, repo)
        files = json.loads(body)["files"]
        self._json(request, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": None}
                                       for f in files]})

    def _commit(self, request, method, body, repo, rev):
        if repo not in self.repos:
            return self._missing(request, repo)
        stored = self.repos[repo]
        for line in body.decode().splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            value = item["value"]
            if item["key"] == "file":
                stored.files[value["path"]] = base64.b64decode(value["content"])
            elif item["key"] == "deletedFile":
                stored.files.pop(value["path"], None)
            elif item["key"] != "header":
                return self._json(request, {"error": f"this local hub does not take {item['key']!r}"}, 400)
        stored.sha = hashlib.sha1(stored.sha.encode() + json.dumps(sorted(stored.files)).encode()
                                  + b"".join(stored.files[p] for p in sorted(stored.files))).hexdigest()
        self._json(request, {"commitUrl": f"{self.url}/{repo}/commit/{stored.sha}", "commitOid": stored.sha,
                             "success": True})

    def _repo_info(self, request, method, body, repo, rev=None):
        if repo not in self.repos:
            return self._missing(request, repo)
        stored = self.repos[repo]
        self._json(request, {"id": repo, "modelId": repo, "sha": stored.sha, "private": False,
                             "siblings": [{"rfilename": p, "size": len(c)} for p, c in sorted(stored.files.items())]})

    def _tree(self, request, method, body, repo, rev, sub=None):
        if repo not in self.repos:
            return self._missing(request, repo)
        prefix = f"{sub.rstrip('/')}/" if sub else ""
        entries = [{"type": "file", "path": p, "size": len(c), "oid": _git_blob_sha(c)}
                   for p, c in sorted(self.repos[repo].files.items()) if p.startswith(prefix)]
        self._json(request, entries)

    def _resolve(self, request, method, body, repo, rev, file):
        stored = self.repos.get(repo)
        if stored is None:
            return self._missing(request, repo)
        if file not in stored.files:
            return self._json(request, {"error": "Entry not found"}, 404, {"X-Error-Code": "EntryNotFound"})
        content = stored.files[file]
        request.send_response(200)
        request.send_header("Content-Type", "application/octet-stream")
        request.send_header("Content-Length", str(len(content)))
        request.send_header("ETag", f'"{_git_blob_sha(content)}"')
        request.send_header("X-Repo-Commit", stored.sha)
        request.end_headers()
        if method == "GET":
            request.wfile.write(content)
