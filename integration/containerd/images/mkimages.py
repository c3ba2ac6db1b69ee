#!/usr/bin/env python3
"""mkimages.py: make the container images that critest (cri-tools v1.37) pulls and
push them to a plain-HTTP registry, with nothing fetched from the internet.

Everything comes from Debian: busybox (the dynamically linked build from the
'busybox' .deb, unpacked, not installed), nginx (from its .debs, unpacked), the
host's glibc and the libraries `ldd` reports for each binary, util-linux's
ipcs, and the static helpers pause and nnp compiled from the C files beside
this script. Layers are plain tars written entry by entry with fixed owners and
times, so the same inputs give the same digests.

Repository paths are the upstream ones without the registry host:
  registry.k8s.io/e2e-test-images/busybox:1.29-2 -> REGISTRY/e2e-test-images/busybox:1.29-2
  gcr.io/k8s-staging-cri-tools/test-image-1      -> REGISTRY/k8s-staging-cri-tools/test-image-1
  registry.k8s.io/pause:3.9, k8s.gcr.io/pause:3.9 -> REGISTRY/pause:3.9
and containerd resolves those hosts to REGISTRY (hosts.toml, see ../run.sh).

Usage: mkimages.py --busybox-root DIR --nginx-root DIR --pause FILE --nnp FILE
                   --registry HOST:PORT [--list]
"""
import argparse
import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import urllib.error
import urllib.request

EPOCH = 1700000000  # every file's mtime, and the images' creation time
CREATED = "2023-11-14T22:13:20Z"
PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
MT_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


class Tree:
    """The contents of one layer: path -> entry, turned into a tar on demand."""

    def __init__(self, why):
        self.why = why  # recorded in the image history
        self.items = {}
        self._blob = None

    def _parents(self, path):
        parts = path.split("/")
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            if parent not in self.items:
                self.items[parent] = ("dir", 0o755, 0, 0, None)

    def mkdir(self, path, mode=0o755, owner=(0, 0)):
        path = path.strip("/")
        self._parents(path)
        self.items[path] = ("dir", mode, owner[0], owner[1], None)

    def put(self, path, content=None, host=None, mode=0o644, owner=(0, 0)):
        path = path.strip("/")
        if host is not None:
            with open(host, "rb") as f:
                content = f.read()
        if isinstance(content, str):
            content = content.encode()
        self._parents(path)
        self.items[path] = ("file", mode, owner[0], owner[1], content)

    def symlink(self, path, target):
        path = path.strip("/")
        self._parents(path)
        self.items[path] = ("symlink", 0o777, 0, 0, target)

    def hardlink(self, path, target):
        path = path.strip("/")
        self._parents(path)
        self.items[path] = ("hardlink", 0o755, 0, 0, target.strip("/"))

    def blob(self):
        """(diff_id, gzipped tar) of this layer; computed once."""
        if self._blob is None:
            # directories, then files and symlinks, then hard links (their targets must
            # precede them), each group in path order
            rank = {"dir": 0, "file": 1, "symlink": 1, "hardlink": 2}
            order = sorted(self.items, key=lambda p: (rank[self.items[p][0]], p))
            buf = io.BytesIO()
            with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
                for path in order:
                    kind, mode, uid, gid, payload = self.items[path]
                    info = tarfile.TarInfo(path)
                    info.mode, info.uid, info.gid, info.mtime = mode, uid, gid, EPOCH
                    stream = None
                    if kind == "dir":
                        info.type = tarfile.DIRTYPE
                    elif kind == "file":
                        info.type, info.size, stream = tarfile.REGTYPE, len(payload), io.BytesIO(payload)
                    elif kind == "symlink":
                        info.type, info.linkname = tarfile.SYMTYPE, payload
                    else:
                        info.type, info.linkname = tarfile.LNKTYPE, payload
                    tar.addfile(info, stream)
            raw = buf.getvalue()
            packed = io.BytesIO()
            with gzip.GzipFile(fileobj=packed, mode="wb", mtime=0, filename="") as gz:
                gz.write(raw)
            self._blob = ("sha256:" + hashlib.sha256(raw).hexdigest(), packed.getvalue())
        return self._blob


def shared_libs(binary):
    """The absolute paths of the shared objects `ldd` resolves for binary."""
    res = subprocess.run(["ldd", binary], capture_output=True, text=True)
    if res.returncode != 0:
        sys.exit("mkimages: ldd %s failed: %s" % (binary, res.stderr.strip()))
    libs = []
    for line in res.stdout.splitlines():
        words = line.split()
        if "not" in words and "found" in words:
            sys.exit("mkimages: %s needs %s, which this host lacks" % (binary, words[0]))
        if "=>" in words:
            i = words.index("=>")
            if i + 1 < len(words) and words[i + 1].startswith("/"):
                libs.append(words[i + 1])
        elif words and words[0].startswith("/"):
            libs.append(words[0])  # the dynamic loader
    return libs


def put_elf(tree, host_binary, dest, mode=0o755, already=()):
    """Copy an ELF binary and its libraries (under their sonames) into tree."""
    tree.put(dest, host=host_binary, mode=mode)
    for lib in shared_libs(host_binary):
        name = os.path.basename(lib)
        where = "lib64/" + name if name.startswith("ld-linux") else "lib/x86_64-linux-gnu/" + name
        if where not in already:
            tree.put(where, host=os.path.realpath(lib), mode=0o755)


USERS = [("root", 0, 0, "/root", "/bin/sh"), ("daemon", 1, 1, "/usr/sbin", "/bin/false"),
         ("bin", 2, 2, "/bin", "/bin/false"), ("sys", 3, 3, "/dev", "/bin/false"),
         ("mail", 8, 8, "/var/mail", "/bin/false"), ("www-data", 33, 33, "/var/www", "/bin/false"),
         ("nobody", 65534, 65534, "/nonexistent", "/bin/false")]
GROUPS = [("root", 0, ""), ("daemon", 1, ""), ("bin", 2, ""), ("sys", 3, ""), ("adm", 4, ""),
          ("tty", 5, ""), ("disk", 6, ""), ("mail", 8, ""), ("wheel", 10, "root"), ("www-data", 33, ""),
          ("users", 100, ""), ("nogroup", 65534, "")]


def passwd(extra=()):
    return "".join("%s:x:%d:%d:%s:%s:%s\n" % (n, u, g, n, h, s) for n, u, g, h, s in list(USERS) + list(extra))


def group(extra=()):
    return "".join("%s:x:%d:%s\n" % g for g in list(GROUPS) + list(extra))


def shadow(names):
    return "".join("%s:*:19000:0:99999:7:::\n" % n for n in names)


# util-linux's ipcs stands in for busybox's ipcs applet (the HostIpc specs run `ipcs -m`);
# Debian's busybox build has neither ipcs nor pgrep.
PGREP = r"""#!/bin/sh
# pgrep PATTERN: print the pids whose process name matches PATTERN (extended regex).
# Stand-in for the busybox applet, which Debian's busybox build lacks.
[ $# -eq 1 ] || { echo "usage: pgrep PATTERN" >&2; exit 2; }
found=1
for dir in /proc/[0-9]*; do
    pid=${dir#/proc/}
    [ "$pid" = "$$" ] && continue
    read -r name < "$dir/comm" 2>/dev/null || continue
    if printf '%s\n' "$name" | grep -Eq -- "$1"; then echo "$pid"; found=0; fi
done
exit $found
"""


def busybox_layer(bbroot):
    """/bin/busybox with every applet as a hard link in /bin, glibc, a minimal /etc."""
    bb = os.path.join(bbroot, "bin/busybox")
    t = Tree("Debian busybox (dynamic build), its applets linked in /bin, glibc, /etc files")
    for d, mode in (("bin", 0o755), ("dev", 0o755), ("etc", 0o755), ("home", 0o755), ("proc", 0o555),
                    ("root", 0o700), ("sys", 0o555), ("tmp", 0o1777), ("usr/bin", 0o755),
                    ("usr/sbin", 0o755), ("var/mail", 0o755), ("var/www", 0o755), ("run", 0o755)):
        t.mkdir(d, mode)
    put_elf(t, bb, "bin/busybox")
    out = subprocess.run([bb, "--list"], capture_output=True, text=True, check=True).stdout
    for applet in out.split():
        if applet != "busybox":
            t.hardlink("bin/" + applet, "bin/busybox")
    glibc = set(p for p in t.items if p.startswith(("lib/", "lib64/")))
    put_elf(t, "/usr/bin/ipcs", "usr/bin/ipcs", already=glibc)
    t.put("usr/bin/pgrep", PGREP, mode=0o755)
    t.put("etc/passwd", passwd())
    t.put("etc/group", group())
    t.put("etc/shadow", shadow(u[0] for u in USERS), mode=0o640)
    t.put("etc/nsswitch.conf", "passwd: files\ngroup: files\nshadow: files\nhosts: files dns\n")
    return t, glibc


NGINX_MAIN = """user nginx;
worker_processes %(workers)s;
error_log /var/log/nginx/error.log notice;
pid /var/run/nginx.pid;
events { worker_connections 256; }
http {
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    access_log /var/log/nginx/access.log;
    sendfile on;
    keepalive_timeout 65;
    include /etc/nginx/conf.d/*.conf;
}
"""
NGINX_SITE = """server {
    listen %(port)d;
    server_name localhost;
    location / {
        root /usr/share/nginx/html;
        index index.html;
    }
}
"""


def nginx_layer(ngroot, glibc, port, workers):
    t = Tree("Debian nginx and its libraries; official-image layout, listening on %d" % port)
    put_elf(t, os.path.join(ngroot, "usr/sbin/nginx"), "usr/sbin/nginx", already=glibc)
    t.put("etc/passwd", passwd([("nginx", 101, 101, "/var/cache/nginx", "/bin/false")]))
    t.put("etc/group", group([("nginx", 101, "")]))
    t.put("etc/nginx/nginx.conf", NGINX_MAIN % {"workers": workers})
    t.put("etc/nginx/mime.types", host=os.path.join(ngroot, "etc/nginx/mime.types"))
    t.put("etc/nginx/conf.d/default.conf", NGINX_SITE % {"port": port})
    t.put("usr/share/nginx/html/index.html", host=os.path.join(ngroot, "usr/share/nginx/html/index.html"))
    for d in ("body", "fastcgi", "proxy", "scgi", "uwsgi"):
        t.mkdir("var/lib/nginx/" + d, 0o700, (101, 0))
    t.mkdir("var/cache/nginx", 0o755, (101, 0))
    t.symlink("var/log/nginx/access.log", "/dev/stdout")
    t.symlink("var/log/nginx/error.log", "/dev/stderr")
    t.symlink("var/run", "/run")
    return t


class Registry:
    """Just enough of the distribution API to push blobs and manifests over plain HTTP."""

    def __init__(self, hostport):
        self.base = "http://" + hostport

    def _call(self, method, url, data=None, headers=None):
        req = urllib.request.Request(url if url.startswith("http") else self.base + url,
                                     data=data, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                return resp.status, resp.headers
        except urllib.error.HTTPError as e:
            return e.code, e.headers

    def blob(self, repo, digest, data):
        status, _ = self._call("HEAD", "/v2/%s/blobs/%s" % (repo, digest))
        if status == 200:
            return
        status, hdrs = self._call("POST", "/v2/%s/blobs/uploads/" % repo, data=b"")
        if status != 202:
            sys.exit("mkimages: starting an upload to %s failed: HTTP %d" % (repo, status))
        loc = hdrs["Location"]
        loc += ("&" if "?" in loc else "?") + "digest=" + digest
        status, _ = self._call("PUT", loc, data=data, headers={"Content-Type": "application/octet-stream"})
        if status != 201:
            sys.exit("mkimages: uploading %s to %s failed: HTTP %d" % (digest, repo, status))

    def manifest(self, repo, tag, data):
        status, _ = self._call("PUT", "/v2/%s/manifests/%s" % (repo, tag), data=data,
                               headers={"Content-Type": MT_MANIFEST})
        if status != 201:
            sys.exit("mkimages: pushing %s:%s failed: HTTP %d" % (repo, tag, status))


def image(layers, config, labels=None):
    """(manifest bytes, {digest: bytes}) for an image made of layers."""
    blobs, descs, diff_ids = {}, [], []
    for layer in layers:
        diff_id, gz = layer.blob()
        digest = "sha256:" + hashlib.sha256(gz).hexdigest()
        blobs[digest] = gz
        descs.append({"mediaType": MT_LAYER, "digest": digest, "size": len(gz)})
        diff_ids.append(diff_id)
    cfg = {"Env": [PATH_ENV]}
    cfg.update(config)
    if labels:
        cfg["Labels"] = labels
    conf = json.dumps({"architecture": "amd64", "os": "linux", "created": CREATED, "config": cfg,
                       "rootfs": {"type": "layers", "diff_ids": diff_ids},
                       "history": [{"created": CREATED, "created_by": l.why} for l in layers]},
                      sort_keys=True).encode()
    cdigest = "sha256:" + hashlib.sha256(conf).hexdigest()
    blobs[cdigest] = conf
    manifest = json.dumps({"schemaVersion": 2, "mediaType": MT_MANIFEST,
                           "config": {"mediaType": MT_CONFIG, "digest": cdigest, "size": len(conf)},
                           "layers": descs}, sort_keys=True).encode()
    return manifest, blobs


def catalogue(a):
    """Yield (repository, [tags], layers, config, labels) for every image critest uses."""
    base, glibc = busybox_layer(a.busybox_root)
    sh = {"Cmd": ["sh"]}

    def marker(name):  # images/image-test/Dockerfile: ADD ${TEST} ${TEST}
        t = Tree("ADD %s %s" % (name, name))
        t.put(name, b"")
        return t

    cri = "k8s-staging-cri-tools/"
    yield "e2e-test-images/busybox", ["1.29-2"], [base], sh, None
    for n in ("test-image-1", "test-image-2", "test-image-3", "test-image-latest"):
        yield cri + n, ["latest"], [base, marker(n)], sh, None
    yield cri + "test-image-tags", ["1", "2", "3"], [base, marker("test-image-tags")], sh, None
    yield cri + "test-image-tag", ["test"], [base, marker("test")], sh, None
    yield cri + "test-image-tag", ["all"], [base, marker("all")], sh, None
    # images/image-user/Dockerfile: USER ${USER}
    for n, user in (("uid", "1002"), ("username", "www-data"), ("uid-group", "1003:1004"),
                    ("username-group", "www-data:1004")):
        yield cri + "test-image-user-" + n, ["latest"], [base], {"Cmd": ["sh"], "User": user}, None
    # images/image-predefined-group/Dockerfile
    g = Tree("adduser -u 1000 -D default-user; addgroup -g 50000 group-defined-in-image; "
             "addgroup default-user group-defined-in-image")
    g.put("etc/passwd", passwd([("default-user", 1000, 1000, "/home/default-user", "/bin/sh")]))
    g.put("etc/group", group([("default-user", 1000, ""), ("group-defined-in-image", 50000, "default-user")]))
    g.put("etc/shadow", shadow([u[0] for u in USERS] + ["default-user"]), mode=0o640)
    g.mkdir("home/default-user", 0o755, (1000, 1000))
    yield cri + "test-image-predefined-group", ["latest"], [base, g], {"Cmd": ["sh"], "User": "1000"}, None

    ngx = {"Cmd": ["nginx", "-g", "daemon off;"], "ExposedPorts": {"80/tcp": {}}, "StopSignal": "SIGQUIT"}
    yield "e2e-test-images/nginx", ["1.14-2"], [base, nginx_layer(a.nginx_root, glibc, 80, "1")], ngx, None
    yield (cri + "hostnet-nginx-amd64", ["latest"], [base, nginx_layer(a.nginx_root, glibc, 12003, "auto")],
           ngx, None)

    h = Tree("httpd stand-in: busybox httpd serving 'It works!' on port 80")
    h.put("usr/local/apache2/htdocs/index.html", "<html><body><h1>It works!</h1></body></html>\n")
    h.put("usr/local/bin/httpd-foreground",
          "#!/bin/sh\necho 'httpd-foreground: busybox httpd on :80' >&2\n"
          "exec httpd -f -p 80 -h /usr/local/apache2/htdocs\n", mode=0o755)
    yield ("e2e-test-images/httpd", ["2.4.39-4"], [base, h],
           {"Cmd": ["httpd-foreground"], "WorkingDir": "/usr/local/apache2", "ExposedPorts": {"80/tcp": {}}},
           None)

    n = Tree("nnp, set-uid root")
    n.put("usr/local/bin/nnp", host=a.nnp, mode=0o4755)
    yield "e2e-test-images/nonewprivs", ["1.3"], [base, n], {"Cmd": ["nnp"]}, None

    p = Tree("pause")
    p.put("pause", host=a.pause, mode=0o755)
    pause = {"Entrypoint": ["/pause"], "User": "65535:65535", "WorkingDir": "/"}
    yield "pause", ["3.9"], [p], pause, None
    # containerd's sandbox image: another image ID than pause:3.9, so that the image specs
    # removing pause:3.9 never remove the image every sandbox runs
    yield "pause", ["3.6"], [p], pause, {"rsrun.critest/role": "sandbox"}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--busybox-root", required=True)
    ap.add_argument("--nginx-root", required=True)
    ap.add_argument("--pause", required=True)
    ap.add_argument("--nnp", required=True)
    ap.add_argument("--registry", default="127.0.0.1:5000")
    ap.add_argument("--list", action="store_true", help="print what would be pushed, push nothing")
    a = ap.parse_args()
    reg = Registry(a.registry)
    count = 0
    for repo, tags, layers, config, labels in catalogue(a):
        manifest, blobs = image(layers, config, labels)
        mdigest = "sha256:" + hashlib.sha256(manifest).hexdigest()
        if not a.list:
            for digest, data in blobs.items():
                reg.blob(repo, digest, data)
            for tag in tags:
                reg.manifest(repo, tag, manifest)
        for tag in tags:
            print("%s/%s:%s %s" % (a.registry, repo, tag, mdigest))
            count += 1
    print("mkimages: %d references %s" % (count, "listed" if a.list else "pushed"))


if __name__ == "__main__":
    main()
