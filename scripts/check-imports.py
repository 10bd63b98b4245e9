#!/usr/bin/env python3
"""File-level import graph of the pbsfs library and binary (src/): reports import cycles
between files and imports that break the layering rule of ARCHITECTURE.md.

Usage: scripts/check-imports.py [--graph] [--tests]
  --graph  also print every file's dependencies
  --tests  also count imports made only by `#[cfg(test)]` modules

A file depends on another when it names an item of it (`use crate::a::b::X`, `super::b::X`,
or an inline `crate::a::b::X` path). A name re-exported by a `mod.rs` (`pub use b::X`) counts
as a dependency on the file that defines it, and a `mod.rs` does not depend on its children
by declaring them, so only real uses form edges. Exit status 1 when a cycle or a layering
violation is found.
"""
import os
import re
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")

# Layers, lowest first; a layer may import only from layers listed before it (and itself).
# `alloc` imports nothing of ours; `repository` needs only `store::names` (ARCHITECTURE.md).
# The mount/ crate is not scanned: Cargo already keeps it from importing pbsfs.

# Upward imports listed in ARCHITECTURE.md as known deviations: reported, not failed.
KNOWN = {}
LAYERS = ["format", "alloc", "pxar", "store", "repository", "remote", "backup", "agent", "snapfs", "cli"]


def module_files():
    """Module path (tuple) -> file path, for every file under src/."""
    mods = {}
    for dirpath, _, files in os.walk(ROOT):
        for name in files:
            if not name.endswith(".rs"):
                continue
            rel = os.path.relpath(os.path.join(dirpath, name), ROOT)
            parts = rel[:-3].split(os.sep)
            if parts[-1] == "mod":
                parts = parts[:-1]
            if parts in (["lib"], ["main"]):
                parts = []
                key = ("<main>",) if name == "main.rs" else ()
            else:
                key = tuple(parts)
            mods[key] = rel
    return mods


def strip_comments_and_strings(text):
    """The code without comments and with empty string and char literals (one pass, so
    that `//` inside a string or a quote inside a comment does not confuse it)."""
    out, i, n = [], 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            i = text.find("\n", i)
            i = n if i < 0 else i
        elif text.startswith("/*", i):
            depth, i = 1, i + 2
            while depth and i < n:
                if text.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif text.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
        elif c == "r" and re.match(r'r#*"', text[i:i + 300]) and not (i and (text[i - 1].isalnum() or text[i - 1] == "_")):
            hashes = re.match(r'r(#*)"', text[i:]).group(1)
            end = text.find('"' + hashes, i + 2 + len(hashes))
            out.append('""')
            i = n if end < 0 else end + 1 + len(hashes)
        elif c == '"':
            i += 1
            while i < n and text[i] != '"':
                i += 2 if text[i] == "\\" else 1
            out.append('""')
            i += 1
        elif c == "'" and re.match(r"'(\\.[^']*|[^\\'])'", text[i:i + 12]):
            m = re.match(r"'(\\.[^']*|[^\\'])'", text[i:i + 12])
            out.append("' '")
            i += m.end()
        else:
            out.append(c)
            i += 1
    return "".join(out)


def split_tests(text):
    """(code outside #[cfg(test)] modules, [test module bodies])."""
    tests = []
    out = []
    pos = 0
    for m in re.finditer(r"#\[cfg\(test\)\]\s*(?:pub(?:\([a-z]+\))?\s+)?mod\s+\w+\s*\{", text):
        if m.start() < pos:
            continue
        depth, i = 1, m.end()
        while depth and i < len(text):
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        out.append(text[pos:m.start()])
        tests.append(text[m.end():i])
        pos = i
    out.append(text[pos:])
    return "".join(out), tests


def expand_use_tree(tree):
    """'a::{b::C, d}' -> ['a::b::C', 'a::d']."""
    tree = re.sub(r"\s+as\s+\w+", "", tree)
    tree = re.sub(r"\s+", "", tree)
    if "{" not in tree:
        return [tree]
    i = tree.index("{")
    prefix, inner = tree[:i], tree[i + 1:tree.rindex("}")]
    parts, depth, cur = [], 0, ""
    for ch in inner:
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
            continue
        depth += {"{": 1, "}": -1}.get(ch, 0)
        cur += ch
    parts.append(cur)
    return [p2 for p in parts if p for p2 in expand_use_tree(prefix + p)]


def paths_in(code):
    paths = []
    for m in re.finditer(r"\buse\s+([^;]+);", code):
        for p in expand_use_tree(m.group(1)):
            paths.append(p)
    for m in re.finditer(r"(?<![\w:])(\$?crate|pbsfs|super|self)((?:::\w+)+)", code):
        paths.append(m.group(1) + m.group(2))
    return paths


def absolute(path, base, children):
    segs = [s for s in path.split("::") if s]
    if segs and segs[-1] in ("*", "self"):
        segs = segs[:-1]
    if not segs:
        return None
    if segs[0] in ("crate", "$crate", "pbsfs"):
        return tuple(segs[1:])
    cur = list(base)
    if segs[0] == "self":
        segs = segs[1:]
    elif segs[0] == "super":
        while segs and segs[0] == "super":
            cur = cur[:-1]
            segs = segs[1:]
    elif segs[0] in children.get(tuple(base), ()):
        pass
    else:
        return None  # an external crate or a local name
    return tuple(cur + segs)


def main():
    show_graph = "--graph" in sys.argv
    with_tests = "--tests" in sys.argv
    mods = module_files()
    children = {}
    for key in mods:
        if key and key != ("<main>",):
            children.setdefault(key[:-1], set()).add(key[-1])
    children[("<main>",)] = {"cli"}
    codes = {}
    reexports = {}  # (dir module, name) -> child module
    for key, rel in mods.items():
        text = strip_comments_and_strings(open(os.path.join(ROOT, rel)).read())
        code, tests = split_tests(text)
        codes[key] = (code, tests)
        for m in re.finditer(r"\bpub\s+use\s+([^;]+);", code):
            for p in expand_use_tree(m.group(1)):
                segs = p.split("::")
                if segs[0] in children.get(key, ()):
                    reexports[(key, segs[-1])] = key + (segs[0],)

    def resolve(full):
        for n in range(len(full), -1, -1):
            prefix = full[:n]
            if prefix in mods:
                nxt = full[n] if n < len(full) else None
                while nxt is not None and (prefix, nxt) in reexports:
                    prefix = reexports[(prefix, nxt)]
                    nxt = None
                return prefix
        return None

    edges = {}
    for key, (code, tests) in codes.items():
        base = ["cli"] if key == ("<main>",) else list(key)
        deps = set()
        # A `pub use child::X` only re-exports (resolved above); it is a dependency only
        # when the file itself uses X.
        own = [n for (m, n), _ in reexports.items() if m == key]
        code = re.sub(r"\bpub\s+use\s+(\w+)::[^;]*;",
                      lambda m: "" if m.group(1) in children.get(key, ()) else m.group(0), code)
        for n in own:
            if re.search(rf"\b{re.escape(n)}\b", code):
                deps.add(reexports[(key, n)])
        sections = [(code, base)] + ([(t, base + ["tests"]) for t in tests] if with_tests else [])
        for section, sbase in sections:
            for p in paths_in(section):
                if key == ("<main>",) and p.startswith("cli"):
                    full = tuple(p.split("::"))
                else:
                    full = absolute(p, sbase if key != ("<main>",) else [], children)
                if full is None:
                    continue
                target = resolve(full)
                if target is not None and target != key and target != ():
                    deps.add(target)
        edges[key] = deps

    name = lambda k: "::".join(k) or "lib"
    if show_graph:
        for key in sorted(edges):
            print(f"{name(key)} -> {', '.join(sorted(name(d) for d in edges[key]))}")

    # Cycles: strongly connected components (Tarjan) with more than one file.
    index, low, stack, on, sccs, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                sccs.append(comp)

    sys.setrecursionlimit(10000)
    for v in list(edges):
        if v not in index:
            visit(v)
    bad = 0
    for comp in sccs:
        bad += 1
        print("cycle:", " <-> ".join(sorted(name(k) for k in comp)))
        for a in sorted(comp):
            for b in sorted(edges[a] & set(comp)):
                print(f"    {name(a)} -> {name(b)}")

    rank = {layer: i for i, layer in enumerate(LAYERS)}
    for key, deps in sorted(edges.items()):
        if key == ("<main>",):
            continue
        for d in sorted(deps):
            if d == ("<main>",) or not key or not d:
                continue
            if rank.get(d[0], -1) > rank.get(key[0], len(LAYERS)):
                known = KNOWN.get((name(key), name(d)))
                if known:
                    print(f"known deviation: {name(key)} -> {name(d)}: {known}")
                    continue
                bad += 1
                print(f"layering: {name(key)} -> {name(d)}")
    if not bad:
        print("no import cycles, no layering violations")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
