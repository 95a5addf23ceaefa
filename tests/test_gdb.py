#!/usr/bin/env python3
"""tools/dynstack-gdb.py against tests/gdb_target.c under gdb (docs/gdb.md).

    test_gdb.py SCRIPT TARGET [SWITCH]

Live process, stopped in in_coroutine() on a running coroutine:
  (a) `bt` walks the running coroutine down to its entry (in_coroutine, running_level,
      inner_entry, ds_coro_main) and ends at ds_ctx_trampoline, with no unwinder complaint;
  (b) `dynstack coros` lists every coroutine the target made, with its status;
  (c) `dynstack bt` of suspended and normal coroutines shows their frames
      (waiting_in_level3 <- level2 <- level1 <- deep_entry ...), by index and by expression,
      from either thread, and refuses what cannot be unwound (running, here or on the
      second thread, dead, shared with frames in its buffer);
  (d) afterwards the thread's registers, `bt` and the selected frame are as before, and
      `continue` lets the program run to its end with exit code 0;
  plus `dynstack stacks`, `dynstack stats` (equal to dynstack_stats_print() in the program).
Kernel core of the same state (skipped where cores go elsewhere): the same listing, and
`dynstack bt` through the unwinder. No debug information for the library: the commands say
so, and the program still runs to its end.

SWITCH is the build's -Dswitch, asm (the default) or ucontext. With ucontext the frame lists
are compared after undoing the two differences of that switch: the walk of a suspended
coroutine begins in ds_ctx_switch_publish, where swapcontext returns (the assembly switch
leaves no frame), and every walk goes on past the C `trampoline` into glibc's makecontext
stub: `__start_context` or `??`, then a 0x0 frame. Nothing else may differ.

Exit 77 (skipped) when gdb is missing or may not trace processes here. The backend is the
environment's (DYNSTACK_BACKEND, set by tests/meson.build).
"""
import glob
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile

SKIP = 77
script, target = sys.argv[1], os.path.abspath(sys.argv[2])
UCONTEXT = len(sys.argv) > 3 and sys.argv[3] == "ucontext"
failures = []


def check(cond, what, text=None):
    if not cond:
        failures.append(what)
        print("FAIL: " + what)
        if text is not None:
            print("  ---- output ----\n  " + "\n  ".join(text.splitlines()) + "\n  ----")
    return cond


def gdb_cmd(*commands, core=None, env=None, cwd=None):
    args = ["gdb", "-batch", "-nx", "-x", script]
    for c in commands:
        args += ["-ex", c]
    args += [target] + ([core] if core else [])
    e = dict(os.environ if env is None else env)
    e.pop("DEBUGINFOD_URLS", None)  # no network look-ups
    p = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                       env=e, cwd=cwd, timeout=100)
    return p.stdout


def sections(out):
    """The output between `echo @@NAME` markers, by NAME."""
    parts, name = {}, None
    for line in out.splitlines():
        m = re.fullmatch(r"@@(\w+)", line.strip())
        if m:
            name = m.group(1)
            parts[name] = []
        elif name:
            parts[name].append(line)
    return {k: "\n".join(v) for k, v in parts.items()}


def marked(pairs):
    """gdb -ex arguments: for each (NAME, command), an echo of @@NAME and the command."""
    out = []
    for name, command in pairs:
        out += ["echo @@%s\\n" % name, command]
    return out


def functions(bt):
    """Function names of the frames of a backtrace, innermost first."""
    names = []
    for line in bt.splitlines():
        m = re.match(r"#(\d+)\s+(?:0x[0-9a-f]+ in )?(\S*) \(", line)
        if m:
            names.append(m.group(2) or "??")  # a core's 0x0 frame: "in  ()"
    return names


def as_asm(names, saved=False):
    """A ucontext build's frames as the assembly switch shows them: a saved context's walk
    without its first frame, ds_ctx_switch_publish; the C trampoline as ds_ctx_trampoline, and
    the makecontext stub and the 0x0 frame after it dropped. Anything else is left as it is,
    to fail the comparison."""
    if not UCONTEXT:
        return names
    names = list(names)
    if saved and names[:1] == ["ds_ctx_switch_publish"]:
        names = names[1:]
    if "trampoline" in names:
        i = names.index("trampoline")
        if all(n in ("__start_context", "??") for n in names[i + 1:]):
            names = names[:i] + ["ds_ctx_trampoline"]
    return names


BAD_UNWIND = ("previous frame inner", "corrupt stack", "Backtrace stopped",
              "previous frame identical")

DEEP = ["waiting_in_level3", "level2", "level1", "deep_entry", "ds_coro_main",
        "ds_ctx_trampoline"]
RUNNING_BT = ["in_coroutine", "running_level", "inner_entry", "ds_coro_main",
              "ds_ctx_trampoline"]
OUTER = ["outer_entry", "ds_coro_main", "ds_ctx_trampoline"]
SHARED_B = ["shared_wait_b", "shared_b_entry", "ds_coro_main", "ds_ctx_trampoline"]
# index: (name column, status, resumes in)
COROS = {
    1: ("deep", "suspended", "waiting_in_level3"),
    2: ("group [shared]", "suspended", "shared_wait_b"),
    3: ("fresh", "suspended", "(not started)"),
    4: ("done", "dead", "-"),
    5: ("inner", "running", "running on thread 1"),
    6: ("outer", "normal", "outer_entry"),
    7: ("worker", "running", "running on thread 2"),
}
WORKER = ["worker_waiting", "worker_entry", "ds_coro_main", "ds_ctx_trampoline"]


def check_coros(text, where):
    rows = {}
    for line in text.splitlines():
        m = re.match(r"\s*(\d+)\s+0x[0-9a-f]+\s+\d+\s+(.+?)\s+(suspended|running|normal|dead)"
                     r"\s+\d+\s+\d+\s+(.*)$", line)
        if m:
            rows[int(m.group(1))] = (m.group(2), m.group(3), m.group(4))
    check(sorted(rows) == sorted(COROS), "%s: dynstack coros lists coroutines %s, expected %s"
          % (where, sorted(rows), sorted(COROS)), text)
    for i, (name, status, resume) in COROS.items():
        if i in rows:
            got = rows[i]
            check(got[0] == name and got[1] == status and resume in got[2],
                  "%s: coroutine #%d is %s, expected %s" % (where, i, got,
                                                            (name, status, resume)), text)
    check("1 more shared-mode coroutine(s)" in text,
          "%s: dynstack coros does not mention the shared coroutine it cannot list" % where,
          text)


def check_bt(text, expected, where, first=0, saved=True):
    """saved: the walk starts from a context the switch saved (dynstack bt), not from a
    thread's registers."""
    got = as_asm(functions(text), saved)
    check(got == expected, "%s: frames %s, expected %s" % (where, got, expected), text)
    check(not any(b in text for b in BAD_UNWIND), "%s: the unwinder complained" % where, text)
    m = re.search(r"^#(\d+)", text, re.M)
    check(m is not None and int(m.group(1)) == first,
          "%s: the first frame is not #%d" % (where, first), text)


def live(tmp):
    out_file = os.path.join(tmp, "program.out")
    cmds = ["break in_coroutine", "run > %s 2>&1" % out_file]
    cmds += marked([
        ("BT_BEFORE", "bt"),
        ("SELECT", "frame 1"),
        ("REGS_BEFORE", "info registers"),
        ("COROS", "dynstack coros"),
        ("DBT_DEEP", "dynstack bt 1"),
        ("DBT_DEEP_EXPR", "dynstack bt deep_coro"),
        ("DBT_SHARED_B", "dynstack bt 2"),
        ("DBT_FRESH", "dynstack bt 3"),
        ("DBT_DEAD", "dynstack bt 4"),
        ("DBT_RUNNING", "dynstack bt 5"),
        ("DBT_OUTER", "dynstack bt 6"),
        ("DBT_SHARED_A", "dynstack bt shared_a_coro"),
        ("RESUMER_OUTER", "dynstack bt -resumer 6"),
        ("RESUMER_INNER", "dynstack bt -resumer 5"),
        ("RESUMER_DEEP", "dynstack bt -resumer 1"),
        ("FRAME_AFTER", "frame"),
        ("REGS_AFTER", "info registers"),
        ("BT_AFTER", "bt"),
        ("THREAD2", "thread 2"),
        ("BT2_BEFORE", "bt"),
        ("DBT_DEEP_T2", "dynstack bt 1"),
        ("DBT_WORKER", "dynstack bt 7"),
        ("RESUMER_WORKER", "dynstack bt -resumer 7"),
        ("BT2_AFTER", "bt"),
        ("THREAD1", "thread 1"),
        ("STACKS", "dynstack stacks"),
        ("STATS", "dynstack stats"),
        ("STATS_PROGRAM", "call (int) dynstack_stats_print(1)"),
        ("CONTINUE", "continue"),
    ])
    out = gdb_cmd(*cmds)
    print(out)
    s = sections(out)
    missing = [k for k in ("BT_BEFORE", "CONTINUE") if k not in s]
    if not check(not missing, "gdb did not get to %s" % missing, out):
        return

    # (a)
    check_bt(s["BT_BEFORE"], RUNNING_BT, "bt in a running coroutine", saved=False)
    # (b)
    check_coros(s["COROS"], "live")
    # (c)
    check_bt(s["DBT_DEEP"], DEEP, "dynstack bt 1")
    check_bt(s["DBT_DEEP_EXPR"], DEEP, "dynstack bt deep_coro")
    check_bt(s["DBT_SHARED_B"], SHARED_B, "dynstack bt 2 (shared, on the group's stack)")
    check_bt(s["DBT_FRESH"], ["ds_ctx_trampoline"], "dynstack bt 3 (never started)")
    check_bt(s["DBT_OUTER"], OUTER, "dynstack bt 6 (normal)")
    check("is dead" in s["DBT_DEAD"], "dynstack bt of a dead coroutine", s["DBT_DEAD"])
    check("running on thread 1" in s["DBT_RUNNING"], "dynstack bt of the running coroutine",
          s["DBT_RUNNING"])
    check("save buffer" in s["DBT_SHARED_A"] and "cannot be unwound" in s["DBT_SHARED_A"],
          "dynstack bt of a shared coroutine whose frames are in its buffer",
          s["DBT_SHARED_A"])
    check_bt(s["RESUMER_OUTER"], ["main"], "dynstack bt -resumer 6 (main resumed outer)")
    check_bt(s["RESUMER_INNER"], OUTER, "dynstack bt -resumer 5 (outer resumed inner)")
    check("nobody waits" in s["RESUMER_DEEP"], "dynstack bt -resumer of a suspended one",
          s["RESUMER_DEEP"])
    # (d)
    check(s["BT_AFTER"] == s["BT_BEFORE"], "bt changed by dynstack bt",
          s["BT_BEFORE"] + "\n---- after ----\n" + s["BT_AFTER"])
    check(s["REGS_AFTER"] == s["REGS_BEFORE"], "registers changed by dynstack bt",
          s["REGS_BEFORE"] + "\n---- after ----\n" + s["REGS_AFTER"])
    check(re.match(r"#1\s.*running_level", s["FRAME_AFTER"]) is not None,
          "the selected frame (#1) was not kept", s["FRAME_AFTER"])
    # Another thread: its coroutine's frames under its own libc frames; a suspended
    # coroutine's backtrace with that thread's registers; that thread's bt unchanged after.
    bt2 = as_asm(functions(s["BT2_BEFORE"]))
    check(bt2[-len(WORKER):] == WORKER and not any(b in s["BT2_BEFORE"] for b in BAD_UNWIND),
          "bt of thread 2 does not end in %s" % WORKER, s["BT2_BEFORE"])
    check_bt(s["DBT_DEEP_T2"], DEEP, "dynstack bt 1 from thread 2")
    check("running on thread 2" in s["DBT_WORKER"], "dynstack bt of the worker",
          s["DBT_WORKER"])
    got = as_asm(functions(s["RESUMER_WORKER"]), saved=True)
    check(got[:2] == ["worker_thread", "start_thread"],
          "dynstack bt -resumer 7: frames %s" % got, s["RESUMER_WORKER"])
    check(s["BT2_AFTER"] == s["BT2_BEFORE"], "bt of thread 2 changed by dynstack bt",
          s["BT2_BEFORE"] + "\n---- after ----\n" + s["BT2_AFTER"])
    check("exited normally" in s["CONTINUE"], "the program did not run to exit code 0",
          s["CONTINUE"])
    check("signal SIGSEGV" not in out, "gdb stopped on a SIGSEGV", out)

    # dynstack stacks: every stack, inner's growth (three pages of alloca) seen.
    rows = {}
    for line in s["STACKS"].splitlines():
        m = re.match(r"\s*(\d+)\s+0x[0-9a-f]+\s+(\S+)\s+(\S+)\s+(\S+)\s+(\d+)\s+(\d+)\s+(\d+)\s+"
                     r"(\S+)", line)
        if m:
            rows[m.group(2)] = m.groups()
    check(sorted(rows) == sorted(["deep", "plain", "group", "fresh", "done", "inner", "outer",
                                 "worker"]),
          "dynstack stacks lists %s" % sorted(rows), s["STACKS"])
    if "inner" in rows:
        check(int(rows["inner"][5]) >= 16384 and int(rows["inner"][6]) >= 1,
              "inner's stack did not grow (committed, faults: %s)" % (rows["inner"][4:7],),
              s["STACKS"])
    kinds = {k: v[2] for k, v in rows.items()}
    check(kinds.get("plain") == "stack" and kinds.get("group") == "shared" and
          kinds.get("deep") == "coroutine", "dynstack stacks kinds %s" % kinds, s["STACKS"])

    # dynstack stats against the program's own dynstack_stats_print, taken at the same stop.
    with open(out_file) as f:
        program_out = f.read()
    ours = dict(l.split(" ", 1) for l in s["STATS"].splitlines() if re.match(r"\w+ \S+$", l))
    theirs = dict(l.split(" ", 1) for l in program_out.splitlines()
                  if re.match(r"(nr_|dynamic_stacks_backend)\w* \S+$", l))
    check(len(ours) > 10 and ours == theirs, "dynstack stats differs from dynstack_stats_print",
          s["STATS"] + "\n---- program ----\n" + program_out)
    want = os.environ.get("DYNSTACK_BACKEND")
    if want:
        check(ours.get("dynamic_stacks_backend") == want, "backend %s, expected %s" % (
            ours.get("dynamic_stacks_backend"), want), s["STATS"])
    check("gdb_target: done" in program_out, "the program did not finish its own checks",
          program_out)


def core(tmp):
    pattern = open("/proc/sys/kernel/core_pattern").read().strip()
    if pattern.startswith("|") or "/" in pattern:
        print("SKIP core file checks: kernel.core_pattern is %r" % pattern)
        return
    hard = resource.getrlimit(resource.RLIMIT_CORE)[1]
    resource.setrlimit(resource.RLIMIT_CORE, (hard, hard))
    cwd = os.path.join(tmp, "core")
    os.mkdir(cwd)
    gdb_cmd("break in_coroutine", "run > /dev/null", "signal SIGABRT", cwd=cwd)
    cores = [os.path.join(cwd, f) for f in os.listdir(cwd)]
    if len(cores) != 1:
        print("SKIP core file checks: no core written (RLIMIT_CORE hard limit %d)" % hard)
        return
    out = gdb_cmd(*marked([
        ("BT", "bt"),
        ("COROS", "dynstack coros"),
        ("DBT_DEEP", "dynstack bt 1"),
        ("DBT_OUTER", "dynstack bt 6"),
        ("BT_AFTER", "bt"),
        ("STATS", "dynstack stats"),
    ]), core=cores[0])
    print(out)
    s = sections(out)
    if not check("COROS" in s and "BT_AFTER" in s, "gdb on the core did not get through", out):
        return
    check_bt(s["BT"], RUNNING_BT, "core: bt", saved=False)
    check_coros(s["COROS"], "core")
    check_bt(s["DBT_DEEP"], DEEP, "core: dynstack bt 1", first=1)
    check_bt(s["DBT_OUTER"], OUTER, "core: dynstack bt 6", first=1)
    check(s["BT_AFTER"] == s["BT"], "core: bt changed by dynstack bt", out)
    check(re.search(r"^nr_dynamic_stacks 8$", s["STATS"], re.M) is not None,
          "core: dynstack stats", s["STATS"])


def no_debug_info(tmp):
    """The library stripped of its debug information, found first through LD_LIBRARY_PATH."""
    strip = shutil.which("strip")
    libs = [l for l in glob.glob(os.path.join(os.path.dirname(target), "..", "libdynstack.so*"))
            if os.path.islink(l) or os.path.isfile(l)]
    real = [l for l in libs if not os.path.islink(l)]
    if not strip or len(real) != 1:
        print("SKIP no-debug-info checks: no strip, or not one libdynstack.so beside the tests")
        return
    libdir = os.path.join(tmp, "lib")
    os.mkdir(libdir)
    for l in libs:
        dest = os.path.join(libdir, os.path.basename(l))
        if os.path.islink(l):
            os.symlink(os.readlink(l), dest)
        else:
            subprocess.run([strip, "--strip-debug", "-o", dest, l], check=True)
    env = dict(os.environ, LD_LIBRARY_PATH=libdir)
    out = gdb_cmd("break in_coroutine", "run > %s 2>&1" % os.path.join(tmp, "nodebug.out"),
                  *marked([("COROS", "dynstack coros"), ("STATS", "dynstack stats"),
                           ("CONTINUE", "continue")]), env=env)
    print(out)
    s = sections(out)
    if not check("CONTINUE" in s, "gdb without debug info did not get through", out):
        return
    check("no debug information" in s["COROS"], "no debug info: dynstack coros", s["COROS"])
    check("dynstack_stats_print" in s["STATS"], "no debug info: dynstack stats", s["STATS"])
    check("exited normally" in s["CONTINUE"], "no debug info: the program did not finish",
          s["CONTINUE"])
    with open(os.path.join(tmp, "nodebug.out")) as f:
        check("nr_dynamic_stacks 8" in f.read(), "no debug info: the program's stats")


def main():
    if shutil.which("gdb") is None:
        print("SKIP: no gdb")
        return SKIP
    probe = subprocess.run(["gdb", "-batch", "-nx", "-ex", "run", "--args", sys.executable,
                            "-c", "pass"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True, timeout=60)
    if "exited normally" not in probe.stdout:
        print("SKIP: gdb cannot run a program here (ptrace not permitted?)\n" + probe.stdout)
        return SKIP
    with tempfile.TemporaryDirectory(prefix="test_gdb.") as tmp:
        live(tmp)
        core(tmp)
        no_debug_info(tmp)
    if failures:
        print("%d checks failed" % len(failures))
        return 1
    print("all gdb checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
