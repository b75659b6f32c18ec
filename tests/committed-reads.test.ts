// History reads on a primary show only committed messages. A primary applies a batch to its own
// SQLite file before the backups have acked it, and a read can get its turn in between; a message
// that is applied but not committed could still vanish with that primary, so a history page must
// stop at the commit index. Driven on a real Store file, where "applied, not committed" is set up
// exactly (the cluster tests cannot time that window).
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { Command } from "../store/commands.js";
import { Queries } from "../store/queries.js";
import { Store } from "../store/store.js";

let scratch: string;
let store: Store;
let queries: Queries;
/** Log indexes of the posts to #general and of the DMs from ann to ben, in order. */
const posts: number[] = [];
const dms: number[] = [];
let ann = 0;

function propose(command: Command): number {
  const [proposal] = store.proposeBatch(1, [{ clientId: null, requestId: null, command }]);
  expect(proposal.result.ok, JSON.stringify(proposal.result)).toBe(true);
  return proposal.entry.index;
}

beforeAll(() => {
  scratch = mkdtempSync(join(tmpdir(), "chatplus-committed-reads-"));
  store = new Store(join(scratch, "primary.db"));
  queries = new Queries(store.db);
  propose({ op: "config", primary: 1, members: [1] });
  propose({ op: "bootstrap", channels: ["general"] });
  ann = propose({ op: "register", username: "ann", salt: "s", hash: "h", sessionId: "session-ann", ts: 1 });
  propose({ op: "register", username: "ben", salt: "s", hash: "h", sessionId: "session-ben", ts: 1 });
  for (let n = 0; n < 4; n++) {
    posts.push(propose({ op: "post", actor: ann, channel: "general", body: `post ${n}`, ts: 2 }));
    dms.push(propose({ op: "send_dm", actor: ann, to: "ben", body: `dm ${n}`, ts: 2, delivered: true }));
  }
});
afterAll(() => {
  store?.close();
  if (scratch) rmSync(scratch, { recursive: true, force: true });
});

const ids = (result: ReturnType<Queries["history"]>) => {
  if ("error" in result) throw new Error(result.error);
  return result.messages.map((message) => message.id);
};

describe("history on a primary with applied but uncommitted entries", () => {
  it("a page without a cursor ends at the commit index", () => {
    // Everything is applied; only the first two posts and DMs are committed.
    const committed = dms[1];
    expect(ids(queries.history(ann, { kind: "channel", channel: "general" }, {}, 100, committed))).toEqual(posts.slice(0, 2));
    expect(ids(queries.history(ann, { kind: "dm", username: "ben" }, {}, 100, committed))).toEqual(dms.slice(0, 2));
    // Once all is committed, all is shown: the bound is the commit index, not something else.
    expect(ids(queries.history(ann, { kind: "channel", channel: "general" }, {}, 100, store.lastIndex))).toEqual(posts);
  });

  it("before and after cursors stop at the commit index too", () => {
    const committed = posts[2];
    const general = { kind: "channel", channel: "general" } as const;
    expect(ids(queries.history(ann, general, { before: store.lastIndex + 1 }, 100, committed))).toEqual(posts.slice(0, 3));
    expect(ids(queries.history(ann, general, { after: posts[0] }, 100, committed))).toEqual(posts.slice(1, 3));
    expect(ids(queries.history(ann, { kind: "dm", username: "ben" }, { after: 0 }, 100, committed))).toEqual(dms.slice(0, 2));
    // A cursor below the commit index is not moved.
    expect(ids(queries.history(ann, general, { before: posts[1] }, 100, committed))).toEqual(posts.slice(0, 1));
  });
});
