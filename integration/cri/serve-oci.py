#!/usr/bin/env python3
"""A read-only OCI distribution endpoint for tests: serves the images of one OCI archive (as
integration/podman/mkimage.py writes it) on 127.0.0.1:PORT, under any repository name. Enough
for pulls (GET/HEAD of /v2/, manifests by tag or digest, blobs); nothing can be pushed.
Usage: serve-oci.py ARCHIVE.tar [ARCHIVE.tar...] PORT (the tags of all archives, by tag only)
A request for the manifest of tag `stall` is never answered: the server appends `request PATH`
to the file $SERVE_OCI_STALL_LOG, waits until the client closes the connection, then appends
`closed PATH` (a test sees when a pull reached the registry, and when it gave up)."""
import http.server, json, os, sys, tarfile

archives, port = sys.argv[1:-1], int(sys.argv[-1])
blobs = {}
tags = {}
for archive in archives:
    tf = tarfile.open(archive)
    for m in tf.getmembers():
        if m.isfile() and m.name.startswith("blobs/sha256/"):
            blobs["sha256:" + m.name.rsplit("/", 1)[1]] = tf.extractfile(m).read()
    index = json.load(tf.extractfile("index.json"))
    for d in index["manifests"]:
        ref = d.get("annotations", {}).get("org.opencontainers.image.ref.name", "")
        tags[ref.rsplit(":", 1)[-1] if ":" in ref else "latest"] = (d["digest"], d["mediaType"])


class H(http.server.BaseHTTPRequestHandler):
    def answer(self, body):
        parts = self.path.split("?")[0].strip("/").split("/")
        if parts == ["v2"]:
            return self.send(200, b"{}", "application/json", body)
        if len(parts) >= 4 and parts[0] == "v2" and parts[-2] in ("manifests", "blobs"):
            ref = parts[-1]
            if parts[-2] == "manifests" and ref == "stall":
                with open(os.environ["SERVE_OCI_STALL_LOG"], "a") as f:
                    f.write("request %s\n" % self.path)
                self.connection.settimeout(600)
                try:
                    while self.connection.recv(4096):
                        pass
                except OSError:
                    pass
                with open(os.environ["SERVE_OCI_STALL_LOG"], "a") as f:
                    f.write("closed %s\n" % self.path)
                self.close_connection = True
                return
            if parts[-2] == "manifests" and ref in tags:
                digest, mt = tags[ref]
            else:
                digest = ref
                mt = next((t for d, t in tags.values() if d == ref), "application/octet-stream")
            if digest in blobs:
                return self.send(200, blobs[digest], mt, body, digest)
        return self.send(404, b'{"errors":[{"code":"NOT_FOUND","message":"not found"}]}',
                         "application/json", body)

    def send(self, code, data, ctype, body, digest=None):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        if digest:
            self.send_header("Docker-Content-Digest", digest)
        self.end_headers()
        if body:
            self.wfile.write(data)

    def do_GET(self):
        self.answer(True)

    def do_HEAD(self):
        self.answer(False)

    def log_message(self, *a):
        pass


http.server.ThreadingHTTPServer(("127.0.0.1", port), H).serve_forever()
