#!/usr/bin/env python3
"""`meson install` gives a tree a program can build against with pkg-config alone.

Usage: check_install.py BUILDDIR SOURCEDIR --meson MESON --cc CC --prefix P --libdir L
       --includedir I --bindir B --mandir M --datadir D

Installs the build (no rebuild) into a private DESTDIR and checks that both libraries,
dynstack.pc, dynstack-sim, the man page, every header under include/ and every docs/*.md are
there. Then compiles examples/hello.c with nothing but `pkg-config --cflags --libs dynstack`
pointed at that tree and runs it: once linked to the installed libdynstack.so (found through
LD_LIBRARY_PATH, and checked to be the one loaded), once linked statically to libdynstack.a
with `pkg-config --static --libs` (and checked not to need libdynstack.so). Exit 0 on success,
1 on a failure (the tree is kept and named), 77 (skip) without pkg-config or a C compiler.
"""
import argparse
import glob
import os
import shlex
import shutil
import subprocess
import sys
import tempfile

SKIP = 77


class Failure(Exception):
    pass


def run(cmd, env=None, what=None, show_env=()):
    """Run cmd; on failure raise with its output. Returns stdout."""
    shown = " ".join([f"{v}={shlex.quote(env[v])}" for v in show_env if env and v in env]
                     + [shlex.quote(c) for c in cmd])
    print(f"$ {shown}", flush=True)
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if p.stdout.strip():
        print(p.stdout.rstrip())
    if p.stderr.strip():
        print(p.stderr.rstrip(), file=sys.stderr)
    if p.returncode != 0:
        raise Failure(f"{what or cmd[0]} exited with {p.returncode}")
    return p.stdout


def under(dest, prefix, path):
    """Where path (relative to prefix, or absolute) lands under DESTDIR."""
    full = os.path.join(prefix, path)
    return os.path.join(dest, os.path.relpath(full, os.path.sep))


def loaded_libraries(exe, env):
    """The shared objects the dynamic loader maps for exe (what ldd prints), without running
    it: glibc's loader lists them and exits when LD_TRACE_LOADED_OBJECTS is set."""
    out = run([exe], env=dict(env, LD_TRACE_LOADED_OBJECTS="1"), what="loader trace",
              show_env=("LD_LIBRARY_PATH", "LD_TRACE_LOADED_OBJECTS"))
    return [line.split() for line in out.splitlines() if line.strip()]


def check(args, dest):
    prefix = args.prefix
    libdir = under(dest, prefix, args.libdir)
    includedir = under(dest, prefix, args.includedir)
    bindir = under(dest, prefix, args.bindir)
    mandir = under(dest, prefix, args.mandir)
    docdir = under(dest, prefix, os.path.join(args.datadir, "doc", "libdynstack"))

    env = dict(os.environ)
    env.pop("DESTDIR", None)
    run(shlex.split(args.meson) + ["install", "-C", args.builddir, "--no-rebuild", "--quiet",
                                   "--destdir", dest], env=env, what="meson install")

    # What must be in the tree.
    expected = [
        os.path.join(libdir, "libdynstack.a"),
        os.path.join(libdir, "libdynstack.so"),
        os.path.join(libdir, "pkgconfig", "dynstack.pc"),
        os.path.join(bindir, "dynstack-sim"),
        os.path.join(mandir, "man3", "dynstack.3"),
    ]
    # Every header under include/ and every docs/*.md, as they are now in the source tree,
    # installed unchanged.
    copies = []
    source_include = os.path.join(args.sourcedir, "include")
    for root, _, files in os.walk(source_include):
        for name in files:
            src = os.path.join(root, name)
            copies.append((src, os.path.join(includedir, os.path.relpath(src, source_include))))
    docs = glob.glob(os.path.join(args.sourcedir, "docs", "*.md"))
    copies += [(d, os.path.join(docdir, os.path.basename(d))) for d in docs]
    if not docs or not any(c[0].endswith("dynstack.h") for c in copies):
        raise Failure(f"no include/dynstack.h or docs/*.md in {args.sourcedir}")
    expected += [c[1] for c in copies]
    missing = [f for f in expected if not os.path.exists(f)]
    for f in missing:
        print(f"not installed: {os.path.relpath(f, dest)}")
    if missing:
        raise Failure(f"{len(missing)} files missing from the installed tree (meson.build lists "
                      "include/dynstack/ and docs/ when the build is configured: a file added "
                      "since needs `meson setup --reconfigure`)")
    for src, inst in copies:
        with open(src, "rb") as a, open(inst, "rb") as b:
            if a.read() != b.read():
                raise Failure(f"installed {os.path.relpath(inst, dest)} differs from {src} "
                              "(edited while the test ran?)")
    if not os.access(os.path.join(bindir, "dynstack-sim"), os.X_OK):
        raise Failure("dynstack-sim is installed but not executable")
    with open(os.path.join(mandir, "man3", "dynstack.3"), encoding="utf-8") as f:
        man = f.read()
    if "@" in man.replace("\\@", ""):
        raise Failure("the installed man page still has an @PLACEHOLDER@")
    if os.path.join(prefix, args.datadir, "doc", "libdynstack") not in man:
        raise Failure("the man page does not name the installed docs directory")
    print(f"installed tree complete: {len(expected)} files checked")

    # pkg-config sees only this tree, and rewrites its paths into DESTDIR.
    pcdir = os.path.join(libdir, "pkgconfig")
    env = dict(os.environ, PKG_CONFIG_LIBDIR=pcdir, PKG_CONFIG_SYSROOT_DIR=dest)
    show = ("PKG_CONFIG_LIBDIR", "PKG_CONFIG_SYSROOT_DIR")
    for var in ("PKG_CONFIG_PATH", "LD_LIBRARY_PATH", "LIBRARY_PATH", "C_INCLUDE_PATH",
                "CPATH", "DYNSTACK_BACKEND", "DYNSTACK_STATS", "DYNSTACK_TRACE"):
        env.pop(var, None)
    pkg_config = shlex.split(os.environ.get("PKG_CONFIG", "pkg-config"))
    cflags = shlex.split(run(pkg_config + ["--cflags", "dynstack"], env=env, show_env=show))
    libs = shlex.split(run(pkg_config + ["--libs", "dynstack"], env=env, show_env=show))
    static_libs = shlex.split(run(pkg_config + ["--static", "--libs", "dynstack"], env=env,
                                  show_env=show))
    if f"-I{includedir}" not in cflags:
        raise Failure(f"pkg-config --cflags does not point at {includedir}")
    if f"-L{libdir}" not in libs or "-ldynstack" not in libs:
        raise Failure(f"pkg-config --libs does not give -L{libdir} -ldynstack")
    if "-pthread" not in static_libs:
        raise Failure("pkg-config --static --libs lacks -pthread (Libs.private)")

    cc = shlex.split(args.cc)
    hello = os.path.join(args.sourcedir, "examples", "hello.c")
    work = os.path.join(dest, "work")
    os.mkdir(work)

    # Shared: the program must load the installed libdynstack.so.0, not the build's.
    exe = os.path.join(work, "hello")
    run(cc + [hello, "-o", exe] + cflags + libs, env=env, what="cc (shared)")
    env_run = dict(env, LD_LIBRARY_PATH=libdir)
    where = [f for f in loaded_libraries(exe, env_run) if f[0].startswith("libdynstack.so")]
    if not where or len(where[0]) < 3 or not where[0][2].startswith(libdir + os.sep):
        raise Failure(f"hello does not load libdynstack.so from {libdir}: {where}")
    run([exe], env=env_run, what="hello (shared)", show_env=("LD_LIBRARY_PATH",))

    # Static: libdynstack.a by -Bstatic around the -ldynstack that pkg-config gives, the rest
    # (Libs.private) as pkg-config says; run without LD_LIBRARY_PATH.
    exe_static = os.path.join(work, "hello-static")
    static_link = []
    for flag in static_libs:
        static_link += (["-Wl,-Bstatic", flag, "-Wl,-Bdynamic"] if flag == "-ldynstack"
                        else [flag])
    run(cc + [hello, "-o", exe_static] + cflags + static_link, env=env, what="cc (static)")
    if any(f[0].startswith("libdynstack") for f in loaded_libraries(exe_static, env)):
        raise Failure("hello-static still needs libdynstack.so")
    run([exe_static], env=env, what="hello (static)")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("builddir")
    ap.add_argument("sourcedir")
    ap.add_argument("--meson", default=os.environ.get("MESON", "meson"))
    ap.add_argument("--cc", default=os.environ.get("CC", "cc"))
    for opt in ("prefix", "libdir", "includedir", "bindir", "mandir", "datadir"):
        ap.add_argument("--" + opt, required=True)
    args = ap.parse_args()

    for tool, what in ((os.environ.get("PKG_CONFIG", "pkg-config"), "pkg-config"),
                       (args.cc, "C compiler")):
        if not shutil.which(shlex.split(tool)[0]):
            print(f"SKIP: no {what} ({tool})")
            return SKIP
    if not shutil.which(shlex.split(args.meson)[0]):
        print(f"no meson ({args.meson}) to install with: set MESON")
        return 1

    # Private: meson test runs tests in parallel, and this one may run more than once at a time.
    dest = tempfile.mkdtemp(prefix="dynstack-install-")
    try:
        check(args, dest)
    except Failure as e:
        print(f"FAIL: {e} (installed tree kept in {dest})")
        return 1
    shutil.rmtree(dest)
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
