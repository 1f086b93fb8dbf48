// Reads one JSON document per line on stdin: {"id", "schema", "body", "list"?}.
// Writes one line per input: {"id", "ok", "errors"}. The schemas are generated from
// Discord's OpenAPI description (discord-api-spec on npm, built from discord/discord-api-spec).
import * as readline from "node:readline";
import * as spec from "discord-api-spec/zod";
import { z } from "zod";

// The OpenAPI document types timestamps as `format: date-time` (RFC 3339: any UTC offset,
// and Discord sends "+00:00"), but the generated zod checks use z.iso.datetime(), which
// takes only "Z". An issue on a value that is a valid RFC 3339 date-time is dropped.
const rfc3339 = z.iso.datetime({ offset: true, local: false });
const spurious = (issue) =>
  issue.code === "invalid_format" &&
  issue.format === "datetime" &&
  rfc3339.safeParse(issue.input).success;

const rl = readline.createInterface({ input: process.stdin });
for await (const line of rl) {
  if (!line.trim()) continue;
  const { id, schema, body, list } = JSON.parse(line);
  const found = spec[`${schema}Schema`];
  if (!found) {
    console.log(JSON.stringify({ id, ok: false, errors: [`no schema named ${schema}`] }));
    continue;
  }
  const items = list ? body : [body];
  const errors = [];
  if (list && !Array.isArray(body)) errors.push("expected a JSON array");
  else
    for (const [i, item] of items.entries()) {
      const result = found.safeParse(item, { reportInput: true });
      if (!result.success)
        for (const issue of result.error.issues.filter((i) => !spurious(i)))
          errors.push(`${list ? `[${i}].` : ""}${issue.path.join(".")}: ${issue.message}`);
    }
  console.log(JSON.stringify({ id, ok: errors.length === 0, errors }));
}
