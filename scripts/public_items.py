#!/usr/bin/env python3
# Counts the public API of the noderep crate (default features) from rustdoc
# JSON, which needs a nightly toolchain:
#   cargo +nightly rustdoc --lib -- -Zunstable-options --output-format json \
#       --document-hidden-items
#   python3 scripts/public_items.py target/doc/noderep.json
# It walks from the crate root through public modules and re-exports
# (doc(hidden) items excluded) and prints two counts: every public item
# (methods of inherent impls, public fields and enum variants included), and
# the top-level items (modules, types, traits, free functions, constants,
# type aliases), with the latter per top-level module. It also lists the
# public paths hidden from the docs (doc(hidden)): the old paths of items
# that moved, kept so that code written against them still compiles.
import json, sys
from collections import Counter
d = json.load(open(sys.argv[1]))
idx = d["index"]; root = d["root"]
seen = set(); kinds = Counter(); hidden = []
def kind(it): return next(iter(it["inner"]))
top = Counter(); permod = Counter()
def visit(i, member=False, mod="(root)"):
    i = str(i)
    if i in seen or i not in idx: return
    seen.add(i); it = idx[i]
    if it.get("crate_id", 0) != 0: return
    k = kind(it)
    if it.get("attrs") and any("hidden" in str(a) for a in it["attrs"]):
        hidden.append(it.get("name") or (it["inner"].get("use") or {}).get("source"))
        return
    inner = it["inner"][k]
    if k == "use":
        if inner.get("id") is not None: visit(inner["id"], member, mod)
        return
    if k != "impl":
        kinds[k] += 1
        if not member:
            top[k] += 1; permod[mod] += 1
    if k == "module":
        name = it.get("name") or "(root)"
        for c in inner["items"]: visit(c, False, name if mod == "(root)" and name != "noderep" else mod)
    elif k in ("struct", "enum", "union"):
        kk = inner.get("kind", {})
        if isinstance(kk, dict) and "plain" in kk:
            for f in kk["plain"]["fields"]:
                if idx.get(str(f), {}).get("visibility") == "public": visit(f, True)
        if k == "enum":
            for v in inner["variants"]: visit(v, True)
        for im in inner.get("impls", []):
            imp = idx.get(str(im))
            if imp and imp["inner"]["impl"].get("trait") is None:
                for m in imp["inner"]["impl"]["items"]:
                    if idx.get(str(m), {}).get("visibility") == "public": visit(m, True)
    elif k == "trait":
        for m in inner["items"]: visit(m, True)
visit(root)
print("all public items (incl. methods, fields, variants):", sum(kinds.values()), dict(sorted(kinds.items())))
print("top-level items (modules, types, traits, free functions, constants, aliases):", sum(top.values()), dict(sorted(top.items())))
print("per top-level module:", dict(sorted(permod.items())))
print("doc(hidden) public paths, not counted (kept for code written against them):", len(hidden), sorted(str(h) for h in hidden))
