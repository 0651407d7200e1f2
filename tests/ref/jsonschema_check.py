"""The reference JSON Schema validator (the `jsonschema` package) for the
structured-output tests: argv[1] is a schema file; each stdin line is one
answer. Prints, per line, `ok` or why it fails (not JSON, or the validator's
message)."""
import json
import sys

import jsonschema

schema = json.load(open(sys.argv[1]))
jsonschema.Draft202012Validator.check_schema(schema)
validator = jsonschema.Draft202012Validator(schema)
for line in sys.stdin.read().splitlines():
    try:
        doc = json.loads(line)
    except ValueError as e:
        print(f"not JSON: {e}: {line!r}")
        continue
    errors = sorted(validator.iter_errors(doc), key=str)
    print("ok" if not errors else f"invalid: {errors[0].message}: {line!r}")
