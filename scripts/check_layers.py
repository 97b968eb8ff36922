"""Layer rules of the workspace's Rust code (run by scripts/check-layers.sh, which adds the
dependency-tree check of the CLI and the self-test).

1. Wire types stay at the edge: in a service (`services/*/src/**`) only `api.rs`, `api/`,
   `convert.rs` and `convert/` may name the `sakuga_proto` crate. Domain modules talk in
   plain Rust types; `api` converts. The integration tests (`services/*/tests/`) are exempt.
2. No file past 600 lines: every Rust file under `crates/` and `services/`, except those in
   `tests/`, `benches/` and `fuzz/` folders, has at most MAX_LINES lines.
3. No import cycle between the modules of a crate: module A naming an item of module B
   (`use crate::b::X`, `super::b::f()`, `b::X` for a child module, ...) is an edge A -> B;
   a cycle of such edges (A -> B -> ... -> A) fails. A `pub use` is a re-export, not a
   use: it adds no edge, and a path through it counts as an edge to the module that
   defines the item (so a parent re-exporting its children and a child using a sibling
   through the parent is not a cycle). `#[cfg(test)]` code and test modules are left out.

Usage: check_layers.py [ROOT]   (default: the repository root). Prints one line per
problem, naming the file, and exits 1 if there is any.
"""

import os
import re
import sys

MAX_LINES = 600

# Module dependencies left out of the cycle check, each as (from file, to file) with a
# comment giving the reason; none today. The check warns when an entry matches no edge.
EDGES_ALLOWED: set[tuple[str, str]] = set()

PROTO_CRATE = "sakuga_proto"
WIRE_MODULES = ("api.rs", "convert.rs")
WIRE_DIRS = ("api/", "convert/")
SKIPPED_DIRS = {"tests", "benches", "fuzz", "target"}


# ---------------------------------------------------------------------------- lexing


class Tok:
    __slots__ = ("kind", "text", "line")

    def __init__(self, kind, text, line):
        self.kind = kind  # "ident", "punct", "lit", "lifetime"
        self.text = text
        self.line = line

    def __repr__(self):
        return f"{self.kind}:{self.text}@{self.line}"


IDENT_START = re.compile(r"[A-Za-z_]")
IDENT = re.compile(r"[A-Za-z0-9_]*")


def lex(src):
    """Rust tokens without comments; string and char literals become one `lit` token, so
    neither a comment nor a string can look like a path."""
    toks = []
    i, n, line = 0, len(src), 1

    def skip_string(j):
        # j at the opening quote of a normal string; returns the index after the closing one.
        j += 1
        while j < n and src[j] != '"':
            j += 2 if src[j] == "\\" else 1
        return j + 1

    def skip_raw(j):
        # j at the first '#' or '"' after the r prefix.
        hashes = 0
        while src[j] == "#":
            hashes += 1
            j += 1
        end = '"' + "#" * hashes
        k = src.find(end, j + 1)
        return n if k < 0 else k + len(end)

    while i < n:
        c = src[i]
        if c == "\n":
            line += 1
            i += 1
        elif c.isspace():
            i += 1
        elif src.startswith("//", i):
            k = src.find("\n", i)
            i = n if k < 0 else k
        elif src.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if src.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif src.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    line += src[i] == "\n"
                    i += 1
        elif IDENT_START.match(c):
            m = IDENT.match(src, i + 1)
            word = src[i : m.end()]
            j = m.end()
            if word in ("r", "br", "cr") and j < n and src[j] in '#"':
                if src[j] == "#" and j + 1 < n and IDENT_START.match(src[j + 1]):
                    # raw identifier r#name
                    m = IDENT.match(src, j + 2)
                    toks.append(Tok("ident", src[j + 1 : m.end()], line))
                    i = m.end()
                    continue
                end = skip_raw(j)
                line += src.count("\n", i, end)
                toks.append(Tok("lit", "", line))
                i = end
            elif word in ("b", "c") and j < n and src[j] == '"':
                end = skip_string(j)
                line += src.count("\n", i, end)
                toks.append(Tok("lit", "", line))
                i = end
            elif word == "b" and j < n and src[j] == "'":
                k = j + 1
                while k < n and src[k] != "'":
                    k += 2 if src[k] == "\\" else 1
                toks.append(Tok("lit", "", line))
                i = k + 1
            else:
                toks.append(Tok("ident", word, line))
                i = j
        elif c == '"':
            end = skip_string(i)
            line += src.count("\n", i, end)
            toks.append(Tok("lit", "", line))
            i = end
        elif c == "'":
            if i + 1 < n and src[i + 1] == "\\":
                k = i + 2
                while k < n and src[k] != "'":
                    k += 1
                toks.append(Tok("lit", "", line))
                i = k + 1
            elif i + 2 < n and src[i + 2] == "'":
                toks.append(Tok("lit", "", line))
                i += 3
            else:
                m = IDENT.match(src, i + 1)
                toks.append(Tok("lifetime", src[i : m.end()], line))
                i = m.end()
        elif c.isdigit():
            m = re.compile(r"[0-9A-Za-z_]*").match(src, i)
            toks.append(Tok("lit", "", line))
            i = m.end()
        elif src.startswith("::", i):
            toks.append(Tok("punct", "::", line))
            i += 2
        else:
            toks.append(Tok("punct", c, line))
            i += 1
    return toks


def matching(toks, i):
    """Index of the bracket closing the one at toks[i]."""
    pairs = {"{": "}", "(": ")", "[": "]"}
    open_, close = toks[i].text, pairs[toks[i].text]
    depth = 0
    for j in range(i, len(toks)):
        if toks[j].kind == "punct":
            if toks[j].text == open_:
                depth += 1
            elif toks[j].text == close:
                depth -= 1
                if depth == 0:
                    return j
    return len(toks) - 1


def is_cfg_test(toks, i):
    """toks[i] is '#': is it exactly `#[cfg(test)]`?"""
    texts = [t.text for t in toks[i : i + 7]]
    return texts == ["#", "[", "cfg", "(", "test", ")", "]"]


def item_end(toks, i):
    """End (inclusive) of the item starting at toks[i] (after its attributes): the `;` or
    the closing brace of its body at depth 0 (for a `use`, always the `;`)."""
    j = i
    while j < len(toks) and toks[j].text in ("pub", "(", "crate", "super", "self", ")", "in"):
        j += 1
    if j < len(toks) and toks[j].text == "use":
        while j < len(toks) and toks[j].text != ";":
            j = matching(toks, j) + 1 if toks[j].text in ("{", "(", "[") else j + 1
        return min(j, len(toks) - 1)
    j = i
    while j < len(toks):
        t = toks[j]
        if t.kind == "punct" and t.text in "([":
            j = matching(toks, j) + 1
            continue
        if t.kind == "punct" and t.text == ";":
            return j
        if t.kind == "punct" and t.text == "{":
            return matching(toks, j)
        j += 1
    return len(toks) - 1


def strip_tests(toks):
    """The tokens without `#[cfg(test)]` items; and the names of `#[cfg(test)] mod x;`."""
    out, test_mods = [], set()
    i = 0
    while i < len(toks):
        if toks[i].text == "#" and is_cfg_test(toks, i):
            j = i + 7
            # further attributes of the same item
            while j < len(toks) and toks[j].text == "#" and j + 1 < len(toks) and toks[j + 1].text == "[":
                j = matching(toks, j + 1) + 1
            k = j
            while k < len(toks) and toks[k].text in ("pub", "(", "crate", "super", "self", ")", "in"):
                k += 1
            if k + 2 < len(toks) and toks[k].text == "mod" and toks[k + 2].text == ";":
                test_mods.add(toks[k + 1].text)
            i = item_end(toks, j) + 1
            continue
        out.append(toks[i])
        i += 1
    return out, test_mods


# ---------------------------------------------------------------------------- modules


class Module:
    """One module: a file, or an inline `mod x { ... }` inside one."""

    def __init__(self, path, file):
        self.path = path  # tuple of names from the crate root
        self.file = file  # repository-relative file
        self.children = set()
        self.defined = set()  # item names defined here
        self.bindings = {}  # name -> (module path it was written in, segments)
        self.globs = []  # (module path written in, segments) of `use x::*`
        self.uses = []  # (module path written in, segments, line): non-pub use and paths


def parse_use_tree(toks, i, prefix, out):
    """Parses a use tree at toks[i]; appends (segments, bound name or None, is_glob).
    Returns the index after the tree."""
    segs = list(prefix)
    while i < len(toks):
        t = toks[i]
        if t.text == "::":
            i += 1
            continue
        if t.text == "{":
            end = matching(toks, i)
            j = i + 1
            while j < end:
                j = parse_use_tree(toks, j, segs, out)
                if j < end and toks[j].text == ",":
                    j += 1
            return end + 1
        if t.text == "*":
            out.append((segs, None, True))
            return i + 1
        if t.kind == "ident":
            if t.text == "self" and segs:
                # `a::b::{self}` binds b
                i += 1
                name = segs[-1]
                if i + 1 < len(toks) and toks[i].text == "as":
                    name = toks[i + 1].text
                    i += 2
                out.append((segs, None if name == "_" else name, False))
                return i
            segs = segs + [t.text]
            i += 1
            if i < len(toks) and toks[i].text == "as":
                alias = toks[i + 1].text
                out.append((segs, None if alias == "_" else alias, False))
                return i + 2
            if i >= len(toks) or toks[i].text != "::":
                out.append((segs, segs[-1], False))
                return i
            continue
        return i + 1
    return i


ITEM_KEYWORDS = {"fn", "struct", "enum", "trait", "type", "const", "static", "union", "mod"}


def scan_file(crate, module, toks):
    """Walks one file's tokens: inline modules, definitions, `use` declarations and paths."""
    stack = [(module, -1)]  # (Module, brace depth at which it closes)
    depth = 0
    i = 0
    while i < len(toks):
        t = toks[i]
        cur = stack[-1][0]
        if t.kind == "punct" and t.text == "{":
            depth += 1
        elif t.kind == "punct" and t.text == "}":
            if len(stack) > 1 and depth == stack[-1][1] + 1:
                stack.pop()
            depth -= 1
        elif t.kind == "ident" and t.text in ITEM_KEYWORDS and i + 1 < len(toks) and toks[i + 1].kind == "ident":
            prev = toks[i - 1].text if i else ""
            name = toks[i + 1].text
            if prev not in ("::", "."):
                if depth == stack[-1][1] + 1 or (len(stack) == 1 and depth == 0):
                    cur.defined.add(name)
                if t.text == "mod" and i + 2 < len(toks) and toks[i + 2].text == "{":
                    path = cur.path + (name,)
                    inline = crate.modules.get(path) or Module(path, cur.file)
                    crate.modules[path] = inline
                    cur.children.add(name)
                    stack.append((inline, depth))
                    depth += 1
                    i += 3
                    continue
        elif t.kind == "ident" and t.text == "macro_rules" and i + 2 < len(toks) and toks[i + 1].text == "!":
            cur.defined.add(toks[i + 2].text)
        elif t.kind == "ident" and t.text == "use" and (i == 0 or toks[i - 1].text != "::"):
            # visibility: `pub` or `pub(...)` right before
            j = i - 1
            if j >= 0 and toks[j].text == ")":
                while j >= 0 and toks[j].text != "(":
                    j -= 1
                j -= 1
            is_pub = j >= 0 and toks[j].text == "pub"
            trees = []
            k = i + 1
            if k < len(toks) and toks[k].text == "::":
                k += 1  # `use ::ext::X`: external
                end = item_end(toks, k)
                i = end + 1
                continue
            end = item_end(toks, k)
            parse_use_tree(toks[: end + 1], k, [], trees)
            for segs, name, glob in trees:
                if glob:
                    cur.globs.append((cur.path, segs))
                elif name:
                    cur.bindings[name] = (cur.path, segs)
                if not is_pub:
                    cur.uses.append((cur.path, segs, t.line))
            i = end + 1
            continue
        elif t.kind == "ident" and t.text in ("crate", "super", "self") or (
            t.kind == "ident" and i + 1 < len(toks) and toks[i + 1].text == "::" and t.text in cur.children
        ):
            prev = toks[i - 1] if i else None
            if i + 1 < len(toks) and toks[i + 1].text == "::" and not (
                prev and prev.text in ("::", "$", ".")
            ):
                segs = [t.text]
                k = i + 1
                while k + 1 < len(toks) and toks[k].text == "::" and toks[k + 1].kind == "ident":
                    segs.append(toks[k + 1].text)
                    k += 2
                cur.uses.append((cur.path, segs, t.line))
                i = k
                continue
        i += 1


class Crate:
    def __init__(self, name):
        self.name = name
        self.modules = {}  # path tuple -> Module

    def base(self, at, segs):
        """(module path, remaining segments) that `segs`, written in module `at`, starts
        from; None for a path outside the crate."""
        if not segs:
            return None
        first = segs[0]
        if first == "crate":
            return (), segs[1:]
        if first in ("super", "self"):
            path = list(at)
            rest = list(segs)
            while rest and rest[0] in ("super", "self"):
                if rest[0] == "super":
                    if not path:
                        return None
                    path.pop()
                rest.pop(0)
            return tuple(path), rest
        mod = self.modules.get(at)
        if mod and first in mod.children:
            return tuple(at), list(segs)
        if mod and first in mod.bindings:
            where, bound = mod.bindings[first]
            if bound and bound[0] != first:
                inner = self.base(where, bound)
                if inner:
                    p, r = inner
                    return p, r + list(segs[1:])
        return None

    def resolve(self, at, segs, seen=None):
        """The file defining what `segs` (written in module `at`) names, or None."""
        seen = seen or set()
        key = (at, tuple(segs))
        if key in seen:
            return None
        seen.add(key)
        based = self.base(at, segs)
        if based is None:
            return None
        path, rest = based
        for i, seg in enumerate(rest):
            nxt = path + (seg,)
            if nxt in self.modules:
                path = nxt
                continue
            mod = self.modules.get(path)
            if mod is None:
                return None
            if seg in mod.defined:
                return mod.file
            if seg in mod.bindings:
                where, bound = mod.bindings[seg]
                return self.resolve(where, list(bound) + rest[i + 1 :], seen) or mod.file
            for where, gsegs in mod.globs:
                target = self.resolve(where, list(gsegs) + [seg] + rest[i + 1 :], seen)
                if target is not None:
                    return target
            return mod.file
        mod = self.modules.get(path)
        return mod.file if mod else None


def child_file(root, parent_file, is_dir_owner, name):
    base = os.path.dirname(parent_file)
    if not is_dir_owner:
        base = os.path.join(base, os.path.splitext(os.path.basename(parent_file))[0])
    for cand in (os.path.join(base, name + ".rs"), os.path.join(base, name, "mod.rs")):
        if os.path.isfile(os.path.join(root, cand)):
            return cand
    return None


def load_crate(root, name, root_file):
    crate = Crate(name)
    queue = [((), root_file, True)]
    while queue:
        path, rel, dir_owner = queue.pop()
        with open(os.path.join(root, rel), encoding="utf-8") as f:
            toks, test_mods = strip_tests(lex(f.read()))
        mod = crate.modules.get(path) or Module(path, rel)
        mod.file = rel
        crate.modules[path] = mod
        # `mod x;` declarations (file modules)
        for i in range(len(toks) - 2):
            if toks[i].text == "mod" and toks[i + 1].kind == "ident" and toks[i + 2].text == ";":
                if i and toks[i - 1].text == "::":
                    continue
                child = toks[i + 1].text
                if child in test_mods:
                    continue
                f = child_file(root, rel, dir_owner, child)
                if f is None:
                    continue
                mod.children.add(child)
                queue.append((path + (child,), f, os.path.basename(f) == "mod.rs"))
        scan_file(crate, mod, toks)
    return crate


def crate_roots(root):
    """(crate name, root file) of every library and binary under crates/ and services/."""
    out = []
    for top in ("crates", "services"):
        d = os.path.join(root, top)
        if not os.path.isdir(d):
            continue
        for name in sorted(os.listdir(d)):
            src = os.path.join(top, name, "src")
            for f in ("lib.rs", "main.rs"):
                if os.path.isfile(os.path.join(root, src, f)):
                    out.append((f"{top}/{name} ({f})", os.path.join(src, f)))
            bins = os.path.join(root, src, "bin")
            if os.path.isdir(bins):
                for b in sorted(os.listdir(bins)):
                    if b.endswith(".rs"):
                        out.append((f"{top}/{name} (bin/{b})", os.path.join(src, "bin", b)))
    return out


def cycles(graph):
    """Strongly connected components with more than one node (Tarjan)."""
    index, low, on, stack, out = {}, {}, set(), [], []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
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
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def a_cycle(graph, comp):
    """One concrete cycle through the first module of a strongly connected component."""
    start = comp[0]
    members = set(comp)
    prev = {start: None}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph.get(v, ())):
                if w not in members:
                    continue
                if w == start:
                    path = [v]
                    while prev[path[-1]] is not None:
                        path.append(prev[path[-1]])
                    return list(reversed(path)) + [start]
                if w not in prev:
                    prev[w] = v
                    nxt.append(w)
        frontier = nxt
    return comp + [start]


# ---------------------------------------------------------------------------- checks


def rust_files(root):
    for top in ("crates", "services"):
        for dirpath, dirnames, filenames in os.walk(os.path.join(root, top)):
            dirnames[:] = sorted(d for d in dirnames if d not in SKIPPED_DIRS and not d.startswith("."))
            for f in sorted(filenames):
                if f.endswith(".rs"):
                    yield os.path.relpath(os.path.join(dirpath, f), root)


def main(root):
    problems, notes = [], []

    # 1. sakuga_proto only in api/convert of a service
    for rel in rust_files(root):
        parts = rel.split(os.sep)
        if parts[0] != "services" or len(parts) < 4 or parts[2] != "src":
            continue
        inside = "/".join(parts[3:])
        if inside in WIRE_MODULES or inside.startswith(WIRE_DIRS):
            continue
        with open(os.path.join(root, rel), encoding="utf-8") as f:
            toks = lex(f.read())
        lines = sorted({t.line for t in toks if t.kind == "ident" and t.text == PROTO_CRATE})
        if not lines:
            continue
        more = f" (also line {', '.join(map(str, lines[1:]))})" if len(lines) > 1 else ""
        problems.append(
            f"{rel}:{lines[0]}: names {PROTO_CRATE}{more}: only api.rs, api/ and convert.rs of a "
            "service may use the wire types; convert there and pass domain types"
        )

    # 2. file length
    for rel in rust_files(root):
        with open(os.path.join(root, rel), encoding="utf-8") as f:
            n = sum(1 for _ in f)
        if n > MAX_LINES:
            problems.append(f"{rel}: {n} lines, more than {MAX_LINES}: split it into modules")

    # 3. module cycles, per crate
    edges_seen = set()
    for name, root_file in crate_roots(root):
        crate = load_crate(root, name, root_file)
        graph, where = {}, {}
        for mod in crate.modules.values():
            for at, segs, line in mod.uses:
                target = crate.resolve(at, segs)
                if target is None or target == mod.file:
                    continue
                if (mod.file, target) in EDGES_ALLOWED:
                    edges_seen.add((mod.file, target))
                    continue
                graph.setdefault(mod.file, set()).add(target)
                where.setdefault((mod.file, target), (line, "::".join(segs)))
        for comp in cycles(graph):
            path = a_cycle(graph, comp)
            steps = []
            for a, b in zip(path, path[1:]):
                line, text = where[(a, b)]
                steps.append(f"{a}:{line} uses {text}")
            problems.append(
                f"{path[0]}: import cycle between modules of {name}: "
                + " -> ".join(path)
                + " ("
                + "; ".join(steps)
                + "): move what both need into a module of its own, or invert one dependency"
            )
    for a, b in sorted(EDGES_ALLOWED - edges_seen):
        if os.path.exists(os.path.join(root, a)):
            notes.append(f"the allowed dependency {a} -> {b} is gone: delete it from EDGES_ALLOWED")

    for n in notes:
        print(f"check-layers: note: {n}")
    for p in problems:
        print(f"check-layers: {p}")
    return 1 if problems else 0


if __name__ == "__main__":
    default = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    sys.exit(main(os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else default)))
