#!/usr/bin/env python3
"""Every value of charts/kmosix (a leaf of values.schema.json) is in README.md.

  readme_keys.py SCHEMA README
Prints the missing keys and exits 1 if any. A key counts when README names it
in full or as "<parent>.*"; image, resources and affinity count as one
value each.
"""
import json
import sys

schema = json.load(open(sys.argv[1]))
readme = open(sys.argv[2]).read()
BLOCKS = {"image", "resources", "affinity"}


def leaves(node, path):
    if "$ref" in node:
        name = node["$ref"].split("/")[-1]
        if name in BLOCKS:
            return [path]
        node = schema["definitions"][name]
    props = node.get("properties")
    if node.get("type") == "object" and props and node.get("additionalProperties") is False:
        out = []
        for key, sub in props.items():
            out += leaves(sub, path + [key])
        return out
    return [path]


missing = []
for p in leaves(schema, []):
    key = ".".join(p)
    if f"`{key}`" not in readme and f"`{'.'.join(p[:-1])}.*`" not in readme:
        missing.append(key)
if missing:
    print("values missing from README.md:", ", ".join(missing))
    sys.exit(1)
print(f"README.md names all {len(leaves(schema, []))} values")
