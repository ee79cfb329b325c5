#!/usr/bin/env python3
"""Metric names in Grafana dashboards and Prometheus rule files, and the
names a /metrics exposition defines.

  promql_names.py names FILE...      every metric name the PromQL expressions
                                     of FILEs reference, sorted, one a line
                                     (FILE: a Grafana dashboard .json or a
                                     Prometheus rule file .yml/.yaml)
  promql_names.py exported FILE...   every series name the Prometheus text
                                     expositions in FILEs define: counters and
                                     gauges as named, histograms as
                                     NAME_bucket, NAME_sum and NAME_count
                                     (summaries: NAME, NAME_sum, NAME_count),
                                     from their # TYPE lines, so a family with
                                     no series yet counts; untyped samples too

A dashboard is also checked for what Grafana needs: unique panel ids, a
non-empty expr in every target, every target on the ${datasource} variable.
Problems are printed to stderr and exit 1.
"""
import json
import re
import sys

import yaml

IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
# words that are PromQL syntax, not metric names
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
            "unless", "offset", "inf", "nan", "atan2"}
# keywords whose parenthesised list holds label names
LABEL_LISTS = {"by", "without", "on", "ignoring", "group_left", "group_right"}


def skip_string(expr, i):
    """Index just past the string literal starting at expr[i]."""
    quote = expr[i]
    i += 1
    while i < len(expr):
        if expr[i] == "\\" and quote != "`":
            i += 2
            continue
        if expr[i] == quote:
            return i + 1
        i += 1
    raise ValueError(f"unterminated string in {expr!r}")


def skip_group(expr, i, open_c, close_c):
    """Index just past the group opened at expr[i] (strings inside skipped)."""
    depth = 0
    while i < len(expr):
        c = expr[i]
        if c in "\"'`":
            i = skip_string(expr, i)
            continue
        if c == open_c:
            depth += 1
        elif c == close_c:
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    raise ValueError(f"unbalanced {open_c}{close_c} in {expr!r}")


def names_in(expr):
    """Metric names a PromQL expression selects."""
    found = set()
    i = 0
    while i < len(expr):
        c = expr[i]
        if c in "\"'`":
            i = skip_string(expr, i)
        elif c == "{":  # label matchers
            i = skip_group(expr, i, "{", "}")
        elif c == "[":  # range or subquery: durations and grafana variables
            i = skip_group(expr, i, "[", "]")
        elif c == "$":  # a grafana variable: $name, ${name}, $__rate_interval
            i += 1
            if i < len(expr) and expr[i] == "{":
                i = skip_group(expr, i, "{", "}")
            else:
                m = IDENT.match(expr, i)
                i = m.end() if m else i
        elif c.isdigit() or (c == "." and i + 1 < len(expr) and expr[i + 1].isdigit()):
            m = re.compile(r"[0-9.]+(e[+-]?[0-9]+)?[a-z]*", re.I).match(expr, i)
            i = m.end()
        elif IDENT.match(expr, i):
            m = IDENT.match(expr, i)
            word = m.group(0)
            i = m.end()
            j = i
            while j < len(expr) and expr[j].isspace():
                j += 1
            followed_by_paren = j < len(expr) and expr[j] == "("
            # an aggregation with its clause first: sum by (job) (...)
            after = IDENT.match(expr, j)
            if after and after.group(0).lower() in ("by", "without"):
                followed_by_paren = True
            if word.lower() in LABEL_LISTS and followed_by_paren:
                i = skip_group(expr, j, "(", ")")
            elif followed_by_paren or word.lower() in KEYWORDS:
                pass  # a function or an aggregation, or syntax
            else:
                found.add(word)
        else:
            i += 1
    return found


def label_values_selector(query):
    """The series selector of a Grafana label_values(SELECTOR, LABEL) query
    ("" for label_values(LABEL)); other queries as they are."""
    m = re.fullmatch(r"\s*label_values\((.*)\)\s*", query, re.S)
    if not m:
        return query
    inner = m.group(1)
    depth = 0
    for k in range(len(inner) - 1, -1, -1):
        if inner[k] in ")}]":
            depth += 1
        elif inner[k] in "({[":
            depth -= 1
        elif inner[k] == "," and depth == 0:
            return inner[:k]
    return ""


def dashboard_exprs(path, problems):
    with open(path) as f:
        dash = json.load(f)
    exprs = []
    ids = set()

    def walk(panels):
        for p in panels:
            if p.get("id") in ids:
                problems.append(f"{path}: panel id {p.get('id')} used twice")
            ids.add(p.get("id"))
            for t in p.get("targets", []):
                expr = t.get("expr", "")
                if not expr.strip():
                    problems.append(f"{path}: panel {p.get('title')!r} has a target without expr")
                if (t.get("datasource") or p.get("datasource") or {}).get("uid") != "${datasource}":
                    problems.append(f"{path}: panel {p.get('title')!r} is not on the ${{datasource}} variable")
                exprs.append(expr)
            walk(p.get("panels", []))

    walk(dash.get("panels", []))
    for var in dash.get("templating", {}).get("list", []):
        if var.get("type") == "query":
            query = var.get("query")
            if isinstance(query, dict):
                query = query.get("query", "")
            exprs.append(label_values_selector(query or ""))
    return exprs


def rule_exprs(path, problems):
    with open(path) as f:
        doc = yaml.safe_load(f)
    exprs = []
    for group in doc.get("groups", []):
        for rule in group.get("rules", []):
            if "expr" not in rule:
                problems.append(f"{path}: rule {rule.get('alert') or rule.get('record')} has no expr")
            exprs.append(str(rule.get("expr", "")))
    return exprs


def exported(paths):
    names = set()
    for path in paths:
        with open(path) as f:
            for line in f:
                line = line.strip()
                if line.startswith("# TYPE "):
                    _, _, name, kind = line.split(None, 3)
                    if kind == "histogram":
                        names |= {name + "_bucket", name + "_sum", name + "_count"}
                    elif kind == "summary":
                        names |= {name, name + "_sum", name + "_count"}
                    else:
                        names.add(name)
                elif line and not line.startswith("#"):
                    m = IDENT.match(line)
                    if m and m.group(0) not in names:
                        # a sample without a # TYPE line of its own name:
                        # untyped, or a histogram's series (already added)
                        names.add(m.group(0))
    return names


def main(argv):
    if len(argv) < 3 or argv[1] not in ("names", "exported"):
        sys.stderr.write(__doc__)
        return 2
    if argv[1] == "exported":
        print("\n".join(sorted(exported(argv[2:]))))
        return 0
    problems, names = [], set()
    for path in argv[2:]:
        exprs = dashboard_exprs(path, problems) if path.endswith(".json") else rule_exprs(path, problems)
        if not exprs:
            problems.append(f"{path}: no expressions")
        for expr in exprs:
            try:
                names |= names_in(expr)
            except ValueError as e:
                problems.append(f"{path}: {e}")
    for p in problems:
        print(p, file=sys.stderr)
    print("\n".join(sorted(names)))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
