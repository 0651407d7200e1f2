#!/usr/bin/env python3
"""Structure checks for ferrite's source tree (issue #13), run by .ci/run:

1. No module cycle: inside every directory of src/ (llm/, finetune/, ...)
   the sibling modules, and across the top-level stages (board, console,
   llm, assistant, ...), depend on each other without a cycle. A module
   depends on another when it names it: `super::x`, `crate::x::y`, an item
   the parent re-exports from it (`super::Engine` is `llm::engine`), or an
   `impl` block for a type defined there.
2. No `println!`/`print!` outside src/cli/ and src/main.rs (stdout belongs
   to the user: library code reports through return values and tracing).
3. src/main.rs is at most 60 lines.
4. No function longer than 80 lines outside tests, but for the exceptions
   listed in EXCEPTIONS with their reason.

Prints what it found; exits 1 on a violation.
"""
import os
import re
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")
MAX_FN = 80
# function -> why it is longer than MAX_FN lines
EXCEPTIONS = {}


def rust_files():
    for dirpath, _, files in os.walk(ROOT):
        for f in files:
            if f.endswith(".rs"):
                yield os.path.join(dirpath, f)


def module_of(path):
    rel = os.path.relpath(path, ROOT)[:-3].split(os.sep)
    if rel[-1] in ("mod", "lib", "main"):
        rel = rel[:-1]
    return tuple(rel)


LITERALS = re.compile(
    r'r(#*)".*?"\1'            # raw strings
    r'|b?"(?:\\.|[^"\\])*"'  # strings, byte strings
    r"|b?'(?:\\.|[^'\\])'"   # char and byte literals
    r"|//[^\n]*",             # line comments
    re.S,
)


def blank(m):
    """A literal or comment as spaces, its newlines kept."""
    return re.sub(r"[^\n]", " ", m.group(0))


def strip_tests(text):
    """Drop comments, string and char literals (braces in them are not
    code) and `#[cfg(test)] mod tests { ... }` blocks."""
    text = LITERALS.sub(blank, text)
    out, i = [], 0
    for m in re.finditer(r"#\[cfg\(test\)\]\s*mod\s+\w+\s*\{", text):
        if m.start() < i:
            continue
        out.append(text[i:m.start()])
        depth, j = 1, m.end()
        while depth and j < len(text):
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            j += 1
        i = j
    out.append(text[i:])
    return "".join(out)


def reexports(mod, text):
    """Items a module re-exports: name -> submodule it comes from."""
    items = {}
    for m in re.finditer(r"pub(?:\([^)]*\))?\s+use\s+(?:self::)?(\w+)::(\{[^}]*\}|\w+)", text):
        sub, names = m.group(1), m.group(2).strip("{}")
        for n in names.split(","):
            n = n.strip().split(" as ")[-1].strip()
            if n:
                items[n] = mod + (sub,)
    return items


def main():
    texts = {}
    for f in rust_files():
        with open(f) as fh:
            texts[module_of(f)] = (f, strip_tests(fh.read()))
    modules = set(texts)
    exports = {}
    for mod, (_, t) in texts.items():
        exports.update({mod + (k,): v for k, v in reexports(mod, t).items()})
    # items defined in a module (types), for `impl X` blocks
    defined = {}
    for mod, (_, t) in texts.items():
        for m in re.finditer(r"(?:struct|enum|trait|type)\s+(\w+)", t):
            defined.setdefault(m.group(1), set()).add(mod)

    def resolve(base, parts):
        """The module a path names (longest existing prefix, then re-exports)."""
        for k in range(len(parts), 0, -1):
            cand = base + tuple(parts[:k])
            if cand in modules:
                rest = parts[k:]
                if rest and cand + (rest[0],) in exports:
                    return exports[cand + (rest[0],)]
                return cand
            if k == len(parts) or True:
                key = base + tuple(parts[:k])
                if key in exports:
                    return exports[key]
        return None

    deps = {m: set() for m in modules}
    for mod, (_, t) in texts.items():
        parent = mod[:-1]
        for m in re.finditer(r"\b(super|crate)((?:::\w+)+)|\b(super|crate)::\{([^}]*)\}", t):
            if m.group(1):
                root, parts = m.group(1), m.group(2).strip(":").split("::")
                paths = [parts]
            else:
                root = m.group(3)
                paths = [p.strip().split("::") for p in m.group(4).split(",") if p.strip()]
            base = parent if root == "super" else ()
            for parts in paths:
                parts = [p for p in parts if p and p != "self"]
                if not parts:
                    continue
                target = resolve(base, parts)
                if target and target != mod and target != ():
                    deps[mod].add(target)
        for m in re.finditer(r"impl(?:<[^>]*>)?\s+(?:[\w:]+\s+for\s+)?(\w+)", t):
            for owner in defined.get(m.group(1), ()):
                if owner != mod and owner[:-1] == mod[:-1] and len(owner) == len(mod):
                    deps[mod].add(owner)
    problems = []
    # sibling graphs per directory, and the top-level stage graph
    groups = {}
    for m in modules:
        if len(m) >= 1:
            groups.setdefault(m[:-1], set()).add(m)
    for parent, sibs in sorted(groups.items()):
        edges = {s: set() for s in sibs}
        for s in sibs:
            for d in deps[s]:
                # a dependency on anything inside a sibling is on the sibling
                for t in sibs:
                    if d[: len(t)] == t and t != s:
                        edges[s].add(t)
        cycle = find_cycle(edges)
        name = "::".join(parent) or "crate (top-level stages)"
        if cycle:
            problems.append(f"module cycle in {name}: " + " -> ".join("::".join(c) for c in cycle))
        else:
            print(f"no cycle among the {len(sibs)} modules of {name}")
    # println
    for mod, (f, t) in texts.items():
        rel = os.path.relpath(f, ROOT)
        if rel.startswith("cli" + os.sep) or rel == "main.rs":
            continue
        if re.search(r"\bprint(ln)?!\(", t):
            problems.append(f"{rel}: println!/print! outside src/cli/")
    main_lines = sum(1 for _ in open(os.path.join(ROOT, "main.rs")))
    print(f"src/main.rs: {main_lines} lines")
    if main_lines > 60:
        problems.append(f"src/main.rs has {main_lines} lines (at most 60)")
    long = []
    for mod, (f, t) in texts.items():
        for name, n in functions(t):
            if n > MAX_FN:
                key = "::".join(mod + (name,))
                if key in EXCEPTIONS:
                    print(f"long function {key} ({n} lines): {EXCEPTIONS[key]}")
                else:
                    long.append(f"{key}: {n} lines")
    problems += [f"function over {MAX_FN} lines: {l}" for l in sorted(long)]
    for p in problems:
        print("FAIL:", p)
    print("structure:", "ok" if not problems else f"{len(problems)} problem(s)")
    return 1 if problems else 0


def functions(text):
    """(name, lines) of every `fn` body."""
    for m in re.finditer(r"\bfn\s+(\w+)[^;{]*\{", text):
        depth, j = 1, m.end()
        while depth and j < len(text):
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            j += 1
        yield m.group(1), text[m.start():j].count("\n") + 1


def find_cycle(edges):
    state = {}
    stack = []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for d in sorted(edges.get(n, ())):
            if state.get(d) == 1:
                return stack[stack.index(d):] + [d]
            if d not in state:
                c = visit(d)
                if c:
                    return c
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(edges):
        if n not in state:
            c = visit(n)
            if c:
                return c
    return None


if __name__ == "__main__":
    sys.exit(main())
