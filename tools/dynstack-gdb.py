# gdb commands for programs that use libdynstack (docs/gdb.md): list coroutines and stacks, show
# the backtrace of a suspended coroutine, read the counters. Load with
#     (gdb) source <datadir>/libdynstack/dynstack-gdb.py      (meson install puts it there)
# It reads the library's own data structures through its debug information, so it works on a
# stopped process and on a core file, and follows the library's layout from one build to the
# next; without debug information for libdynstack the commands say so and stop.
#
# Loading it also sets `handle SIGSEGV nostop noprint pass` (every commit of a stack page is a
# SIGSEGV that the library handles) and a breakpoint where the library gives up on a fault
# (overflow, or a crash that is not a commit), so that a real crash still stops in gdb.
#
# SPDX-License-Identifier: MIT

import itertools
import os
import re

import gdb

try:
    from gdb.unwinder import Unwinder, register_unwinder
except ImportError:  # gdb built without unwinder support: core files cannot be unwound
    Unwinder = object
    register_unwinder = None

# src/types.h, src/coro.h, include/dynstack.h
SLOT_LIVE = 1
SLOT_CACHED = 2
SLOT_CORO = 1 << 0
SLOT_SEGMENT = 1 << 1
SUSPENDED, RUNNING, NORMAL, DEAD = 1, 2, 3, 4
STATUS = {SUSPENDED: "suspended", RUNNING: "running", NORMAL: "normal", DEAD: "dead"}

# The saved frame that src/arch/<cpu>/switch.S leaves at ds_ctx_t.sp: (size in bytes,
# {register: byte offset}); the resume address is the pc. x86-64: MXCSR/x87 CW at +0, then
# r15 r14 r13 r12 rbx rbp and the resume address. aarch64: x19..x28, x29, x30 (the resume
# address), then d8..d15, which are left alone (only floating-point locals depend on them).
ASM_FRAMES = {
    "x86-64": (64, {"r15": 8, "r14": 16, "r13": 24, "r12": 32, "rbx": 40, "rbp": 48,
                    "rip": 56}),
    "aarch64": (160, dict([("x%d" % (19 + i), 8 * i) for i in range(10)] +
                          [("x29", 80), ("x30", 88), ("pc", 88)])),
}
# glibc's ucontext_t (-Dswitch=ucontext): gregs[] indices on x86-64.
UC_GREGS_X86_64 = {"r12": 4, "r13": 5, "r14": 6, "r15": 7, "rbp": 10, "rbx": 11, "rsp": 15,
                   "rip": 16}
SP_PC = {"x86-64": ("rsp", "rip"), "aarch64": ("sp", "pc")}

NO_DEBUG_INFO = (
    "libdynstack: no debug information for the library ({what} not found). Is the program "
    "started, and linked with libdynstack? The library needs its debug information: build it "
    "with -g (Meson's default buildtype, debugoptimized, has it) or install its debug symbols. "
    "docs/gdb.md, 'Without debug information'.")


def arch_name():
    name = gdb.selected_inferior().architecture().name()
    if "x86-64" in name:
        return "x86-64"
    if name.startswith("aarch64"):
        return "aarch64"
    raise gdb.GdbError("libdynstack: no saved-frame layout for architecture %s" % name)


def static_symbol(name, source):
    """The file-scope variable `name` of the library's source file `source`."""
    for sym in gdb.lookup_static_symbols(name):
        if sym.symtab is not None and os.path.basename(sym.symtab.filename) == source:
            return sym
    raise gdb.GdbError(NO_DEBUG_INFO.format(what="'%s' of %s" % (name, source)))


def global_symbol(name):
    sym = gdb.lookup_global_symbol(name)
    if sym is None:
        raise gdb.GdbError(NO_DEBUG_INFO.format(what="'%s'" % name))
    return sym


def pointer_to(addr, typ):
    return gdb.Value(addr).cast(typ.pointer()).dereference()


def read_cstring(addr, size):
    """The NUL-terminated text in size bytes of the program's memory at addr."""
    raw = bytes(gdb.selected_inferior().read_memory(addr, size))
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


def size_str(n):
    for unit, shift in (("G", 30), ("M", 20), ("K", 10)):
        if n >= (1 << shift) and n % (1 << shift) == 0:
            return "%d%s" % (n >> shift, unit)
    return str(n)


def describe_pc(pc):
    """function (file:line) for a return address, looked up at pc - 1, the call, as bt does
    for every frame but the innermost."""
    if pc <= 1:
        return "?"
    look = pc - 1
    name = None
    try:
        block = gdb.block_for_pc(look)
        while block is not None and block.function is None:
            block = block.superblock
        if block is not None:
            name = block.function.print_name
    except RuntimeError:
        pass
    if name is None:
        m = re.search(r"<([^>+]+)", gdb.format_address(look))
        name = m.group(1) if m else "0x%x" % pc
    sal = gdb.find_pc_line(look)
    if sal.symtab is not None and sal.line:
        return "%s (%s:%d)" % (name, sal.symtab.filename, sal.line)
    return name


class Stack:
    """One live slot: a struct dynstack read from its arena's metadata array."""

    def __init__(self, addr, v, name, lib):
        self.addr = addr
        self.id = int(v["id"])
        self.name = name.split(b"\0", 1)[0].decode("utf-8", "replace")
        self.flags = int(v["flags"])
        self.lo = int(v["lo"])
        self.top = int(v["top"])
        self.reserve = int(v["reserve"])
        self.edge = int(v["edge"])
        self.peak_edge = int(v["peak_edge"])
        self.faults = int(v["faults"])
        self.coro = int(v["coro"])
        self.policy_addr = int(v["policy"])
        self.lib = lib
        self.kind = "stack"

    @property
    def committed(self):
        return self.top - self.edge

    @property
    def peak(self):
        return self.top - self.peak_edge

    def policy(self):
        if not self.policy_addr:
            return "-"
        try:
            spec = static_symbol("interned", "policy.c").type.target()["spec"]
            return read_cstring(self.policy_addr + spec.bitpos // 8, spec.type.sizeof)
        except (gdb.GdbError, gdb.MemoryError):
            return "?"

    def contains(self, sp):
        return self.lo - self.reserve - 4096 <= sp <= self.top


class Coro:
    """A coroutine reached from its stack (or given by address)."""

    def __init__(self, addr, lib):
        self.addr = addr
        v = pointer_to(addr, lib.coro_t)
        self.status = int(v["status"])
        self.stack_addr = int(v["stack"])
        self.group = int(v["group"])
        self.link = int(v["link"])
        self.saved = int(v["saved"])
        self.ctx_addr = addr + lib.ctx_offset
        self.parent = int(pointer_to(self.link, lib.link_t)["parent"]) if self.link else 0
        self.stack = None
        self.on_stack = not self.group  # a shared one: its frames are on the group's stack
        self.index = None
        self.thread = None

    @property
    def status_name(self):
        return STATUS.get(self.status, "status %d" % self.status)


class Library:
    """The library's state, read afresh for every command (the program may have run since)."""

    def __init__(self):
        self.classes = static_symbol("classes", "arena.c")
        self.current = static_symbol("current", "coro.c")
        arena_t = self.classes.type.target()["arenas"].type.target()
        self.slot_t = arena_t["slots"].type.target()
        self.coro_t = self.current.type.target()
        self.name_offset = self.slot_t["name"].bitpos // 8
        self.name_size = self.slot_t["name"].type.sizeof
        self.link_t = self.coro_t["link"].type.target()
        self.group_t = self.coro_t["group"].type.target()
        self.ctx_offset = self.coro_t["ctx"].bitpos // 8
        self.caller_offset = self.link_t["caller"].bitpos // 8
        self.ptr_t = gdb.lookup_type("unsigned long")
        self.inferior = gdb.selected_inferior()
        self._stacks = None
        self.cached = 0

    # ---- stacks

    def stacks(self):
        """Every live stack, in arena order (size class, then oldest arena first)."""
        if self._stacks is not None:
            return self._stacks
        stacks = []
        classes = self.classes.value()
        lo, hi = classes.type.range()
        size = self.slot_t.sizeof
        for i in range(lo, hi + 1):
            arenas = []
            a = classes[i]["arenas"]
            while int(a):
                arenas.append(a.dereference())
                a = a["next"]
            for a in reversed(arenas):
                # used counts claims, which run past the end once the arena is full.
                base, used = int(a["slots"]), min(int(a["used"]), int(a["nslots"]))
                # Whole chunks of the metadata array at once: one read, not one per field.
                for start in range(0, used, 1024):
                    n = min(1024, used - start)
                    raw = bytes(self.inferior.read_memory(base + start * size, n * size))
                    arr = gdb.Value(raw, self.slot_t.array(n - 1))
                    for k in range(n):
                        v = arr[k]
                        state = int(v["state"])
                        if state == SLOT_CACHED:
                            self.cached += 1
                        if state == SLOT_LIVE:
                            name = raw[k * size + self.name_offset:][:self.name_size]
                            stacks.append(Stack(base + (start + k) * size, v, name, self))
        stacks.sort(key=lambda s: s.id)
        self._stacks = stacks
        return stacks

    def stack_at(self, addr):
        for s in self.stacks():
            if s.addr == addr:
                return s
        return None

    # ---- coroutines

    def coros(self):
        """(coroutines that can be listed, groups) from the live stacks. A private coroutine is
        its stack's owner; of a group's coroutines only the one whose frames are on the group's
        stack can be found: the others are in save buffers that nothing global lists."""
        coros, groups = [], []
        for s in self.stacks():
            if s.flags & SLOT_SEGMENT:
                s.kind = "segment"
                continue
            if not (s.flags & SLOT_CORO):
                continue
            s.kind = "coroutine"
            if not s.coro:
                s.kind = "shared (no coroutine ran yet)"
                continue
            try:
                c = Coro(s.coro, self)
            except gdb.MemoryError:
                s.kind = "coroutine (unreadable)"
                continue
            if not c.group and c.stack_addr == s.addr:
                c.stack = s
                coros.append(c)
                continue
            # A group's stack: its `coro` is the last coroutine copied in (it may have been
            # destroyed since), the group says whose frames are there now.
            g = self.group(c.group) if c.group else None
            if g is None or g["stack"] != s.addr:
                s.kind = "shared (group unknown)"
                continue
            s.kind = "shared"
            groups.append((s, g))
            if g["on_stack"]:
                oc = c if g["on_stack"] == c.addr else Coro(g["on_stack"], self)
                oc.stack, oc.on_stack = s, True
                coros.append(oc)
        for i, c in enumerate(coros):
            c.index = i + 1
        self.find_threads(coros)
        return coros, groups

    def group(self, addr):
        try:
            v = pointer_to(addr, self.group_t)
            return {"addr": addr, "stack": int(v["stack"]), "on_stack": int(v["on_stack"]),
                    "ncoros": int(v["ncoros"]), "saved_total": int(v["saved_total"])}
        except gdb.MemoryError:
            return None

    def coro(self, addr):
        """A coroutine given by address, listed or not."""
        coros, _ = self.coros()
        for c in coros:
            if c.addr == addr:
                return c, coros
        try:
            c = Coro(addr, self)
        except gdb.MemoryError:
            raise gdb.GdbError("libdynstack: cannot read a coroutine at 0x%x" % addr)
        if c.status not in STATUS:
            raise gdb.GdbError("libdynstack: 0x%x is not a live coroutine (status %d)"
                               % (addr, c.status))
        c.stack = self.stack_at(c.stack_addr)
        if c.group:
            g = self.group(c.group)
            c.on_stack = g is not None and g["on_stack"] == addr
        return c, coros

    def find_threads(self, coros):
        """Which thread runs each running coroutine: the thread-local `current` of coro.c, or
        failing that (no libthread_db), the thread whose stack pointer is in its stack."""
        running = {c.addr: c for c in coros if c.status == RUNNING}
        if not running:
            return
        sp_name = SP_PC[arch_name()][0]
        with KeepSelection():
            for t in self.inferior.threads():
                try:
                    t.switch()
                    cur = int(self.current.value())
                except gdb.error:
                    cur = 0
                if cur in running:
                    running[cur].thread = t
                    continue
                try:
                    sp = int(gdb.newest_frame().read_register(sp_name))
                except gdb.error:
                    continue
                for c in running.values():
                    if c.thread is None and c.stack is not None and c.stack.contains(sp):
                        c.thread = t

    def saved_context(self, c, coros):
        """The registers c resumes with, from its saved frame, or raise GdbError saying why it
        has none. A normal coroutine's frame is in the link of the one it resumed."""
        if c.status == DEAD:
            raise gdb.GdbError("libdynstack: coroutine 0x%x is dead: no frames" % c.addr)
        if c.status == RUNNING:
            where = "thread %d" % c.thread.num if c.thread else "some thread"
            raise gdb.GdbError("libdynstack: coroutine 0x%x is running on %s: select that "
                               "thread (`thread N`) and use `bt`" % (c.addr, where))
        if c.group and not c.on_stack:
            raise gdb.GdbError(
                "libdynstack: shared-mode coroutine 0x%x has its frames (%d bytes) in its save "
                "buffer, not on its group's stack: they cannot be unwound in place "
                "(docs/gdb.md, 'Shared-mode coroutines')" % (c.addr, c.saved))
        if c.status == SUSPENDED:
            return self.read_context(c.ctx_addr)
        # NORMAL: find the coroutine it resumed.
        for o in coros:
            if o.parent == c.addr and o.status in (RUNNING, NORMAL):
                return self.read_context(o.link + self.caller_offset)
        raise gdb.GdbError("libdynstack: coroutine 0x%x waits for a coroutine this script "
                           "cannot find (a shared-mode one?)" % c.addr)

    def resumer_context(self, c):
        """The registers of whoever resumed running or normal c (a coroutine, or a thread's
        own stack), saved in c's link until c switches back."""
        if c.status not in (RUNNING, NORMAL):
            raise gdb.GdbError("libdynstack: coroutine 0x%x is %s: nobody waits for it"
                               % (c.addr, c.status_name))
        return self.read_context(c.link + self.caller_offset)

    def read_context(self, ctx_addr):
        arch = arch_name()
        ctx_t = self.link_t["caller"].type.strip_typedefs()
        ctx = pointer_to(ctx_addr, ctx_t)
        names = [f.name for f in ctx_t.fields()]
        if "sp" in names:
            sp = int(ctx["sp"])
            size, offsets = ASM_FRAMES[arch]
            raw = bytes(self.inferior.read_memory(sp, size))
            words = gdb.Value(raw, self.ptr_t.array(size // 8 - 1))
            regs = {r: int(words[o // 8]) for r, o in offsets.items()}
            regs[SP_PC[arch][0]] = sp + size
            return regs, sp
        mc = ctx["uc"]["uc_mcontext"]
        if arch == "x86-64":
            regs = {r: int(mc["gregs"][i]) & ((1 << 64) - 1)
                    for r, i in UC_GREGS_X86_64.items()}
        else:
            regs = {"x%d" % i: int(mc["regs"][i]) for i in range(19, 31)}
            regs["sp"], regs["pc"] = int(mc["sp"]), int(mc["pc"])
        return regs, regs[SP_PC[arch][0]]


class KeepSelection:
    """Restore the selected thread and frame (by level) on exit, without printing."""

    def __enter__(self):
        self.thread = gdb.selected_thread()
        try:
            self.level = gdb.selected_frame().level()
        except gdb.error:
            self.level = None
        return self

    def __exit__(self, *exc):
        if self.thread is None or not self.thread.is_valid():
            return False
        self.thread.switch()
        if self.level is not None:
            frame = gdb.newest_frame()
            for _ in range(self.level):
                if frame.older() is None:
                    break
                frame = frame.older()
            frame.select()
        return False


# ---- backtraces of suspended coroutines

class CoroUnwinder(Unwinder):
    """For targets whose registers cannot be written (core files): while armed, unwinds the
    innermost frame of the selected thread to the coroutine's saved registers, so the
    coroutine's frames follow as #1, #2, ...; CoroFrameFilter hides the real #0."""

    def __init__(self):
        super().__init__("libdynstack-coroutine")
        self.regs = None

    def __call__(self, pending):
        if self.regs is None or pending.level() != 0:
            return None
        pc = pending.read_register(SP_PC[arch_name()][1])
        # Frame #0's id: at the coroutine's saved stack pointer, below all of its frames,
        # so gdb does not take #1 for a frame inner to #0.
        info = pending.create_unwind_info(FrameId(self.frame_sp, int(pc)))
        u64 = gdb.lookup_type("unsigned long")
        for name, value in self.regs.items():
            info.add_saved_register(name, gdb.Value(value).cast(u64))
        return info


class FrameId:
    """What create_unwind_info wants (gdb 13 has no gdb.unwinder.FrameId): gdb.Values."""

    def __init__(self, sp, pc):
        u64 = gdb.lookup_type("unsigned long")
        self.sp = gdb.Value(sp).cast(u64)
        self.pc = gdb.Value(pc).cast(u64)


class CoroFrameFilter:
    """Drops the real innermost frame while the unwinder is armed. Enabled only then: with
    no enabled filter, gdb prints backtraces its own way, as if none were registered."""

    def __init__(self):
        self.name = "libdynstack-coroutine"
        self.priority = 100
        self.enabled = False
        gdb.frame_filters[self.name] = self

    def filter(self, frames):
        return itertools.islice(frames, 1, None)


UNWINDER = CoroUnwinder() if register_unwinder else None
if UNWINDER is not None:
    register_unwinder(None, UNWINDER, replace=True)
    FRAME_FILTER = CoroFrameFilter()


class NotWritable(Exception):
    """The target's registers cannot be written (a core file)."""


def write_register(name, value):
    """Write a register of frame #0, selected anew for every write: after each write gdb
    looks the selected frame up again by its id, and all ds_ctx_trampoline frames share one
    (an outermost frame's), so it may come back with an outer frame selected, whose
    registers are where that frame saved them: on the stack."""
    gdb.newest_frame().select()
    gdb.execute("set $%s = %#x" % (name, value), to_string=True)


def bt_with_registers(regs, command):
    """Live process: set the innermost frame's registers to the coroutine's, run command,
    put them back. Raises NotWritable if the first write that changes something fails
    (then nothing was changed)."""
    thread = gdb.selected_thread()
    u64 = gdb.lookup_type("unsigned long")
    with KeepSelection():
        newest = gdb.newest_frame()
        saved = {r: int(newest.read_register(r).cast(u64)) for r in regs}
        try:
            try:
                for r, v in regs.items():
                    write_register(r, v)
            except gdb.error as e:
                raise NotWritable(str(e))
            gdb.newest_frame().select()
            gdb.execute(command)
        finally:
            thread.switch()
            failed = []
            for r, v in saved.items():
                try:
                    write_register(r, v)
                except gdb.error as e:
                    failed.append("set $%s = %#x (%s)" % (r, v, e))
            newest = gdb.newest_frame()
            failed += ["set $%s = %#x" % (r, v) for r, v in saved.items()
                       if int(newest.read_register(r).cast(u64)) != v]
            if failed:
                raise gdb.GdbError("libdynstack: could not restore the registers of thread "
                                   "%d; do it by hand: %s" % (thread.num, "; ".join(failed)))


def bt_with_unwinder(regs, frame_sp, command):
    if UNWINDER is None:
        raise gdb.GdbError("libdynstack: this target's registers cannot be written (a core "
                           "file?) and this gdb has no Python unwinders")
    print("(registers cannot be written here, a core file: the coroutine's frames are "
          "unwound from its saved registers and numbered from #1)")
    with KeepSelection():
        UNWINDER.regs, UNWINDER.frame_sp = regs, frame_sp
        FRAME_FILTER.enabled = True
        gdb.invalidate_cached_frames()
        try:
            gdb.newest_frame().select()
            gdb.execute(command)
        finally:
            UNWINDER.regs = None
            FRAME_FILTER.enabled = False
            gdb.invalidate_cached_frames()


# ---- commands

def parse_coro(lib, arg):
    """N (an index of `dynstack coros`) or an expression giving a dynstack_coro_t *."""
    coros, _ = lib.coros()
    if re.fullmatch(r"\d+", arg) and int(arg) < 1 << 20:
        n = int(arg)
        for c in coros:
            if c.index == n:
                return c, coros
        raise gdb.GdbError("libdynstack: no coroutine #%d (see `dynstack coros`)" % n)
    addr = int(gdb.parse_and_eval(arg).cast(gdb.lookup_type("unsigned long")))
    return lib.coro(addr)


def resume_point(lib, c, coros):
    """Where a coroutine would resume: the caller of its yield (or of the resume it waits
    in), or 'not started' when the pc is the first instruction of a function (the entry
    trampoline: a return address never is)."""
    try:
        regs, frame_sp = lib.saved_context(c, coros)
    except gdb.GdbError:
        return None
    except gdb.MemoryError:
        return "?"
    pc = regs[SP_PC[arch_name()][1]]
    m = re.search(r"<([^>+]+)>", gdb.format_address(pc))
    if m:
        return "%s (not started)" % m.group(1)
    # -Dswitch=ucontext: swapcontext returns into ds_ctx_switch_publish, a frame of its own
    # (the assembly switch leaves none); what matters is its caller.
    m = re.search(r"<([^>+]+)", gdb.format_address(pc - 1))
    if m and m.group(1) == "ds_ctx_switch_publish":
        pc = caller_pc(regs, frame_sp) or pc
    return describe_pc(pc)


def caller_pc(regs, frame_sp):
    """The return address of the coroutine's innermost frame, as gdb unwinds it from the
    saved registers (through CoroUnwinder, so on a core file too); None if it cannot."""
    if UNWINDER is None or gdb.selected_thread() is None:
        return None
    with KeepSelection():
        UNWINDER.regs, UNWINDER.frame_sp = regs, frame_sp
        gdb.invalidate_cached_frames()
        try:
            frame = gdb.newest_frame().older()  # the coroutine's innermost frame
            frame = frame.older() if frame is not None else None
            return int(frame.pc()) if frame is not None else None
        except gdb.error:
            return None
        finally:
            UNWINDER.regs = None
            gdb.invalidate_cached_frames()


class DynstackPrefix(gdb.Command):
    """libdynstack commands (docs/gdb.md).

dynstack coros         list coroutines found through the library's arenas
dynstack bt N|ADDR     backtrace of suspended coroutine N of `dynstack coros`, or at ADDR;
                       with -resumer, of whoever resumed running or normal coroutine N
dynstack stacks        list live stacks: committed bytes, peak, policy
dynstack stats         the library's counters, as dynstack_stats_print() prints them"""

    def __init__(self):
        super().__init__("dynstack", gdb.COMMAND_STACK, prefix=True)

    def invoke(self, arg, from_tty):
        gdb.execute("help dynstack")


class DynstackCoros(gdb.Command):
    """List the coroutines found through the library's arenas.
Columns: index (for `dynstack bt`), address, stack id, name, status, committed bytes,
peak bytes, and where a suspended or normal one resumes. Every private coroutine is
found; of a group of shared-mode coroutines only the one whose frames are on the
group's stack (the others are counted)."""

    def __init__(self):
        super().__init__("dynstack coros", gdb.COMMAND_STACK)

    def invoke(self, arg, from_tty):
        lib = Library()
        coros, groups = lib.coros()
        print("%3s  %-18s %5s  %-15s %-10s %9s %9s  %s" % (
            "#", "coroutine", "stack", "name", "status", "committed", "peak", "resumes in"))
        for c in coros:
            s = c.stack
            try:
                if c.status == RUNNING:
                    where = "running on thread %d" % c.thread.num if c.thread else "running"
                else:
                    where = resume_point(lib, c, coros) or "-"
            except (gdb.error, ValueError, OverflowError) as e:
                where = "? (%s)" % e
            name = (s.name or "-") + (" [shared]" if c.group else "")
            print("%3d  0x%-16x %5d  %-15s %-10s %9d %9d  %s" % (
                c.index, c.addr, s.id, name, c.status_name, s.committed, s.peak, where))
        for s, g in groups:
            hidden = g["ncoros"] - (1 if g["on_stack"] else 0)
            if hidden > 0:
                print("     group 0x%x (stack %d \"%s\"): %d more shared-mode coroutine(s) with "
                      "%d bytes in save buffers, not listed (nothing global lists them)" % (
                          g["addr"], s.id, s.name, hidden, g["saved_total"]))
        if not coros and not groups:
            print("(no coroutines)")


class DynstackBt(gdb.Command):
    """Backtrace of a coroutine: dynstack bt [-resumer] N|ADDRESS [bt options].
N is an index of `dynstack coros`; ADDRESS any expression giving a dynstack_coro_t *.
Shows a suspended coroutine's frames, or a normal one's (waiting for a coroutine it
resumed); with -resumer, the frames of whoever resumed a running or normal coroutine
(down to its dynstack_coro_resume call): the thread's own stack, or a coroutine.
On a live process the selected thread's registers are set to the saved ones for the
length of one `bt`, then restored; on a core file the frames are unwound from the saved
registers instead, numbered from #1."""

    def __init__(self):
        super().__init__("dynstack bt", gdb.COMMAND_STACK)

    def invoke(self, arg, from_tty):
        argv = gdb.string_to_argv(arg)
        resumer = bool(argv) and argv[0] == "-resumer"
        if resumer:
            argv = argv[1:]
        if not argv:
            raise gdb.GdbError("usage: dynstack bt [-resumer] N|ADDRESS [bt options]")
        lib = Library()
        c, coros = parse_coro(lib, argv[0])
        if resumer:
            regs, frame_sp = lib.resumer_context(c)
        else:
            regs, frame_sp = lib.saved_context(c, coros)
        command = " ".join(["bt"] + argv[1:])
        thread = gdb.selected_thread()
        if thread is None:
            raise gdb.GdbError("libdynstack: no thread to borrow registers from")
        if not thread.is_stopped():
            raise gdb.GdbError("libdynstack: the selected thread is running: stop it first")
        stack = c.stack
        print("%scoroutine 0x%x (stack %s \"%s\", %s):" % (
            "the resumer of " if resumer else "", c.addr, stack.id if stack else "?",
            stack.name if stack else "", c.status_name))
        try:
            bt_with_registers(regs, command)
        except NotWritable:
            bt_with_unwinder(regs, frame_sp, command)


class DynstackStacks(gdb.Command):
    """List the live stacks.
Columns: id, address (dynstack_t *), name, kind (stack, coroutine, shared, segment),
usable size, committed bytes, peak committed bytes, commit faults, policy."""

    def __init__(self):
        super().__init__("dynstack stacks", gdb.COMMAND_STACK)

    def invoke(self, arg, from_tty):
        lib = Library()
        lib.coros()  # sets each stack's kind
        print("%5s  %-18s %-12s %-10s %8s %9s %9s %6s  %s" % (
            "id", "dynstack_t", "name", "kind", "size", "committed", "peak", "faults", "policy"))
        for s in lib.stacks():
            print("%5d  0x%-16x %-12s %-10s %8s %9d %9d %6d  %s" % (
                s.id, s.addr, s.name or "-", s.kind, size_str(s.top - s.lo), s.committed,
                s.peak, s.faults, s.policy()))
        if lib.cached:
            print("(%d destroyed stacks kept warm in caches, not listed)" % lib.cached)


class DynstackStats(gdb.Command):
    """Print the library's counters, as dynstack_stats_print() does.
They are read from memory, so this works on core files too. Without debug information
for the library, a live program is asked to print them (dynstack_stats_print(2))."""

    def __init__(self):
        super().__init__("dynstack stats", gdb.COMMAND_STATUS)

    def invoke(self, arg, from_tty):
        try:
            counters = global_symbol("ds_counters").value()
            blocks = static_symbol("blocks", "stats.c").value()
            names = [f.name for f in gdb.lookup_type("enum ds_counter_index").fields()]
        except (gdb.GdbError, gdb.error) as e:
            self.fallback(e)
            return
        total = [int(counters[i]) for i in range(len(names) - 1)]
        # Per-thread blocks, summed as stats.c's snapshot() does (without its lock: all
        # threads are stopped).
        b = blocks
        while int(b):
            v = b.dereference()["v"]
            for i in range(len(total)):
                total[i] += int(v[i])
            b = b.dereference()["next"]
        for name, value in zip(names, total):
            print("%s %d" % (name[len("DS_C_"):], value & ((1 << 64) - 1)))
        print("dynamic_stacks_backend %s" % self.backend())

    @staticmethod
    def backend():
        try:
            if not int(static_symbol("initialized", "stack.c").value()):
                return "none"
            return "guard" if str(global_symbol("ds_opt").value()["backend"]).endswith(
                "GUARD") else "mprotect"
        except (gdb.GdbError, gdb.error):
            return "?"

    @staticmethod
    def fallback(err):
        """No debug information: on a live process, dynstack_stats_print() can still be
        called (it is exported); its output goes to the program's stderr."""
        try:
            gdb.parse_and_eval("dynstack_stats_print")
        except gdb.error:
            raise gdb.GdbError(str(err))
        print("%s\nCalling dynstack_stats_print(2) in the program instead (output on its "
              "stderr)." % err)
        try:
            gdb.execute("call (int) dynstack_stats_print(2)", to_string=True)
        except gdb.error as e:
            print("libdynstack: gdb said: %s" % e)


class FatalFault(gdb.Breakpoint):
    """Stops where the library gives a fault up (an overflow, a commit the kernel refused, or
    a fault that is not a commit and has no handler to go to): the process is about to die by
    SIGSEGV, which `handle SIGSEGV nostop` would otherwise let happen unseen."""

    def __init__(self):
        super().__init__("die_by_default_sigsafe", internal=False)

    def stop(self):
        print("libdynstack: this SIGSEGV is no stack commit (an overflow is reported above; "
              "else the fault is not on a dynamic stack) and kills the program if continued. "
              "`bt` shows the library's handler, <signal handler called>, then the faulting "
              "code.")
        return True


FATAL_ARMED = False


def arm_fatal_fault(objfile):
    """Once, when the library's code (with its debug information) is loaded: set FatalFault.
    Not before, so that gdb has no pending breakpoint to talk about; and not again once the
    user deleted it."""
    global FATAL_ARMED
    if FATAL_ARMED or not objfile.is_valid():
        return
    try:
        if objfile.lookup_global_symbol("dynstack_init") is None:
            return
    except gdb.error:
        return
    FATAL_ARMED = True
    FatalFault()


DynstackPrefix()
DynstackCoros()
DynstackBt()
DynstackStacks()
DynstackStats()

gdb.execute("handle SIGSEGV nostop noprint pass", to_string=True)
gdb.events.new_objfile.connect(lambda event: arm_fatal_fault(event.new_objfile))
for loaded in gdb.objfiles():
    arm_fatal_fault(loaded)
print("libdynstack: `handle SIGSEGV nostop noprint pass` (every commit of a stack page is a "
      "SIGSEGV the library handles); a fatal fault stops at die_by_default_sigsafe. "
      "Commands: dynstack coros|bt|stacks|stats (docs/gdb.md).")
