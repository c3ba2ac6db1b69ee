#!/usr/bin/env python3
"""compare.py [--min-passed N] [--known-failure NAME]... RUNS_DIR LABEL... : summarize the critest
runs RUNS_DIR/LABEL/report.json (ginkgo's JSON report) and compare them with the first LABEL, the
reference.

Prints, per run, its counts, each failed spec with the failure's location and message, and the
skip reasons; then the specs that pass with the reference but not with another run. Exits 1 when
there is such a spec (or a run has no report), else 0. The last line is
"parity: N passed, M failed" (N reference-passing specs that pass everywhere, M that do not).

Parity alone passes when every run passes nothing (a failed BeforeSuite skips every spec; a broken
containerd fails all of them for both runtimes), so the CI stage also sets a floor that every run,
the reference included, must reach:
  --min-passed N       at least N specs passed
  --known-failure NAME a spec (full name, as printed) that may fail; any other failing spec fails
                       the comparison (repeatable; without it, failures are only compared)
"""
import argparse
import json
import os
import sys

BAD = ("failed", "panicked", "timedout", "interrupted", "aborted")


def spec_name(s):
    return " ".join(list(s.get("ContainerHierarchyTexts") or []) + [s.get("LeafNodeText", "")]).strip()


def load(path):
    """{spec name: (state, failure message, location)} or None when there is no report."""
    if not os.path.exists(path):
        return None
    out = {}
    with open(path) as f:
        for suite in json.load(f):
            for s in suite.get("SpecReports") or []:
                if s.get("LeafNodeType") != "It":
                    continue
                fail = s.get("Failure") or {}
                loc = fail.get("Location") or {}
                where = "%s:%s" % (os.path.basename(loc.get("FileName", "?")), loc.get("LineNumber", "?"))
                out[spec_name(s)] = (s.get("State", "?"), (fail.get("Message") or "").strip(), where)
    return out


def first_line(msg, limit=300):
    msg = " ".join(msg.split())
    return msg if len(msg) <= limit else msg[:limit] + "..."


def main():
    ap = argparse.ArgumentParser(usage=__doc__)
    ap.add_argument("--min-passed", type=int, default=None)
    ap.add_argument("--known-failure", action="append", default=None)
    ap.add_argument("runs_dir")
    ap.add_argument("labels", nargs="+")
    args = ap.parse_args()
    runs_dir, labels = args.runs_dir, args.labels
    results = {}
    for label in labels:
        rundir = os.path.join(runs_dir, label)
        res = load(os.path.join(rundir, "report.json"))
        results[label] = res
        rc = "?"
        try:
            rc, secs = open(os.path.join(rundir, "critest.rc")).read().split()
            rc = "%s, %ss" % (rc, secs)
        except (OSError, ValueError):
            pass
        print("==== %s (critest exit %s; %s)" % (label, rc, rundir))
        if res is None:
            print("  no report.json: see %s/critest.log" % rundir)
            continue
        states = {}
        for name, (state, msg, where) in sorted(res.items()):
            states[state] = states.get(state, 0) + 1
        for name, (state, msg, where) in sorted(res.items()):
            if state in BAD:
                print("  %s: %s\n      at %s: %s" % (state.upper(), name, where, first_line(msg)))
        reasons = {}
        for name, (state, msg, where) in res.items():
            if state == "skipped":
                key = first_line(msg.splitlines()[0] if msg else "(no message: the -benchmark specs, or -f/-s)", 120)
                reasons[key] = reasons.get(key, 0) + 1
        for why, n in sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0])):
            print("  skipped x%d: %s" % (n, why))
        bad = sum(states.get(k, 0) for k in BAD)
        print("  %s: %d specs: passed=%d failed=%d skipped=%d" % (
            label, len(res), states.get("passed", 0), bad, states.get("skipped", 0)))

    ref_label = labels[0]
    ref = results[ref_label]
    if ref is None:
        print("no report from the reference run %s: nothing to compare" % ref_label)
        print("parity: 0 passed, 1 failed")
        return 1
    ref_pass = sorted(n for n, v in ref.items() if v[0] == "passed")
    if len(labels) == 1:
        print("(one run only: nothing to compare with %s)" % ref_label)
    regressions = {}
    for label in labels[1:]:
        res = results[label] or {}
        for name in ref_pass:
            got = res.get(name)
            if got is None or got[0] != "passed":
                regressions.setdefault(name, []).append((label, got))
        extra = sorted(n for n, v in res.items() if v[0] == "passed" and ref.get(n, ("",))[0] != "passed")
        for name in extra:
            print("passes with %s but not with %s: %s" % (label, ref_label, name))
    print("==== specs that pass with %s and fail with %s: %d" % (ref_label, ", ".join(labels[1:]),
                                                                 len(regressions)))
    for name, fails in sorted(regressions.items()):
        for label, got in fails:
            state, msg, where = got if got else ("missing", "not run", "-")
            print("  %s [%s %s] at %s: %s" % (name, label, state, where, first_line(msg)))
    below = floor(results, args.min_passed, args.known_failure)
    print("parity: %d passed, %d failed" % (len(ref_pass) - len(regressions), len(regressions)))
    return 1 if regressions or below else 0


def floor(results, min_passed, known):
    """Prints and counts the floor violations of every run (none when no floor is set)."""
    if min_passed is None and known is None:
        return 0
    bad = 0
    for label, res in results.items():
        if res is None:
            print("FLOOR: %s has no report" % label)
            bad += 1
            continue
        passed = sum(1 for v in res.values() if v[0] == "passed")
        failed = sorted(n for n, v in res.items() if v[0] in BAD)
        if min_passed is not None and passed < min_passed:
            print("FLOOR: %s passed %d specs, fewer than %d" % (label, passed, min_passed))
            bad += 1
        if known is not None:
            for name in failed:
                if name not in known:
                    print("FLOOR: %s fails a spec that is not a known failure: %s" % (label, name))
                    bad += 1
            for name in known:
                if name not in res:
                    print("note: known failure not in %s's report (renamed?): %s" % (label, name))
                elif res[name][0] == "passed":
                    print("note: known failure passes with %s: %s" % (label, name))
    if bad == 0:
        print("floor: every run passed at least %s specs%s" % (
            min_passed if min_passed is not None else 0,
            " and failed only known failures (%d listed)" % len(known) if known is not None else ""))
    return bad


if __name__ == "__main__":
    sys.exit(main())
