#!/usr/bin/env python3
"""check-style.py - what doc/CODE_STYLE.md says a machine can check.

Reads the C sources of common/, queue/, server/ and tests/ and prints TAP:
one test per rule, each failure listed as file:line.  Rules:
  width     no line wider than 100 columns (a tab counts 8), unless what is
            past column 100 is inside a string literal: as in the Linux
            kernel's style, a message is not split, so that grep finds it
  blanks    no trailing whitespace; every file ends with a newline
  null      pointers are tested as booleans: no "== NULL" / "!= NULL"
  lifecycle no public header declares foo_new/foo_delete, and no foo_stop or
            foo_close has a foo_free twin (stop and close free)

Usage: check-style.py [SRCDIR]   (default: $TESTS_SRCDIR/.., else .)
"""
import os
import re
import sys

WIDTH = 100
DIRS = ["common", "queue", "server", "tests"]


def sources(top):
    for d in DIRS:
        for root, dirs, files in os.walk(os.path.join(top, d)):
            dirs[:] = [x for x in dirs if x not in ("node_modules", "corpus", ".deps")]
            for f in sorted(files):
                if f.endswith((".c", ".h")) and f != "schema_sql.c":
                    yield os.path.join(root, f)


def strip_comments_and_strings(text):
    """The text with comments and string literals blanked (lines kept)."""
    def blank(m):
        return re.sub(r"[^\n]", " ", m.group(0))
    return re.sub(r'/\*.*?\*/|//[^\n]*|"(?:\\.|[^"\\\n])*"|\'(?:\\.|[^\'\\\n])*\'',
                  blank, text, flags=re.S)


def strip_strings_only(text):
    """The text with string literals' contents (not their quotes) as NULs."""
    return re.sub(r'/\*.*?\*/|//[^\n]*|"(?:\\.|[^"\\\n])*"',
                  lambda m: m.group(0) if not m.group(0).startswith('"') else
                  '"' + "\0" * (len(m.group(0)) - 2) + '"', text, flags=re.S)


def past_limit_in_string(line, masked):
    """True if every character past column WIDTH that is not punctuation
    closing the statement is inside a string literal."""
    col = 0
    for i, ch in enumerate(line):
        col = (col // 8 + 1) * 8 if ch == "\t" else col + 1
        if col > WIDTH:
            rest = masked[i:].rstrip()
            if not re.fullmatch(r'[\0"\s,;)}]*', rest):
                return False
            return re.search(r'[\0"]', rest) is not None or masked[i - 1] in '\0"'
    return False


def width(line):
    col = 0
    for ch in line:
        col = (col // 8 + 1) * 8 if ch == "\t" else col + 1
    return col


def main():
    args = [a for a in sys.argv[1:] if a != "--all"]
    top = args[0] if args else \
        os.path.join(os.environ.get("TESTS_SRCDIR", "tests"), "..")
    found = {"width": [], "blanks": [], "null": [], "lifecycle": []}
    decls = {}
    for path in sources(top):
        rel = os.path.relpath(path, top)
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
        if text and not text.endswith("\n"):
            found["blanks"].append("%s: no newline at the end" % rel)
        strings = strip_strings_only(text).split("\n")
        for n, line in enumerate(text.split("\n"), 1):
            if width(line) > WIDTH and not past_limit_in_string(line, strings[n - 1]):
                found["width"].append("%s:%d: %d columns" % (rel, n, width(line)))
            if line != line.rstrip():
                found["blanks"].append("%s:%d: trailing whitespace" % (rel, n))
        code = strip_comments_and_strings(text)
        for n, line in enumerate(code.split("\n"), 1):
            if re.search(r"[=!]=\s*NULL\b|\bNULL\s*[=!]=", line):
                found["null"].append("%s:%d: %s" % (rel, n, line.strip()))
        if path.endswith(".h") and not rel.startswith("tests"):
            for name in re.findall(r"\b([a-z][a-z0-9_]*)\s*\(", code):
                decls.setdefault(name, rel)
    for name, rel in sorted(decls.items()):
        if name.endswith(("_new", "_delete")):
            found["lifecycle"].append("%s: %s (use create/destroy, start/stop or "
                                      "open/close)" % (rel, name))
        for word in ("_stop", "_close"):
            if name.endswith(word) and name[:-len(word)] + "_free" in decls:
                found["lifecycle"].append("%s: %s has a %s_free twin" %
                                          (rel, name, name[:-len(word)]))
    n = 0
    for rule, problems in found.items():
        n += 1
        print("%s %d - %s (%d found)" % ("not ok" if problems else "ok", n, rule,
                                          len(problems)))
        for p in (problems if "--all" in sys.argv else problems[:40]):
            print("#   " + p)
        if len(problems) > 40 and "--all" not in sys.argv:
            print("#   ... and %d more" % (len(problems) - 40))
    print("1..%d" % n)
    return 1 if any(found.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
