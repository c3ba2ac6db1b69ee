#!/usr/bin/env python3
"""The workloads of Kubernetes in Action (2nd ed.) on a real kubelet over rsrun-cri, through
kubectl, each checked where the work is done: the container's own view (exec), the node's
network, the kubelet's records in the API, the runtime (crictl).

Run by run.sh inside its cluster's network namespace, with KUBECONFIG, KUBECTL_BIN, CRICTL,
CRI_ENDPOINT, NODE, NODE_IP and RUN_DIR in the environment.
Usage: scenarios.py [-k REGEX]   (only the scenarios whose name matches)
Prints one line per scenario (ok / FAIL: why) and exits 1 if any failed.
"""
import argparse
import base64
import gzip
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import traceback
import urllib.request

KUBECTL = os.environ["KUBECTL_BIN"]
NODE = os.environ["NODE"]
NODE_IP = os.environ["NODE_IP"]
RUN_DIR = os.environ["RUN_DIR"]
BUSYBOX = "docker.io/library/busybox:latest"
NGINX = "docker.io/library/nginx:latest"
KIADA = "docker.io/luksa/kiada:0.1"


class Fail(Exception):
    pass


def check(cond, what):
    if not cond:
        raise Fail(what)


def kubectl(*args, input=None, timeout=60, ok=True):
    p = subprocess.run([KUBECTL, *args], input=input, capture_output=True, timeout=timeout,
                       text=not isinstance(input, bytes))
    if ok and p.returncode != 0:
        raise Fail("kubectl %s: exit %d: %s" % (" ".join(args), p.returncode, p.stderr.strip()))
    return p


def crictl(*args):
    # crictl's own deadline per call is 2 s: a server restarted a moment ago on a loaded
    # machine may take longer (run.sh's wrapper gives 30 s too).
    p = subprocess.run([os.environ["CRICTL"], "--runtime-endpoint", os.environ["CRI_ENDPOINT"],
                        "--timeout", "30s", *args],
                       capture_output=True, text=True, timeout=60)
    if p.returncode != 0:
        raise Fail("crictl %s: %s" % (" ".join(args), p.stderr.strip()))
    return p.stdout


def log(msg):
    print("    " + msg, flush=True)


def pod_manifest(name, containers, **spec):
    """A pod bound to this node (there is no scheduler), without a service account token."""
    s = {"nodeName": NODE, "automountServiceAccountToken": False, "terminationGracePeriodSeconds": 5,
         "containers": containers}
    s.update(spec)
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"app": name}}, "spec": s}


def create(*manifests):
    for m in manifests:
        kubectl("create", "-f", "-", input=json.dumps(m))


def get_pod(name):
    p = kubectl("get", "pod", name, "-o", "json", ok=False)
    return json.loads(p.stdout) if p.returncode == 0 else None


def wait(what, fn, timeout=90, every=0.5):
    """Polls fn until it returns a true value (returned), or fails naming what and the last value."""
    end = time.time() + timeout
    last = None
    while time.time() < end:
        last = fn()
        if last:
            return last
        time.sleep(every)
    raise Fail("timed out (%ds) waiting for %s" % (timeout, what))


def cstatus(pod, container, init=False):
    for c in pod.get("status", {}).get("initContainerStatuses" if init else "containerStatuses", []) or []:
        if c["name"] == container:
            return c
    return {}


def running(name, container=None):
    """Waits until the pod (or one container of it) runs; returns the pod."""
    def fn():
        p = get_pod(name)
        if not p:
            return None
        if container:
            return p if "running" in cstatus(p, container).get("state", {}) else None
        st = p.get("status", {})
        return p if st.get("phase") == "Running" and all(
            "running" in c.get("state", {}) for c in st.get("containerStatuses", [])) else None
    return wait("pod %s running" % name, fn)


def phase(name, want, timeout=90):
    return wait("pod %s phase %s" % (name, want),
                lambda: (lambda p: p if p and p["status"].get("phase") == want else None)(get_pod(name)),
                timeout)


def exec_(name, *cmd, container=None, input=None, ok=True):
    args = ["exec"] + (["-i"] if input is not None else []) + [name] + (["-c", container] if container else [])
    return kubectl(*args, "--", *cmd, input=input, ok=ok)


def delete(*names, wait_gone=False):
    kubectl("delete", "pod", *names, "--wait=%s" % ("true" if wait_gone else "false"), "--timeout=90s",
            "--ignore-not-found")


def http_get(url, timeout=5):
    """The body of a GET, whatever the status (kiada answers 404 to paths it does not know,
    and logs them all the same)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.read().decode()
    except urllib.error.HTTPError as e:
        return e.read().decode()


class Watch:
    """kubectl get pod NAME -w: every version of the pod the API server held, kept in order
    (the last statuses a kubelet writes before it deletes a pod are only seen this way)."""

    def __init__(self, name):
        self.versions = []
        self.p = subprocess.Popen([KUBECTL, "get", "pod", name, "-w", "-o", "json", "--output-watch-events"],
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.first = threading.Event()
        self.t = threading.Thread(target=self._read, daemon=True)
        self.t.start()
        # Watching once the pod's current version came (kubectl's first event): what
        # changes after is seen.
        if not self.first.wait(60):
            self.stop()
            raise Fail("kubectl get pod %s -w: no event in 60 s" % name)

    def _read(self):
        dec, buf = json.JSONDecoder(), ""
        for line in self.p.stdout:
            buf += line
            while buf.strip():
                try:
                    obj, end = dec.raw_decode(buf.lstrip())
                except ValueError:
                    break
                buf = buf.lstrip()[end:]
                self.versions.append(obj)
                self.first.set()

    def stop(self):
        self.p.terminate()
        self.p.wait()
        self.t.join(5)

    def terminated(self, container, init=False):
        """The last terminated state the API saw for container."""
        for ev in reversed(self.versions):
            st = cstatus(ev.get("object", {}), container, init).get("state", {})
            if "terminated" in st:
                return st["terminated"]
        return None


def timestamp(s):
    return time.mktime(time.strptime(s, "%Y-%m-%dT%H:%M:%SZ")) - time.timezone


SCENARIOS = []


def scenario(fn):
    SCENARIOS.append(fn)
    return fn


# ----------------------------------------------------------------------------- the scenarios

@scenario
def s01_single_container_pod():
    """A pod with one container reaches Running; its logs come back with timestamps; the pod's
    hostname is the pod name (in the container's UTS namespace and in what the app answers)."""
    create(pod_manifest("kiada", [{"name": "kiada", "image": KIADA, "ports": [{"containerPort": 8080}]}]))
    p = running("kiada")
    # The container's image as the user wrote it (normalized), not the image ID the kubelet
    # passes to CreateContainer; imageID is the repo digest.
    cs = p["status"]["containerStatuses"][0]
    check(cs["image"] == KIADA, "status image %r, not %r" % (cs["image"], KIADA))
    check(cs["imageID"].startswith("docker.io/luksa/kiada@sha256:"), "status imageID %r" % cs["imageID"])
    ip = p["status"]["podIP"]
    check(ip.startswith("10.231.8."), "pod IP %r is not on the CNI bridge's subnet" % ip)
    body = http_get("http://%s:8080/" % ip)
    check('Request processed by "kiada"' in body, "the app answered %r" % body)
    check(exec_("kiada", "hostname").stdout.strip() == "kiada", "hostname in the container is not the pod name")
    logs = kubectl("logs", "kiada", "--timestamps").stdout.splitlines()
    check(any("kiada: listening on port 8080" in l for l in logs), "no start line in the logs: %r" % logs)
    check(any("GET /" in l for l in logs), "the request is not in the logs: %r" % logs)
    for l in logs:
        check(re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+(Z|[+-]\d\d:\d\d) ", l), "no timestamp: %r" % l)
    delete("kiada")


@scenario
def s02_two_containers_share_network():
    """Containers in one pod share the network: a shell reaches kiada and nginx on localhost;
    each container has its own filesystem."""
    create(pod_manifest("kiada-ssl", [
        {"name": "kiada", "image": KIADA},
        {"name": "nginx", "image": NGINX},
        {"name": "shell", "image": BUSYBOX, "command": ["sleep", "3600"]}]))
    running("kiada-ssl")
    body = exec_("kiada-ssl", "wget", "-qO-", "http://localhost:8080/", container="shell").stdout
    check('processed by "kiada-ssl"' in body, "localhost:8080 from the other container: %r" % body)
    body = exec_("kiada-ssl", "wget", "-qO-", "http://localhost:80/", container="shell").stdout
    check("Welcome to nginx" in body, "nginx on localhost:80 from the other container: %r" % body[:200])
    exec_("kiada-ssl", "sh", "-c", "echo mine > /tmp/only-here", container="shell")
    r = exec_("kiada-ssl", "cat", "/tmp/only-here", container="kiada", ok=False)
    check(r.returncode != 0, "a file written in one container is seen in the other")
    delete("kiada-ssl")


@scenario
def s03_restart_and_crashloop():
    """A container that exits non-zero restarts (restartPolicy Always); the restart count rises;
    --previous logs are the earlier run's; the back-off grows (CrashLoopBackOff)."""
    # each run notes when it started (the kernel's uptime, which the container shares) in the
    # emptyDir, which outlives the runs and the kubelet's garbage collection of dead ones
    script = ("n=$(cat /data/n 2>/dev/null || echo 0); n=$((n+1)); echo $n > /data/n; "
              "cut -d' ' -f1 /proc/uptime >> /data/starts; echo \"run $n\"; exit 3")
    create(pod_manifest("crasher", [{"name": "main", "image": BUSYBOX, "command": ["sh", "-c", script],
                                     "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
                        volumes=[{"name": "data", "emptyDir": {}}]))
    seen_backoff = [False]

    def progress():
        p = get_pod("crasher")
        c = cstatus(p, "main") if p else {}
        if c.get("state", {}).get("waiting", {}).get("reason") == "CrashLoopBackOff":
            seen_backoff[0] = True
        return c if c.get("restartCount", 0) >= 3 and seen_backoff[0] else None

    c = wait("three restarts and CrashLoopBackOff", progress, timeout=150)
    t = c["lastState"]["terminated"]
    check(t["exitCode"] == 3 and t["reason"] == "Error", "last state %r" % t)

    # --previous is the last terminated run: run N+1 after N restarts while the container
    # waits, run N while the next one runs. Read between two identical statuses (the kubelet
    # garbage-collects older dead containers, so a status that moves on meanwhile is retried).
    def previous():
        a = cstatus(get_pod("crasher"), "main")
        r = kubectl("logs", "crasher", "--previous", ok=False)
        b = cstatus(get_pod("crasher"), "main")
        # not in the moment between a run's exit and the back-off: the status then still names
        # the run before as lastState, which the kubelet's garbage collection may have removed
        if a != b or r.returncode != 0 or "terminated" in a["state"]:
            return None
        return a, r.stdout.strip()
    c, prev = wait("a steady status to read --previous against", previous, timeout=60, every=1)
    n = c["restartCount"] + (0 if "running" in c["state"] else 1)
    check(prev == "run %d" % n, "--previous logs %r with status %r (want 'run %d')" % (prev, c, n))
    # the runs' start times as each run saw them: the gaps grow (10 s, 20 s, ...). (Not the
    # lastState of polled statuses: a poll can miss a run, and the kubelet keeps one dead one.)
    uid = get_pod("crasher")["metadata"]["uid"]
    f = os.path.join(RUN_DIR, "kubelet", "pods", uid, "volumes", "kubernetes.io~empty-dir", "data", "starts")
    runs = [float(x) for x in open(f).read().split()]
    gaps = [round(b - a, 2) for a, b in zip(runs, runs[1:])]
    log("restart gaps: %s s" % gaps)
    check(len(gaps) >= 2 and gaps[-1] > gaps[0] * 1.5, "the back-off does not grow: gaps %r" % gaps)
    delete("crasher")


@scenario
def s04_liveness_probes():
    """Failing liveness probes (httpGet, exec) kill and restart the container; lastState has the
    exit code and reason."""
    create(pod_manifest("kiada-liveness", [{
        "name": "kiada", "image": KIADA,
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": 8080}, "periodSeconds": 2, "failureThreshold": 1}}]),
        pod_manifest("exec-liveness", [{
            "name": "main", "image": BUSYBOX, "command": ["sh", "-c", "touch /tmp/healthy; exec sleep 3600"],
            "livenessProbe": {"exec": {"command": ["cat", "/tmp/healthy"]}, "periodSeconds": 2,
                              "failureThreshold": 1}}], terminationGracePeriodSeconds=2))
    running("kiada-liveness")
    running("exec-liveness")
    exec_("kiada-liveness", "wget", "-qO-", "http://localhost:8080/fail")
    exec_("exec-liveness", "rm", "/tmp/healthy")

    def restarted(name, c):
        return lambda: (lambda p: cstatus(p, c) if p and cstatus(p, c).get("restartCount", 0) >= 1
                        and cstatus(p, c).get("lastState", {}).get("terminated") else None)(get_pod(name))
    k = wait("kiada restarted by its httpGet liveness probe", restarted("kiada-liveness", "kiada"))
    t = k["lastState"]["terminated"]
    # kiada ends on SIGTERM with 0
    check(t["exitCode"] == 0 and t["reason"] == "Completed", "kiada's last state %r" % t)
    e = wait("the exec-probed container restarted", restarted("exec-liveness", "main"))
    t = e["lastState"]["terminated"]
    # sleep as PID 1 ignores SIGTERM: killed after the grace period
    check(t["exitCode"] == 137 and t["reason"] == "Error", "exec-liveness last state %r" % t)
    ev = kubectl("get", "events", "--field-selector", "involvedObject.name=kiada-liveness", "-o", "json").stdout
    check("Liveness probe failed" in ev, "no 'Liveness probe failed' event")
    delete("kiada-liveness", "exec-liveness")


@scenario
def s05_readiness_probe():
    """A readiness exec probe toggled by creating and removing a file through exec."""
    create(pod_manifest("kiada-ready", [{
        "name": "kiada", "image": KIADA,
        "readinessProbe": {"exec": {"command": ["cat", "/tmp/ready"]}, "periodSeconds": 1, "failureThreshold": 1}}]))
    running("kiada-ready")

    def ready(want):
        return lambda: (lambda p: p and cstatus(p, "kiada").get("ready") is want)(get_pod("kiada-ready"))
    time.sleep(3)
    check(cstatus(get_pod("kiada-ready"), "kiada").get("ready") is False, "ready before the file exists")
    exec_("kiada-ready", "touch", "/tmp/ready")
    wait("ready after touch", ready(True), timeout=30)
    exec_("kiada-ready", "rm", "/tmp/ready")
    wait("not ready after rm", ready(False), timeout=30)
    check(cstatus(get_pod("kiada-ready"), "kiada").get("restartCount") == 0, "the readiness probe restarted it")
    delete("kiada-ready")


@scenario
def s06_lifecycle_hooks():
    """postStart and preStop exec hooks run inside the container; a failing postStart kills it."""
    host = os.path.join(RUN_DIR, "hostpath-hooks")
    os.makedirs(host, exist_ok=True)
    stopped = os.path.join(host, "prestop")
    if os.path.exists(stopped):
        os.unlink(stopped)
    create(pod_manifest("hooks", [{
        "name": "kiada", "image": KIADA,
        "volumeMounts": [{"name": "out", "mountPath": "/out"}],
        "lifecycle": {"postStart": {"exec": {"command": ["sh", "-c", "hostname > /tmp/poststart"]}},
                      "preStop": {"exec": {"command": ["sh", "-c", "echo prestop in $(hostname) > /out/prestop"]}}}}],
        volumes=[{"name": "out", "hostPath": {"path": host, "type": "Directory"}}]),
        pod_manifest("bad-poststart", [{
            "name": "main", "image": BUSYBOX, "command": ["sleep", "3600"],
            "lifecycle": {"postStart": {"exec": {"command": ["sh", "-c", "exit 7"]}}}}],
            terminationGracePeriodSeconds=1))
    running("hooks")
    check(exec_("hooks", "cat", "/tmp/poststart").stdout.strip() == "hooks", "the postStart hook's file")
    delete("hooks", wait_gone=True)
    check(open(stopped).read().strip() == "prestop in hooks", "the preStop hook did not write its file")

    def killed():
        p = get_pod("bad-poststart")
        c = cstatus(p, "main") if p else {}
        return c if c.get("restartCount", 0) >= 1 else None
    wait("the container with the failing postStart killed and restarted", killed)
    ev = kubectl("get", "events", "--field-selector", "involvedObject.name=bad-poststart", "-o", "json").stdout
    check("FailedPostStartHook" in ev, "no FailedPostStartHook event")
    delete("bad-poststart")


@scenario
def s07_graceful_termination():
    """A container that ignores SIGTERM is killed after terminationGracePeriodSeconds (137); one
    that handles it exits promptly with 0."""
    create(pod_manifest("kiada-stubborn", [{"name": "kiada", "image": KIADA,
                                           "env": [{"name": "IGNORE_SIGTERM", "value": "1"}]}],
                        terminationGracePeriodSeconds=3),
           pod_manifest("kiada-polite", [{"name": "kiada", "image": KIADA}], terminationGracePeriodSeconds=30))
    running("kiada-stubborn")
    running("kiada-polite")
    ws, wp = Watch("kiada-stubborn"), Watch("kiada-polite")
    delete("kiada-stubborn", "kiada-polite", wait_gone=True)
    ws.stop()
    wp.stop()
    ts, tp = ws.terminated("kiada"), wp.terminated("kiada")
    check(ts and ts["exitCode"] == 137, "the SIGTERM-ignoring container ended with %r" % ts)
    check(tp and tp["exitCode"] == 0, "the SIGTERM-handling container ended with %r" % tp)
    took = timestamp(ts["finishedAt"]) - timestamp(ts["startedAt"])
    log("stubborn ran %ds in all; polite %ds" % (took, timestamp(tp["finishedAt"]) - timestamp(tp["startedAt"])))
    # the polite one did not wait for its 30 s grace period
    check(timestamp(tp["finishedAt"]) - timestamp(ts["finishedAt"]) < 20, "the polite container waited for SIGKILL")


@scenario
def s08_init_containers_and_sidecar():
    """Init containers run in order before the main containers; a native sidecar (init container
    with restartPolicy Always) runs alongside them and stops after them."""
    create(pod_manifest("init-demo", [{
        "name": "main", "image": BUSYBOX,
        "command": ["sh", "-c", "cat /data/order > /data/seen; trap 'exit 0' TERM; sleep 3600 & wait"],
        "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
        initContainers=[
            {"name": "init-1", "image": BUSYBOX, "command": ["sh", "-c", "echo init-1 >> /data/order"],
             "volumeMounts": [{"name": "data", "mountPath": "/data"}]},
            {"name": "init-2", "image": BUSYBOX, "command": ["sh", "-c", "echo init-2 >> /data/order"],
             "volumeMounts": [{"name": "data", "mountPath": "/data"}]},
            {"name": "sidecar", "image": KIADA, "restartPolicy": "Always"}],
        volumes=[{"name": "data", "emptyDir": {}}]))
    p = running("init-demo")
    check(exec_("init-demo", "cat", "/data/seen", container="main").stdout.split() == ["init-1", "init-2"],
          "init containers did not run in order before main")
    for n in ("init-1", "init-2"):
        t = cstatus(p, n, init=True).get("state", {}).get("terminated", {})
        check(t.get("exitCode") == 0, "init container %s: %r" % (n, t))
    check("running" in cstatus(p, "sidecar", init=True).get("state", {}), "the sidecar is not running")
    body = exec_("init-demo", "wget", "-qO-", "http://localhost:8080/", container="main").stdout
    check("init-demo" in body, "the sidecar does not answer beside the main container: %r" % body)
    w = Watch("init-demo")
    delete("init-demo", wait_gone=True)
    w.stop()
    tm, tsc = w.terminated("main"), w.terminated("sidecar", init=True)
    check(tm and tsc, "terminations not seen: main %r sidecar %r" % (tm, tsc))
    check(timestamp(tsc["finishedAt"]) >= timestamp(tm["finishedAt"]), "the sidecar stopped before main")


@scenario
def s09_volumes():
    """emptyDir (disk and Memory) shared between containers; hostPath; a configMap directory and
    a single-file subPath; readOnly enforced."""
    host = os.path.join(RUN_DIR, "hostpath-vol")
    os.makedirs(host, exist_ok=True)
    with open(os.path.join(host, "from-node"), "w") as f:
        f.write("node data\n")
    kubectl("create", "configmap", "kiada-config", "--from-literal=status-message=Hello from a configMap",
            "--from-literal=other=x")
    mounts = [{"name": "disk", "mountPath": "/disk"}, {"name": "mem", "mountPath": "/mem"},
              {"name": "host", "mountPath": "/host"}, {"name": "cfg", "mountPath": "/cfg"},
              {"name": "cfg", "mountPath": "/etc/status-message", "subPath": "status-message"},
              {"name": "ro", "mountPath": "/ro", "readOnly": True}]
    create(pod_manifest("volumes", [
        {"name": "writer", "image": BUSYBOX, "command": ["sleep", "3600"], "volumeMounts": mounts},
        {"name": "reader", "image": BUSYBOX, "command": ["sleep", "3600"], "volumeMounts": mounts[:2]}],
        volumes=[{"name": "disk", "emptyDir": {}}, {"name": "mem", "emptyDir": {"medium": "Memory"}},
                 {"name": "host", "hostPath": {"path": host}},
                 {"name": "cfg", "configMap": {"name": "kiada-config"}},
                 {"name": "ro", "emptyDir": {}}], terminationGracePeriodSeconds=1))
    running("volumes")
    exec_("volumes", "sh", "-c", "echo d > /disk/f; echo m > /mem/f; echo back > /host/from-pod", container="writer")
    check(exec_("volumes", "cat", "/disk/f", "/mem/f", container="reader").stdout.split() == ["d", "m"],
          "emptyDirs not shared between containers")
    mnt = exec_("volumes", "cat", "/proc/self/mounts", container="reader").stdout
    check(re.search(r"^tmpfs /mem tmpfs", mnt, re.M), "emptyDir medium Memory is not a tmpfs: %s" % mnt)
    check(exec_("volumes", "cat", "/host/from-node", container="writer").stdout == "node data\n", "hostPath read")
    check(open(os.path.join(host, "from-pod")).read() == "back\n", "hostPath write not seen on the node")
    check(exec_("volumes", "cat", "/cfg/status-message", container="writer").stdout == "Hello from a configMap",
          "configMap directory")
    check(exec_("volumes", "cat", "/etc/status-message", container="writer").stdout == "Hello from a configMap",
          "configMap subPath file")
    check(exec_("volumes", "ls", "/cfg", container="writer").stdout.split() == ["other", "status-message"],
          "configMap keys")
    r = exec_("volumes", "touch", "/ro/x", container="writer", ok=False)
    check(r.returncode != 0 and "Read-only file system" in r.stderr, "write to a readOnly mount: %r" % r.stderr)
    delete("volumes")
    kubectl("delete", "configmap", "kiada-config")


@scenario
def s10_share_process_namespace():
    """shareProcessNamespace: PID 1 is the pause process; the containers see each other's."""
    create(pod_manifest("shared-pid", [
        {"name": "a", "image": BUSYBOX, "command": ["sleep", "3601"]},
        {"name": "b", "image": BUSYBOX, "command": ["sleep", "3602"]}], shareProcessNamespace=True,
        terminationGracePeriodSeconds=1))
    running("shared-pid")
    ps = exec_("shared-pid", "ps", "-o", "pid,args", container="a").stdout
    one = [l.split(None, 1)[1] for l in ps.splitlines()[1:] if l.split()[0] == "1"]
    check(one and "pause" in one[0], "PID 1 is %r, not the pause: %s" % (one, ps))
    check("sleep 3602" in ps and "sleep 3601" in ps, "container a does not see b's process: %s" % ps)
    delete("shared-pid")


@scenario
def s11_oom_killed():
    """A memory limit exceeded: reason OOMKilled, exit code 137."""
    create(pod_manifest("oom", [{"name": "main", "image": BUSYBOX, "command": ["sh", "-c", "sleep 1; tail /dev/zero"],
                                 "resources": {"limits": {"memory": "24Mi"}}}], restartPolicy="Never"))
    p = phase("oom", "Failed")
    t = cstatus(p, "main")["state"]["terminated"]
    check(t["reason"] == "OOMKilled" and t["exitCode"] == 137, "terminated %r" % t)
    delete("oom")


def capeff(name, container=None):
    s = exec_(name, "cat", "/proc/self/status", container=container).stdout
    return int(re.search(r"^CapEff:\s*([0-9a-f]+)", s, re.M).group(1), 16), s


@scenario
def s12_security_context():
    """runAsUser/runAsGroup/fsGroup, readOnlyRootFilesystem, capabilities drop ALL add NET_ADMIN,
    privileged."""
    create(pod_manifest("secctx", [
        {"name": "user", "image": BUSYBOX, "command": ["sleep", "3600"],
         "securityContext": {"runAsUser": 1000, "runAsGroup": 3000, "readOnlyRootFilesystem": True},
         # a workingDir the image lacks is made by the runtime (runc does), even read-only
         "workingDir": "/made/by/runtime",
         "volumeMounts": [{"name": "data", "mountPath": "/data"}]},
        {"name": "netadmin", "image": BUSYBOX, "command": ["sleep", "3600"],
         "securityContext": {"capabilities": {"drop": ["ALL"], "add": ["NET_ADMIN"]}}},
        {"name": "priv", "image": BUSYBOX, "command": ["sleep", "3600"],
         "securityContext": {"privileged": True}}],
        securityContext={"fsGroup": 2000}, volumes=[{"name": "data", "emptyDir": {}}],
        terminationGracePeriodSeconds=1))
    running("secctx")
    s = exec_("secctx", "cat", "/proc/self/status", container="user").stdout
    check(re.search(r"^Uid:\s+1000\s+1000", s, re.M) and re.search(r"^Gid:\s+3000\s+3000", s, re.M),
          "uid/gid: %s" % s)
    check("2000" in re.search(r"^Groups:(.*)$", s, re.M).group(1).split(), "fsGroup 2000 not supplementary")
    cwd = exec_("secctx", "readlink", "/proc/1/cwd", container="user").stdout.strip()
    check(cwd == "/made/by/runtime", "the container's working directory: %r" % cwd)
    r = exec_("secctx", "touch", "/x", container="user", ok=False)
    check(r.returncode != 0 and "Read-only file system" in r.stderr, "readOnlyRootFilesystem: %r" % r.stderr)
    ls = exec_("secctx", "sh", "-c", "touch /data/f && stat -c '%g' /data /data/f", container="user").stdout.split()
    check(ls == ["2000", "2000"], "fsGroup ownership of the volume: %r" % ls)
    cap, _ = capeff("secctx", "netadmin")
    check(cap == 1 << 12, "CapEff with drop ALL add NET_ADMIN: %#x" % cap)
    r = exec_("secctx", "ip", "addr", "add", "10.99.0.1/32", "dev", "lo", container="netadmin", ok=False)
    check(r.returncode == 0, "NET_ADMIN cannot add an address: %s" % r.stderr)
    r = exec_("secctx", "ip", "addr", "add", "10.99.0.2/32", "dev", "lo", container="user", ok=False)
    check(r.returncode != 0, "a container without NET_ADMIN added an address")
    cap, _ = capeff("secctx", "priv")
    check(cap >= (1 << 38) - 1, "privileged container's CapEff %#x" % cap)
    devs = exec_("secctx", "ls", "/dev", container="priv").stdout.split()
    check(len(devs) > 20, "a privileged container sees the host's devices: %r" % devs)
    delete("secctx")


@scenario
def s13_host_network_and_host_port():
    """hostNetwork and hostPort reach the container from the node."""
    create(pod_manifest("kiada-hostnet", [{"name": "kiada", "image": KIADA, "env": [{"name": "PORT", "value": "8081"}]}],
                        hostNetwork=True, terminationGracePeriodSeconds=1),
           pod_manifest("kiada-hostport", [{"name": "kiada", "image": KIADA,
                                            "ports": [{"containerPort": 8080, "hostPort": 9080}]}],
                        terminationGracePeriodSeconds=1))
    running("kiada-hostnet")
    running("kiada-hostport")
    body = wait("the hostNetwork pod on the node's address", lambda: _try_get("http://%s:8081/" % NODE_IP))
    # the host's UTS namespace: the machine's hostname (the node name is only the kubelet's)
    check("Request processed by \"%s\"" % socket.gethostname() in body,
          "hostNetwork pod's answer (hostname is the host's): %r" % body)
    try:
        body = wait("the hostPort on the node's address", lambda: _try_get("http://%s:9080/" % NODE_IP), 30)
    except Fail:
        for cmd in (["iptables-save", "-t", "nat"], ["ip", "-br", "addr"], ["ip", "route"]):
            log("$ %s\n%s" % (" ".join(cmd), subprocess.run(cmd, capture_output=True, text=True).stdout))
        raise
    check('processed by "kiada-hostport"' in body, "hostPort answer %r" % body)
    delete("kiada-hostnet", "kiada-hostport")


def _try_get(url):
    try:
        return http_get(url, timeout=2)
    except OSError:
        return None


@scenario
def s14_restart_policies():
    """restartPolicy Never and OnFailure with the exit codes the kubelet records (Jobs); a
    failed container's termination message taken from its log's end (FallbackToLogsOnError)."""
    create(pod_manifest("never", [{"name": "main", "image": BUSYBOX, "command": ["sh", "-c", "echo -n DONE; exit 4"],
                                   "terminationMessagePolicy": "FallbackToLogsOnError"}],
                        restartPolicy="Never"),
           pod_manifest("onfailure", [{
               "name": "main", "image": BUSYBOX, "volumeMounts": [{"name": "d", "mountPath": "/d"}],
               "command": ["sh", "-c", "if [ -e /d/tried ]; then echo done; exit 0; fi; touch /d/tried; exit 5"]}],
               restartPolicy="OnFailure", volumes=[{"name": "d", "emptyDir": {}}]))
    p = phase("never", "Failed")
    c = cstatus(p, "main")
    check(c["state"]["terminated"]["exitCode"] == 4 and c["restartCount"] == 0, "Never: %r" % c)
    # The e2e conformance test's case: the log's last line, which has no newline, verbatim.
    check(c["state"]["terminated"].get("message") == "DONE", "termination message from the log: %r" % c)
    p = phase("onfailure", "Succeeded")
    c = cstatus(p, "main")
    check(c["state"]["terminated"]["exitCode"] == 0 and c["restartCount"] == 1
          and c["lastState"]["terminated"]["exitCode"] == 5, "OnFailure: %r" % c)
    delete("never", "onfailure")


@scenario
def s15_cri_killed_and_restarted():
    """rsrun-cri killed -9 and restarted while pods run: nothing restarts, the kubelet
    reconciles, no duplicate containers, logs continue."""
    create(pod_manifest("survivor", [{"name": "kiada", "image": KIADA}], terminationGracePeriodSeconds=1))
    p = running("survivor")
    ip = p["status"]["podIP"]
    http_get("http://%s:8080/before" % ip)
    # this pod's objects in the runtime (other scenarios' pods may still be going away)
    mine = ["--label", "io.kubernetes.pod.name=survivor", "-o", "json"]
    before = json.loads(crictl("ps", "-a", *mine))["containers"]
    pods_before = json.loads(crictl("pods", *mine))["items"]
    check(len(before) == 1 and len(pods_before) == 1, "before: %d containers, %d sandboxes" % (len(before), len(pods_before)))
    pid = int(open(os.path.join(RUN_DIR, "rsrun-cri.pid")).read())
    os.kill(pid, 9)
    log("killed rsrun-cri (pid %d)" % pid)
    time.sleep(3)  # the kubelet's PLEG relists fail meanwhile
    subprocess.run([os.path.join(RUN_DIR, "start-cri.sh")], check=True)
    wait("rsrun-cri back", lambda: subprocess.run(
        [os.environ["CRICTL"], "--runtime-endpoint", os.environ["CRI_ENDPOINT"], "version"],
        capture_output=True).returncode == 0, timeout=30)
    http_get("http://%s:8080/after" % ip)
    time.sleep(5)  # a few relists and pod syncs
    after = json.loads(crictl("ps", "-a", *mine))["containers"]
    pods_after = json.loads(crictl("pods", *mine))["items"]
    check([p["id"] for p in pods_after] == [p["id"] for p in pods_before], "sandboxes changed: %r" % pods_after)
    check(sorted(c["id"] for c in after) == sorted(c["id"] for c in before),
          "containers changed across the restart: %r -> %r" % ([c["id"] for c in before], [c["id"] for c in after]))
    c = cstatus(get_pod("survivor"), "kiada")
    check(c["restartCount"] == 0 and "running" in c["state"], "the container restarted: %r" % c)
    logs = kubectl("logs", "survivor").stdout
    check("GET /before" in logs and "GET /after" in logs, "logs did not continue: %r" % logs)
    delete("survivor")


@scenario
def s16_exec_portforward_cp_logrotation():
    """exec, port-forward and cp through the API server and the kubelet; log rotation by the
    kubelet keeps every line."""
    lines = 2000  # 2000 lines of about 105 bytes in the CRI log: 3 or 4 rotations at 64 KiB
    create(pod_manifest("kiada-tools", [{"name": "kiada", "image": KIADA}], terminationGracePeriodSeconds=1),
           pod_manifest("logger", [{"name": "main", "image": BUSYBOX, "command": ["sh", "-c",
               "i=1; while [ $i -le %d ]; do printf 'line %%06d %%s\\n' $i "
               "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx; "
               "[ $((i %% 200)) = 0 ] && sleep 1; i=$((i+1)); done; sleep 3600" % lines]}],
               terminationGracePeriodSeconds=1))
    running("kiada-tools")
    # exec with stdin
    r = exec_("kiada-tools", "sh", "-c", "cat > /tmp/in; wc -c < /tmp/in", input="x" * 100000)
    check(r.stdout.strip() == "100000", "exec stdin: %r" % r.stdout)
    r = exec_("kiada-tools", "sh", "-c", "exit 9", ok=False)
    check(r.returncode == 9, "exec exit code %d" % r.returncode)
    # cp both ways (tar over exec)
    src = os.path.join(RUN_DIR, "cp-src")
    data = os.urandom(300000)
    with open(src, "wb") as f:
        f.write(data)
    kubectl("cp", src, "kiada-tools:/tmp/copied")
    back = os.path.join(RUN_DIR, "cp-back")
    kubectl("cp", "kiada-tools:/tmp/copied", back)
    check(open(back, "rb").read() == data, "kubectl cp round trip changed the file")
    # port-forward
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    pf = subprocess.Popen([KUBECTL, "port-forward", "pod/kiada-tools", "%d:8080" % port],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        body = wait("port-forward answering", lambda: _try_get("http://127.0.0.1:%d/" % port), timeout=30)
        check('processed by "kiada-tools"' in body and "127.0.0.1" in body, "through port-forward: %r" % body)
    finally:
        pf.terminate()
        pf.wait()
    # log rotation
    p = running("logger")
    uid = p["metadata"]["uid"]
    d = os.path.join(RUN_DIR, "pod-logs", "default_logger_%s" % uid, "main")

    def content(f):
        raw = open(os.path.join(d, f), "rb").read()
        return gzip.decompress(raw) if f.endswith(".gz") else raw

    def logged():
        """The line numbers in the log files, oldest file first, or None while the kubelet is
        between two steps of a rotation. Not `kubectl logs`: it reads the current file only, and
        the kubelet may rotate once more after the last line, leaving that file empty."""
        files = sorted(os.listdir(d))
        if ("0.log" not in files or any(f.endswith(".tmp") for f in files)
                or any(f + ".gz" in files for f in files)):  # compressed, the original not yet removed
            return None
        # rotated files are NAME.TIMESTAMP(.gz), the current one NAME; oldest first
        order = sorted((f for f in files if f != "0.log"), key=lambda f: f.split(".log.")[1]) + ["0.log"]
        got = []
        try:
            for f in order:
                for l in content(f).decode().splitlines():
                    m = re.search(r" stdout F line (\d+) ", l)
                    if m:
                        got.append(int(m.group(1)))
        except (FileNotFoundError, EOFError):  # rotated or compressed while read
            return None
        return files, got

    wait("the logger's last line", lambda: (r := logged()) is not None and lines in r[1], timeout=120)
    time.sleep(3)
    files, got = wait("the log files", logged, timeout=30)
    log("log files: %s" % files)
    check(len(files) >= 2, "the kubelet did not rotate: %r" % files)
    check(got == list(range(1, lines + 1)), "lines lost or repeated across rotation: %d lines, first gap near %s"
          % (len(got), next((i + 1 for i, v in enumerate(got) if v != i + 1), None)))
    delete("kiada-tools", "logger")


def host_cgroup_file(pod, container, controller, name):
    """A file of the container's cgroup, read on the node (the kernel's value)."""
    cid = cstatus(get_pod(pod), container)["containerID"].split("://", 1)[1]
    pid = json.loads(crictl("inspect", cid))["info"]["pid"]
    for line in open("/proc/%d/cgroup" % pid):
        _, ctrls, path = line.rstrip("\n").split(":", 2)
        if controller in ctrls.split(","):
            with open("/sys/fs/cgroup/%s%s/%s" % (ctrls, path, name)) as f:
                return f.read().strip()
    raise Fail("no %s cgroup for pid %d" % (controller, pid))


@scenario
def s17_user_namespace_pod():
    """hostUsers: false: the pod's root is an unprivileged user on the node; its volumes (an
    emptyDir, a configMap, a hostPath, /etc/hosts) are its own through idmapped mounts;
    procMount Unmasked."""
    host = os.path.join(RUN_DIR, "userns-vol")
    os.makedirs(host, exist_ok=True)
    os.chmod(host, 0o755)
    with open(os.path.join(host, "from-node"), "w") as f:
        f.write("node data\n")
    kubectl("create", "configmap", "userns-config", "--from-literal=k=v")
    mounts = [{"name": "disk", "mountPath": "/disk"}, {"name": "cfg", "mountPath": "/cfg"},
              {"name": "host", "mountPath": "/host"}]
    create(pod_manifest("userns", [{"name": "main", "image": BUSYBOX, "command": ["sleep", "3600"],
                                    "volumeMounts": mounts},
                                   {"name": "unmasked", "image": BUSYBOX, "command": ["sleep", "3600"],
                                    "securityContext": {"procMount": "Unmasked"}}],
                        hostUsers=False, terminationGracePeriodSeconds=1,
                        volumes=[{"name": "disk", "emptyDir": {}},
                                 {"name": "cfg", "configMap": {"name": "userns-config"}},
                                 {"name": "host", "hostPath": {"path": host}}]))
    p = running("userns")
    inside, outside, length = exec_("userns", "cat", "/proc/self/uid_map", container="main").stdout.split()[:3]
    check(inside == "0" and int(outside) >= 65536 and length == "65536",
          "uid_map %s %s %s: not a user namespace of its own" % (inside, outside, length))
    cid = cstatus(p, "main")["containerID"].split("://", 1)[1]
    pid = json.loads(crictl("inspect", cid))["info"]["pid"]
    uid = re.search(r"^Uid:\s+(\d+)", open("/proc/%d/status" % pid).read(), re.M).group(1)
    check(uid == outside, "the container's root is uid %s on the node, not %s" % (uid, outside))
    own = exec_("userns", "stat", "-c", "%u %g %n", "/disk", "/cfg/k", "/host/from-node", "/etc/hosts",
                container="main").stdout
    check(all(l.startswith("0 0 ") for l in own.splitlines()) and len(own.splitlines()) == 4,
          "volumes not owned by the pod's root: %s" % own)
    r = exec_("userns", "sh", "-c", "echo d > /disk/f && echo back > /host/from-pod", container="main", ok=False)
    check(r.returncode == 0, "the pod's root cannot write its volumes: %s" % r.stderr)
    # procMount Unmasked (allowed with hostUsers: false): no masked /proc paths; Default: masked.
    masked = lambda c: re.findall(r"^\S+ (/proc/(?:keys|timer_list)) ", exec_("userns", "cat", "/proc/mounts",
                                                                             container=c).stdout, re.M)
    check(masked("main") == ["/proc/keys", "/proc/timer_list"] and masked("unmasked") == [],
          "masked /proc paths: main %r, unmasked %r" % (masked("main"), masked("unmasked")))
    st = os.stat(os.path.join(host, "from-pod"))
    check((st.st_uid, st.st_gid) == (0, 0), "written through the idmapped hostPath as %d:%d on the node"
          % (st.st_uid, st.st_gid))
    delete("userns")
    kubectl("delete", "configmap", "userns-config")


@scenario
def s18_in_place_resize():
    """In-place resize (kubectl patch --subresource resize): the CPU and memory limits change in
    the container's cgroup without a restart, and the pod's status shows them."""
    res = lambda cpu, mem: {"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"cpu": cpu, "memory": mem}}
    create(pod_manifest("resize", [{"name": "main", "image": BUSYBOX, "command": ["sleep", "3600"],
                                    "resources": res("200m", "128Mi")}], terminationGracePeriodSeconds=1))
    running("resize")
    quota = lambda: host_cgroup_file("resize", "main", "cpu", "cpu.cfs_quota_us")
    limit = lambda: host_cgroup_file("resize", "main", "memory", "memory.limit_in_bytes")
    check((quota(), limit()) == ("20000", str(128 << 20)), "before: quota %s, limit %s" % (quota(), limit()))
    patch = {"spec": {"containers": [{"name": "main", "resources": res("400m", "192Mi")}]}}
    kubectl("patch", "pod", "resize", "--subresource", "resize", "--patch", json.dumps(patch))
    p = wait("the resize in the pod's status", lambda: (lambda p: p if cstatus(p, "main").get("resources", {})
             .get("limits", {}).get("cpu") == "400m" else None)(get_pod("resize")), timeout=60)
    check((quota(), limit()) == ("40000", str(192 << 20)), "after: quota %s, limit %s" % (quota(), limit()))
    check(cstatus(p, "main").get("restartCount") == 0, "the container restarted: %r" % cstatus(p, "main"))
    delete("resize")


@scenario
def s19_kubelet_restarted():
    """The kubelet killed -9 and started again while a pod runs: it adopts what rsrun-cri
    reports (same sandbox and containers, no re-run init container, no restart), and a
    container that exited while it was down is seen exited and restarted."""
    create(pod_manifest("adopted", [
        {"name": "kiada", "image": KIADA},
        # exits with 3 once told to (through crictl: the kubelet is down then)
        {"name": "quitter", "image": BUSYBOX,
         "command": ["sh", "-c", "until [ -e /tmp/quit ]; do sleep 0.2; done; exit 3"]}],
        initContainers=[{"name": "init", "image": BUSYBOX, "command": ["true"]}],
        terminationGracePeriodSeconds=1))
    p = running("adopted")
    ip = p["status"]["podIP"]
    http_get("http://%s:8080/before" % ip)
    mine = ["--label", "io.kubernetes.pod.name=adopted", "-o", "json"]
    before = {c["metadata"]["name"]: c["id"] for c in json.loads(crictl("ps", "-a", *mine))["containers"]}
    pods_before = [x["id"] for x in json.loads(crictl("pods", *mine))["items"]]
    check(sorted(before) == ["init", "kiada", "quitter"] and len(pods_before) == 1,
          "before: %r, sandboxes %r" % (before, pods_before))
    pid_file = os.path.join(RUN_DIR, "kubelet.pid")
    pid = int(open(pid_file).read())
    os.kill(pid, 9)
    wait("the kubelet gone", lambda: not os.path.exists("/proc/%d/status" % pid)
         or "State:\tZ" in open("/proc/%d/status" % pid).read(), timeout=10)
    log("killed the kubelet (pid %d)" % pid)
    crictl("exec", before["quitter"], "touch", "/tmp/quit")
    wait("quitter exited", lambda: json.loads(crictl("inspect", before["quitter"]))["status"]["state"]
         == "CONTAINER_EXITED", timeout=10)
    subprocess.run([os.path.join(RUN_DIR, "start-kubelet.sh")], check=True)

    def healthy():
        try:
            return http_get("http://127.0.0.1:10248/healthz", timeout=2) == "ok"
        except Exception:  # noqa: BLE001 - not listening yet
            return False
    wait("the kubelet back (healthz)", healthy, timeout=60)
    # the quitter restarted by the new kubelet: its exit was reported
    p = wait("quitter restarted", lambda: (lambda p: p if p and cstatus(p, "quitter").get("restartCount") == 1
             and "running" in cstatus(p, "quitter").get("state", {}) else None)(get_pod("adopted")), timeout=60)
    q = cstatus(p, "quitter")
    check(q["lastState"].get("terminated", {}).get("exitCode") == 3, "quitter's last state: %r" % q)
    time.sleep(6)  # a pod sync or two more (syncFrequency 5s)
    http_get("http://%s:8080/after" % ip)
    p = get_pod("adopted")
    after = {}
    for c in json.loads(crictl("ps", "-a", *mine))["containers"]:
        after.setdefault(c["metadata"]["name"], []).append(c["id"])
    pods_after = [x["id"] for x in json.loads(crictl("pods", *mine))["items"]]
    check(pods_after == pods_before, "sandboxes changed: %r -> %r" % (pods_before, pods_after))
    check(after.get("kiada") == [before["kiada"]] and after.get("init") == [before["init"]],
          "kiada or init changed across the kubelet's restart: %r -> %r" % (before, after))
    check(len(after.get("quitter", [])) == 2, "quitter: %r" % after.get("quitter"))
    k = cstatus(p, "kiada")
    check(k["restartCount"] == 0 and "running" in k["state"], "kiada restarted: %r" % k)
    check(cstatus(p, "init", init=True).get("restartCount") == 0, "init re-ran: %r" % cstatus(p, "init", init=True))
    logs = kubectl("logs", "adopted", "-c", "kiada").stdout
    check("GET /before" in logs and "GET /after" in logs, "logs did not continue: %r" % logs)
    delete("adopted")


def kubelet_get(path):
    """A GET of the kubelet's own API on the node (anonymous, AlwaysAllow; its serving
    certificate is self-signed)."""
    import ssl
    ctx = ssl._create_unverified_context()
    with urllib.request.urlopen("https://%s:10250%s" % (NODE_IP, path), context=ctx, timeout=30) as r:
        return r.read().decode()


@scenario
def s20_node_stats():
    """The kubelet's summary and resource metrics (what `kubectl top` and the eviction manager
    read) for a container that burned CPU, holds 32 MiB and wrote 8 MiB into its root
    filesystem: the kernel's figures for its cgroup bound what the kubelet reports, and the
    writable layer and the log are counted."""
    # dd's 32 MiB buffer, filled from /dev/zero, stays while its write to a pipe nobody
    # reads blocks.
    script = ("dd if=/dev/zero of=/scratch bs=1M count=8 2>/dev/null; i=0; "
              "while [ $i -lt 200000 ]; do i=$((i+1)); done; echo burned; "
              "dd if=/dev/zero bs=32M count=1 2>/dev/null | sleep 3600")
    create(pod_manifest("stats", [{"name": "main", "image": BUSYBOX, "command": ["sh", "-c", script]}]))
    running("stats")
    mib = 1 << 20
    wait("the container's memory held", lambda: "burned" in kubectl("logs", "stats").stdout and int(
        host_cgroup_file("stats", "main", "memory", "memory.usage_in_bytes")) > 40 * mib, timeout=120)

    def container():
        for ps in json.loads(kubelet_get("/stats/summary")).get("pods", []):
            if ps["podRef"]["name"] == "stats":
                for c in ps.get("containers", []):
                    if c["name"] == "main":
                        return ps, c
        return None, None

    cpu0 = int(host_cgroup_file("stats", "main", "cpuacct", "cpuacct.usage"))

    def complete():
        ps, c = container()
        # (The pod's own figures are cAdvisor's of the pod's cgroup, sampled every few
        # seconds: the container's cgroup must be inside it.)
        if not c or "usageNanoCores" not in c.get("cpu", {}) or c["memory"]["workingSetBytes"] < 32 * mib or \
                ps.get("memory", {}).get("workingSetBytes", 0) < 32 * mib:
            return None
        return ps, c
    try:
        ps, c = wait("the container's stats in the kubelet's summary", complete, timeout=120, every=2)
    except Fail:
        ps, c = container()
        log("summary's last: %r; the pod's memory: %r" % (c, ps and ps.get("memory")))
        raise
    cpu1 = int(host_cgroup_file("stats", "main", "cpuacct", "cpuacct.usage"))
    usage = int(host_cgroup_file("stats", "main", "memory", "memory.usage_in_bytes"))
    log("summary: cpu %s, memory %s, rootfs %s, logs %s" % (c["cpu"], c["memory"], c.get("rootfs"), c.get("logs")))
    log("kernel: cpuacct.usage %d .. %d, memory.usage_in_bytes %d" % (cpu0, cpu1, usage))
    check(cpu0 > 10 ** 8, "the container burned only %d ns of CPU: the workload did not run" % cpu0)
    got = c["cpu"]["usageCoreNanoSeconds"]
    check(cpu0 <= got <= cpu1, "CPU usage %d ns, not within the cgroup's %d .. %d" % (got, cpu0, cpu1))
    ws = c["memory"]["workingSetBytes"]
    check(32 * mib <= ws <= usage + 4 * mib, "working set %d, not between 32 MiB and the cgroup's usage %d" % (ws, usage))
    rootfs = c.get("rootfs", {}).get("usedBytes", 0)
    check(8 * mib <= rootfs < 64 * mib, "writable layer %d bytes, not the 8 MiB written (and a little)" % rootfs)
    check(c.get("logs", {}).get("usedBytes", 0) > 0, "log usage %r" % c.get("logs"))
    # The resource metrics endpoint (metrics-server's source, `kubectl top`).
    m = kubelet_get("/metrics/resource")
    lab = 'container="main",namespace="default",pod="stats"'
    v = re.search(r"^container_memory_working_set_bytes\{%s\} (\S+)" % re.escape(lab), m, re.M)
    check(v and float(v.group(1)) >= 32 * mib, "resource metrics: working set %r" % (v and v.group(1)))
    v = re.search(r"^container_cpu_usage_seconds_total\{%s\} (\S+)" % re.escape(lab), m, re.M)
    # (Seconds as a float: 0.263421188 * 1e9 is a hair below 263421188.)
    check(v and round(float(v.group(1)) * 1e9) >= cpu0, "resource metrics: CPU %r" % (v and v.group(1)))
    delete("stats")


@scenario
def s21_ephemeral_debug_container():
    """kubectl debug: an ephemeral container added to a running pod, in its target container's
    PID namespace, driven through the attach it opens (stdin in, output back), its exit code
    recorded by the kubelet."""
    create(pod_manifest("debugme", [{"name": "app", "image": BUSYBOX, "command": ["sleep", "3603"]}],
                        terminationGracePeriodSeconds=1))
    running("debugme")
    # The shell reads its input only once kubectl attached (stdin is held for it), so every
    # line of its output comes back through the attach. kubectl's own input stays open until
    # the shell's exit ends the attach: the debug container has no stdinOnce, and an attach
    # whose input ends ends there (containerd's rule), before the output would come.
    p = subprocess.Popen([KUBECTL, "debug", "debugme", "--image=" + BUSYBOX, "--target=app", "-c", "dbg",
                          "-i", "--quiet", "--", "sh"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    guard = threading.Timer(120, p.kill)  # a hang guard: the attach ends with the shell
    guard.start()
    try:
        p.stdin.write("ps -o pid,args\necho done-$((6*7))\nexit 3\n")
        p.stdin.flush()
        out, err = p.stdout.read(), p.stderr.read()
        p.stdin.close()
        p.wait()
    finally:
        guard.cancel()
    log("kubectl debug: exit %d, stdout %r, stderr %r" % (p.returncode, out[-400:], err[-400:]))
    r = subprocess.CompletedProcess(p.args, p.returncode, out, err)
    check("done-42" in r.stdout, "the debug shell's output did not come back through the attach")
    # PID 1 of the target's namespace is its sleep (in the node's, or a namespace of its own,
    # PID 1 is another process).
    check(re.search(r"^\s*1\s+sleep 3603\s*$", r.stdout, re.M), "the target container's process is not "
          "PID 1 of the debug container's PID namespace: %r" % r.stdout)

    def exited():
        p = get_pod("debugme")
        for c in (p or {}).get("status", {}).get("ephemeralContainerStatuses", []) or []:
            if c["name"] == "dbg" and "terminated" in c.get("state", {}):
                return c["state"]["terminated"]
        return None
    t = wait("the ephemeral container's exit", exited, timeout=60)
    check(t["exitCode"] == 3, "ephemeral container terminated %r" % t)
    check("running" in cstatus(get_pod("debugme"), "app").get("state", {}), "the target container stopped")
    delete("debugme")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("-k", default="")
    a = ap.parse_args()
    failed = []
    ran = 0
    for fn in SCENARIOS:
        if a.k and not re.search(a.k, fn.__name__):
            continue
        ran += 1
        start = time.time()
        print("scenario %s: %s" % (fn.__name__, fn.__doc__.split("\n")[0]), flush=True)
        try:
            fn()
            print("  ok %s (%.0fs)" % (fn.__name__, time.time() - start), flush=True)
        except Exception as e:  # noqa: BLE001 - a failed scenario is reported, the next one runs
            why = str(e) if isinstance(e, Fail) else traceback.format_exc()
            print("  FAIL %s (%.0fs): %s" % (fn.__name__, time.time() - start, why), flush=True)
            failed.append(fn.__name__)
    print("scenarios: %d passed, %d failed%s" % (ran - len(failed), len(failed),
                                                  (": " + " ".join(failed)) if failed else ""))
    sys.exit(1 if failed or ran == 0 else 0)


if __name__ == "__main__":
    main()
