#!/usr/bin/env python3
"""The shared library exports exactly the functions include/dynstack.h declares DYNSTACK_API.

Usage: check_exports.py HEADER LIBRARY [--map VERSION_SCRIPT]

The public list comes from the header (every `DYNSTACK_API <type> <name>(`), never from a list
kept here, so a new public function needs no edit. The exports come from `nm -D --defined-only`
(NM in the environment overrides nm). With --map (the build linked with that version script),
every export must carry one of its version nodes, and the nodes' own symbols are not exports.
Exit 0 when the two sets match, 1 with the difference both ways when they do not, 77 (skip)
without nm.
"""
import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys

# Words that may precede a '(' in a declaration without being its name.
NOT_NAMES = {
    "__attribute__", "__declspec", "__typeof__", "typeof", "const", "volatile", "restrict",
    "__restrict", "signed", "unsigned", "void", "char", "short", "int", "long", "float",
    "double", "struct", "union", "enum", "_Bool", "_Noreturn", "static", "extern", "inline",
}


def strip_comments_and_directives(text):
    """The header's C declarations: comments blanked, preprocessor lines (and their
    backslash continuations, e.g. the counter X-macro) dropped."""
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    text = re.sub(r"//[^\n]*", " ", text)
    out, in_directive = [], False
    for line in text.split("\n"):
        if in_directive or line.lstrip().startswith("#"):
            in_directive = line.rstrip().endswith("\\")
            continue
        out.append(line)
    return "\n".join(out)


def public_names(header):
    """Names declared DYNSTACK_API: functions (however the declaration is split over lines,
    pointer results included) and, should there ever be any, variables."""
    with open(header, encoding="utf-8") as f:
        code = strip_comments_and_directives(f.read())
    names, bad = set(), []
    for m in re.finditer(r"\bDYNSTACK_API\b([^;]*);", code):
        decl = " ".join(m.group(1).split())
        name = None
        for ident in re.finditer(r"\b([A-Za-z_]\w*)\s*\(", decl):
            if ident.group(1) not in NOT_NAMES:
                name = ident.group(1)
                break
        if name is None and "(" not in decl:  # a variable: its name ends the declarator
            var = re.search(r"\b([A-Za-z_]\w*)\s*(\[[^\]]*\]\s*)*(=.*)?$", decl)
            name = var.group(1) if var else None
        if name is None:
            bad.append(decl)
        else:
            names.add(name)
    return names, bad


def version_nodes(path):
    with open(path, encoding="utf-8") as f:
        text = re.sub(r"/\*.*?\*/", " ", f.read(), flags=re.S)
    text = re.sub(r"#[^\n]*", " ", text)
    return set(re.findall(r"([A-Za-z_][\w.]*)\s*\{", text))


def exported(nm, library):
    """{name: version or None} of the defined dynamic symbols, plus the absolute ones."""
    out = subprocess.run(shlex.split(nm) + ["-D", "--defined-only", library],
                         check=True, capture_output=True, text=True).stdout
    symbols, absolute = {}, set()
    for line in out.splitlines():
        fields = line.split()
        if len(fields) < 2:
            continue
        kind, sym = fields[-2], fields[-1]
        name, _, version = sym.partition("@")
        version = version.lstrip("@") or None
        if kind == "A":
            absolute.add(name)
        symbols[name] = version
    return symbols, absolute


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("header")
    ap.add_argument("library")
    ap.add_argument("--map", help="the version script the library was linked with")
    args = ap.parse_args()

    nm = os.environ.get("NM", "nm")
    if not shutil.which(shlex.split(nm)[0]):
        print(f"SKIP: no {nm} to list the exports")
        return 77

    want, unparsed = public_names(args.header)
    if unparsed:
        for decl in unparsed:
            print(f"{args.header}: cannot find the name in: DYNSTACK_API {decl};")
        return 1
    if not want:
        print(f"{args.header}: no DYNSTACK_API declaration found")
        return 1

    have, absolute = exported(nm, args.library)
    nodes = version_nodes(args.map) if args.map else set()
    for node in nodes & absolute:  # the version node's own symbol, e.g. DYNSTACK_0
        del have[node]

    missing = sorted(want - have.keys())
    extra = sorted(have.keys() - want)
    unversioned = []
    if nodes and any(v for v in have.values()):  # an nm that shows versions (binutils >= 2.35)
        unversioned = sorted(n for n in want & have.keys() if have[n] not in nodes)

    print(f"{len(want)} functions declared DYNSTACK_API in {args.header}; "
          f"{len(have)} symbols exported by {args.library}")
    for name in missing:
        print(f"declared DYNSTACK_API but not exported: {name}")
    for name in extra:
        print(f"exported but not declared DYNSTACK_API: {name}")
    for name in unversioned:
        print(f"exported without a version node of {args.map}: {name}@{have[name]}")
    return 1 if missing or extra or unversioned else 0


if __name__ == "__main__":
    sys.exit(main())
