#!/usr/bin/env python3
"""Write a one-layer busybox image as an OCI archive (oci-layout, index.json, blobs/) made from
Debian's busybox-static, with no registry. Usage: mkimage.py OUT.tar [REF]  (REF default
localhost/rsrun-busybox:latest). Deterministic: same busybox binary, same archive.
$MKIMAGE_STOP_SIGNAL, when set, is the image's StopSignal. $MKIMAGE_VOLUMES, when set, is a
space-separated list of the image's Volumes; with it the layer also has /data (0750) holding
`seed` (0640), both owned by 65534."""
import gzip, hashlib, io, json, os, subprocess, sys, tarfile

BUSYBOX = "/bin/busybox"
MTIME = 1700000000


def applets():
    out = subprocess.run([BUSYBOX, "--list-full"], check=True, capture_output=True, text=True).stdout
    return sorted({a for a in out.split() if a and a != "bin/busybox"})


def add(tf, name, typ=tarfile.DIRTYPE, mode=0o755, data=None, link=None, owner=0):
    ti = tarfile.TarInfo(name)
    ti.type, ti.mode, ti.mtime, ti.uid, ti.gid = typ, mode, MTIME, owner, owner
    if link is not None:
        ti.linkname = link
    if data is not None:
        ti.size = len(data)
        tf.addfile(ti, io.BytesIO(data))
    else:
        tf.addfile(ti)


def layer():
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for d in ["bin", "sbin", "usr", "usr/bin", "usr/sbin", "etc", "root", "tmp", "var",
                  "var/tmp", "proc", "sys", "dev", "run", "home"]:
            add(tf, d, mode=0o1777 if d in ("tmp", "var/tmp") else 0o755)
        with open(BUSYBOX, "rb") as f:
            add(tf, "bin/busybox", tarfile.REGTYPE, 0o755, f.read())
        for a in applets():
            if a.count("/") and not a.startswith("bin/"):
                depth = a.count("/")
                add(tf, a, tarfile.SYMTYPE, 0o777, link="../" * depth + "bin/busybox")
            elif a.startswith("bin/"):
                add(tf, a, tarfile.SYMTYPE, 0o777, link="busybox")
        add(tf, "etc/passwd", tarfile.REGTYPE, 0o644,
            b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/home:/bin/sh\n")
        add(tf, "etc/group", tarfile.REGTYPE, 0o644, b"root:x:0:\nnogroup:x:65534:\n")
        if os.environ.get("MKIMAGE_VOLUMES"):
            add(tf, "data", mode=0o750, owner=65534)
            add(tf, "data/seed", tarfile.REGTYPE, 0o640, b"seed\n", owner=65534)
    diff = raw.getvalue()
    gz = io.BytesIO()
    with gzip.GzipFile(fileobj=gz, mode="wb", mtime=MTIME) as g:
        g.write(diff)
    return diff, gz.getvalue()


def sha(b):
    return "sha256:" + hashlib.sha256(b).hexdigest()


def main():
    out = sys.argv[1]
    ref = sys.argv[2] if len(sys.argv) > 2 else "localhost/rsrun-busybox:latest"
    diff, comp = layer()
    runtime = {"Env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"], "Cmd": ["sh"], "WorkingDir": "/"}
    if os.environ.get("MKIMAGE_STOP_SIGNAL"):
        runtime["StopSignal"] = os.environ["MKIMAGE_STOP_SIGNAL"]
    if os.environ.get("MKIMAGE_VOLUMES"):
        runtime["Volumes"] = {v: {} for v in os.environ["MKIMAGE_VOLUMES"].split()}
    config = json.dumps({
        "created": "2023-11-14T22:13:20Z", "architecture": "amd64", "os": "linux",
        "config": runtime,
        "rootfs": {"type": "layers", "diff_ids": [sha(diff)]},
        "history": [{"created": "2023-11-14T22:13:20Z", "created_by": "integration/podman/mkimage.py"}],
    }, sort_keys=True).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": sha(config), "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": sha(comp), "size": len(comp)}],
    }, sort_keys=True).encode()
    index = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "digest": sha(manifest), "size": len(manifest),
                       "annotations": {"org.opencontainers.image.ref.name": ref}}],
    }, sort_keys=True).encode()
    tmp = out + ".tmp"
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tf:
        add(tf, "blobs")
        add(tf, "blobs/sha256")
        for b in (config, manifest, comp):
            add(tf, "blobs/sha256/" + sha(b)[7:], tarfile.REGTYPE, 0o644, b)
        add(tf, "oci-layout", tarfile.REGTYPE, 0o644, b'{"imageLayoutVersion":"1.0.0"}')
        add(tf, "index.json", tarfile.REGTYPE, 0o644, index)
    os.replace(tmp, out)
    print(ref)


if __name__ == "__main__":
    main()
