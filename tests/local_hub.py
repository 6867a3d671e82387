"""A Hub on loopback for tests: the few routes of the Hub's HTTP API that ``huggingface_hub``
and ``datasets`` use to create a model or dataset repo, commit files to it, list it and download
them again.

Files are answered as "regular" at preupload, so the client sends them inline in the commit,
except those with a suffix in ``LFS_SUFFIXES`` (``datasets`` uploads its parquet shards before the
commit and deletes them, as the Hub stores them in LFS): those go through the LFS batch API and its
basic transfer, a PUT of the whole file (the client must have Xet disabled). Repos live in memory, in ``repos``, keyed as in the Hub's URLs:
``owner/name`` for a model, ``datasets/owner/name`` for a dataset. A request with the token
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
from urllib.parse import parse_qs, unquote, urlsplit


@dataclass
class Repo:
    files: dict[str, bytes] = field(default_factory=dict)
    lfs_paths: set[str] = field(default_factory=set)
    sha: str = "0" * 40


def _git_blob_sha(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


class LocalHub:
    BAD_TOKEN = "hf_refused"
    LFS_SUFFIXES = (".parquet", ".arrow")

    def __init__(self):
        self.repos: dict[str, Repo] = {}
        self.lfs_objects: dict[str, bytes] = {}
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

            def do_PUT(self):
                hub._route(self, "PUT")

        return Handler

    # ---------------------------------------------------------------- routing

    def _route(self, request: BaseHTTPRequestHandler, method: str) -> None:
        url = urlsplit(request.path)
        path = url.path
        self.requests.append((time.time(), method, path))
        body = request.rfile.read(int(request.headers.get("Content-Length") or 0)) if method in ("POST", "PUT") else b""
        if request.headers.get("Authorization") == f"Bearer {self.BAD_TOKEN}":
            return self._json(request, {"error": "Invalid credentials in Authorization header"}, 401)
        repo = r"(?P<kind>models|datasets)/(?P<repo>[^/]+/[^/]+)"
        routes = [
            ("POST", r"/api/repos/create", self._create_repo),
            ("POST", r"/api/validate-yaml", self._validate_yaml),
            ("POST", rf"/api/{repo}/preupload/(?P<rev>[^/]+)", self._preupload),
            ("POST", rf"/api/{repo}/commit/(?P<rev>[^/]+)", self._commit),
            ("POST", rf"/api/{repo}/paths-info/(?P<rev>[^/]+)", self._paths_info),
            ("GET", rf"/api/{repo}(?:/revision/(?P<rev>[^/]+))?", self._repo_info),
            ("GET", rf"/api/{repo}/tree/(?P<rev>[^/]+)(?:/(?P<sub>.*))?", self._tree),
            ("POST", r"/(?:(?P<kind>datasets)/)?(?P<repo>[^/]+/[^/]+)\.git/info/lfs/objects/batch", self._lfs_batch),
            ("PUT", r"/lfs-objects/(?P<oid>[0-9a-f]{64})", self._lfs_put),
            (None, r"/(?:(?P<kind>datasets)/)?(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<file>.+)", self._resolve),
        ]
        for verb, pattern, handler in routes:
            match = re.fullmatch(pattern, path)
            if match and verb in (None, method):
                groups = {k: unquote(v) if v else v for k, v in match.groupdict().items()}
                if "repo" in groups:
                    kind = groups.pop("kind") or "models"
                    groups["repo"] = groups["repo"] if kind == "models" else f"{kind}/{groups['repo']}"
                if handler == self._tree:
                    groups["recursive"] = parse_qs(url.query).get("recursive", ["false"])[0].lower() == "true"
                return handler(request, method, body, **groups)
        self._json(request, {"error": f"no route for {method} {path}"}, 404)

    def _json(self, request, payload, status: int = 200, headers: dict | None = None) -> None:
        data = json.dumps(payload).encode()
        request.send_response(status)
        request.send_header("Content-Type", "application/json")
        request.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            request.send_header(key, value)
        request.end_headers()
        if request.command != "HEAD":  # a HEAD response has no body
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
        key = repo_id if payload.get("type", "model") == "model" else f"{payload['type']}s/{repo_id}"
        if key in self.repos:
            return self._json(request, {"error": "You already created this repo", "url": f"{self.url}/{key}"}, 409)
        self.repos[key] = Repo()
        self._json(request, {"url": f"{self.url}/{key}", "name": repo_id})

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
        self._json(request, {"files": [{"path": f["path"], "shouldIgnore": False, "oid": None,
                                        "uploadMode": "lfs" if f["path"].endswith(self.LFS_SUFFIXES) else "regular"}
                                       for f in files]})

    def _lfs_batch(self, request, method, body, repo):
        if repo not in self.repos:
            return self._missing(request, repo)
        objects = json.loads(body)["objects"]
        self._json(request, {"transfer": "basic", "objects": [
            {"oid": o["oid"], "size": o["size"], "actions": {"upload": {"href": f"{self.url}/lfs-objects/{o['oid']}"}}}
            for o in objects]})

    def _lfs_put(self, request, method, body, oid):
        if hashlib.sha256(body).hexdigest() != oid:
            return self._json(request, {"error": "the content does not hash to its oid"}, 400)
        self.lfs_objects[oid] = body
        request.send_response(200)
        request.send_header("Content-Length", "0")
        request.end_headers()

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
                stored.lfs_paths.discard(value["path"])
            elif item["key"] == "lfsFile":
                if value["oid"] not in self.lfs_objects:
                    return self._json(request, {"error": f"LFS object {value['oid']} was never uploaded"}, 400)
                stored.files[value["path"]] = self.lfs_objects[value["oid"]]
                stored.lfs_paths.add(value["path"])
            elif item["key"] == "deletedFile":
                stored.files.pop(value["path"], None)
                stored.lfs_paths.discard(value["path"])
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
        repo_id = repo.removeprefix("datasets/")
        self._json(request, {"id": repo_id, "modelId": repo_id, "sha": stored.sha, "private": False,
                             "siblings": [{"rfilename": p, "size": len(c)} for p, c in sorted(stored.files.items())]})

    def _tree(self, request, method, body, repo, rev, sub=None, recursive=False):
        if repo not in self.repos:
            return self._missing(request, repo)
        files = self.repos[repo].files
        prefix = f"{sub.strip('/')}/" if sub else ""
        entries = {}
        for path in sorted(p for p in files if p.startswith(prefix)):
            parts = path[len(prefix):].split("/")
            for depth in range(1, len(parts)):  # the folders on the way
                folder = prefix + "/".join(parts[:depth])
                if recursive or depth == 1:
                    entries.setdefault(folder, {"type": "directory", "path": folder, "oid": "0" * 40})
            if recursive or len(parts) == 1:
                entries[path] = self._file_entry(self.repos[repo], path)
        if sub and not entries:
            return self._json(request, {"error": "Entry not found"}, 404, {"X-Error-Code": "EntryNotFound"})
        self._json(request, list(entries.values()))

    def _paths_info(self, request, method, body, repo, rev):
        if repo not in self.repos:
            return self._missing(request, repo)
        files = self.repos[repo].files
        entries = []
        for path in parse_qs(body.decode()).get("paths", []):
            path = path.strip("/")
            if path in files:
                entries.append(self._file_entry(self.repos[repo], path))
            elif any(p.startswith(f"{path}/") for p in files):
                entries.append({"type": "directory", "path": path, "oid": "0" * 40})
        self._json(request, entries)

    @staticmethod
    def _file_entry(stored: Repo, path: str) -> dict:
        content = stored.files[path]
        entry = {"type": "file", "path": path, "size": len(content), "oid": _git_blob_sha(content)}
        if path in stored.lfs_paths:
            entry["lfs"] = {"oid": hashlib.sha256(content).hexdigest(), "size": len(content), "pointerSize": 134}
        return entry

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
        if file in stored.lfs_paths:
            request.send_header("X-Linked-Etag", f'"{hashlib.sha256(content).hexdigest()}"')
            request.send_header("X-Linked-Size", str(len(content)))
        request.send_header("X-Repo-Commit", stored.sha)
        request.end_headers()
        if method == "GET":
            request.wfile.write(content)
