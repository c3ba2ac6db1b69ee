#!/usr/bin/env python3
"""mkimages.py: the images of the kubelet scenarios, pushed to a plain-HTTP registry, nothing
fetched from the internet. Built from Debian packages with the layer and registry code of
integration/containerd/images/mkimages.py (same inputs: inputs.sh there).

  REGISTRY/library/busybox:latest   Debian's busybox, its applets, glibc, /etc files
  REGISTRY/library/nginx:latest     Debian's nginx on port 80 over that busybox
  REGISTRY/luksa/kiada:0.1          kiada.c (static) over that busybox: the book's example app

The kubelet's pods name them docker.io/library/busybox, nginx, docker.io/luksa/kiada:0.1; the
registry settings of rsrun-cri make 127.0.0.1:PORT docker.io's only mirror.

Usage: mkimages.py --inputs DIR --kiada FILE --registry HOST:PORT
"""
import argparse
import hashlib
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "../../containerd/images"))
import mkimages as base  # noqa: E402


def catalogue(inputs, kiada):
    bb, glibc = base.busybox_layer(os.path.join(inputs, "busybox"))
    yield "library/busybox", ["latest"], [bb], {"Cmd": ["sh"]}
    ngx = base.nginx_layer(os.path.join(inputs, "nginx"), glibc, 80, "1")
    yield ("library/nginx", ["latest"], [bb, ngx],
           {"Cmd": ["nginx", "-g", "daemon off;"], "ExposedPorts": {"80/tcp": {}}, "StopSignal": "SIGQUIT"})
    k = base.Tree("kiada: the book's example HTTP app (kiada.c, static)")
    k.put("opt/kiada/kiada", host=kiada, mode=0o755)
    yield ("luksa/kiada", ["0.1"], [bb, k],
           {"Entrypoint": ["/opt/kiada/kiada"], "ExposedPorts": {"8080/tcp": {}}, "WorkingDir": "/opt/kiada"})


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--inputs", required=True)
    ap.add_argument("--kiada", required=True)
    ap.add_argument("--registry", required=True)
    a = ap.parse_args()
    reg = base.Registry(a.registry)
    for repo, tags, layers, config in catalogue(a.inputs, a.kiada):
        manifest, blobs = base.image(layers, config)
        for digest, data in blobs.items():
            reg.blob(repo, digest, data)
        for tag in tags:
            reg.manifest(repo, tag, manifest)
            print("%s/%s:%s sha256:%s" % (a.registry, repo, tag, hashlib.sha256(manifest).hexdigest()))


if __name__ == "__main__":
    main()
