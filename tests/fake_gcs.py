"""An in-memory stand-in for Google Cloud Storage, so tests can use gs:// workdirs offline.

Two clients reach a gs:// checkpoint, and both are pointed at one in-memory
store: etils.epath (JSON, metrics, images, Orbax's metadata) through fsspec,
where `FakeGcsFileSystem` replaces gcsfs under the 'gs'/'gcs' protocols; and
tensorstore (Orbax's array data), whose GCS driver speaks the JSON API over
HTTP and is sent to `FakeGcsServer` by TENSORSTORE_GCS_HTTP_URL. Like GCS,
the store has objects only: no directories, no appends, no exclusive create.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import json
import os
import threading
from typing import Iterator
from urllib import parse

from fsspec.implementations import memory
import fsspec


class FakeGcsFileSystem(memory.MemoryFileSystem):
  """fsspec's memory filesystem under gs://, with GCS's flat namespace: mkdir does nothing."""

  protocol = ("gs", "gcs")
  store: dict = {}  # Its own, not the memory:// filesystem's.
  pseudo_dirs = [""]

  def __init__(self, *args, finalize_on_close=None, **kwargs):
    del finalize_on_close  # A gcsfs option that epath passes.
    super().__init__(*args, **kwargs)

  @classmethod
  def _strip_protocol(cls, path):
    path = os.fspath(path)
    for prefix in ("gs://", "gcs://"):
      path = path.removeprefix(prefix)
    path = path.strip("/")
    return "/" + path if path else ""

  def mkdir(self, path, create_parents=True, **kwargs):
    pass

  def makedirs(self, path, exist_ok=False):
    pass

  def glob(self, path, **kwargs):
    return [p.lstrip("/") for p in super().glob(path, **kwargs)]  # gcsfs's form: bucket/key.

  def objects(self) -> dict[str, bytes]:
    """{'bucket/key': contents} of every object."""
    return {key.lstrip("/"): bytes(f.getbuffer()) for key, f in tuple(self.store.items())}


def _generation(contents: bytes) -> int:
  return int.from_bytes(hashlib.sha256(contents).digest()[:6], "big") + 1


class _Handler(http.server.BaseHTTPRequestHandler):
  """The part of the GCS JSON API that tensorstore's 'gcs' driver uses."""

  protocol_version = "HTTP/1.1"
  fs: FakeGcsFileSystem

  def log_message(self, *args):
    pass

  def _reply(self, code: int, body: bytes = b"", headers: dict | None = None) -> None:
    self.send_response(code)
    for key, value in (headers or {}).items():
      self.send_header(key, value)
    self.send_header("Content-Length", str(len(body)))
    self.end_headers()
    self.wfile.write(body)

  def _parse(self) -> tuple[list[str], dict[str, str]]:
    url = parse.urlparse(self.path)
    query = {k: v[0] for k, v in parse.parse_qs(url.query).items()}
    return [parse.unquote(p) for p in url.path.split("/") if p], query

  def _get(self, key: str) -> bytes | None:
    try:
      return self.fs.cat_file(key)
    except FileNotFoundError:
      return None

  def _preconditions_fail(self, contents: bytes | None, query: dict[str, str]) -> int | None:
    generation = 0 if contents is None else _generation(contents)
    if "ifGenerationMatch" in query and int(query["ifGenerationMatch"]) != generation:
      return 412
    if "ifGenerationNotMatch" in query and int(query["ifGenerationNotMatch"]) == generation:
      return 304
    return None

  def _metadata(self, bucket: str, name: str, contents: bytes) -> dict:
    return dict(kind="storage#object", bucket=bucket, name=name, size=str(len(contents)),
                generation=str(_generation(contents)), metageneration="1")

  def do_POST(self):  # Upload: /upload/storage/v1/b/<bucket>/o?uploadType=media&name=<key>.
    parts, query = self._parse()
    body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
    bucket, name = parts[4], query["name"]
    key = f"{bucket}/{name}"
    failed = self._preconditions_fail(self._get(key), query)
    if failed:
      return self._reply(412)
    self.fs.pipe_file(key, body)
    self._reply(200, json.dumps(self._metadata(bucket, name, body)).encode(),
                {"Content-Type": "application/json"})

  def do_GET(self):  # /storage/v1/b/<bucket>/o[/<key>]
    parts, query = self._parse()
    bucket = parts[3]
    if len(parts) == 5:
      return self._list(bucket, query)
    name = parts[5]
    contents = self._get(f"{bucket}/{name}")
    if contents is None:
      return self._reply(404)
    failed = self._preconditions_fail(contents, query)
    if failed:
      return self._reply(failed)
    headers = {"x-goog-generation": str(_generation(contents))}
    if query.get("alt") != "media":
      return self._reply(200, json.dumps(self._metadata(bucket, name, contents)).encode(),
                         dict(headers, **{"Content-Type": "application/json"}))
    byte_range = self.headers.get("Range")
    if byte_range:
      start, _, end = byte_range.removeprefix("bytes=").partition("-")
      end = int(end) if end else len(contents) - 1
      start = int(start)
      headers["Content-Range"] = f"bytes {start}-{end}/{len(contents)}"
      return self._reply(206, contents[start:end + 1], headers)
    self._reply(200, contents, headers)

  def _list(self, bucket: str, query: dict[str, str]) -> None:
    prefix = f"{bucket}/{query.get('prefix', '')}"
    items = []
    for key, contents in sorted(self.fs.objects().items()):
      name = key[len(bucket) + 1:]
      if not key.startswith(prefix):
        continue
      if "startOffset" in query and name < query["startOffset"]:
        continue
      if "endOffset" in query and name >= query["endOffset"]:
        continue
      items.append(self._metadata(bucket, name, contents))
    self._reply(200, json.dumps(dict(kind="storage#objects", items=items)).encode(),
                {"Content-Type": "application/json"})

  def do_DELETE(self):
    parts, query = self._parse()
    key = f"{parts[3]}/{parts[5]}"
    contents = self._get(key)
    if contents is None:
      return self._reply(404)
    if self._preconditions_fail(contents, query):
      return self._reply(412)
    self.fs.rm_file(key)
    self._reply(204)


@contextlib.contextmanager
def fake_gcs() -> Iterator[FakeGcsFileSystem]:
  """Routes gs:// (epath, Orbax, tensorstore) to a fresh in-memory store while active.

  Sets environment variables for tensorstore and epath (tensorflow, if
  installed, would take gs:// from fsspec); restores them on exit.
  """
  FakeGcsFileSystem.store.clear()
  for protocol in FakeGcsFileSystem.protocol:
    fsspec.register_implementation(protocol, FakeGcsFileSystem, clobber=True)
  fs = FakeGcsFileSystem()
  handler = type("Handler", (_Handler,), dict(fs=fs))
  server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
  thread = threading.Thread(target=server.serve_forever, daemon=True)
  thread.start()
  environment = dict(TENSORSTORE_GCS_HTTP_URL=f"http://127.0.0.1:{server.server_port}",
                     GOOGLE_AUTH_TOKEN_FOR_TESTING="fake", EPATH_USE_TF="false")
  saved = {key: os.environ.get(key) for key in environment}
  os.environ.update(environment)
  try:
    yield fs
  finally:
    server.shutdown()
    server.server_close()
    for key, value in saved.items():
      if value is None:
        os.environ.pop(key, None)
      else:
        os.environ[key] = value
