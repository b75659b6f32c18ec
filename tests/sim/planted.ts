// Planted bugs: deliberate mistakes in the core (patched onto each Replica instance, core/replica.ts
// itself untouched) or in the shell, to show that the checker fails when the system is wrong.
// Each names the failure classes the checker is expected to report for it.
import type { Action, Replica, Timing } from "../../core/replica.js";
import type { PeerMessage } from "../../core/messages.js";
import type { ViolationKind } from "./checker.js";
import type { NetworkMode } from "./network.js";
import type { ShellBug, SimServer } from "./server.js";

export type PlantedBug = {
  name: string;
  description: string;
  expect: ViolationKind[];
  decorate?: (server: SimServer, replica: Replica) => void;
  shellBugs?: ShellBug[];
  timing?: Partial<Timing>;
  /** Network mode the bug shows up in most readily. */
  mode: NetworkMode;
};

/** The private parts of Replica the patches reach into (the names in core/replica.ts). */
type ReplicaInternals = {
  promised: number;
  serving: boolean;
  commitIndex: number;
  persistedIndex: number;
  advanceCommit(actions: Action[]): void;
  onPrepareOk(actions: Action[], from: number, message: PeerMessage & { t: "prepare_ok" }, now: number): void;
};

function internals(replica: Replica): ReplicaInternals {
  return replica as unknown as ReplicaInternals;
}

export const plantedBugs: PlantedBug[] = [
  {
    name: "primary-acks-alone",
    mode: "tcp",
    description: "the serving primary commits (and acknowledges) what it has fsynced itself, without waiting for its backups",
    expect: ["lost", "divergence"],
    decorate: (_server, replica) => {
      const core = internals(replica);
      const original = core.advanceCommit.bind(core);
      core.advanceCommit = (actions) => {
        if (core.serving && core.persistedIndex > core.commitIndex) {
          core.commitIndex = core.persistedIndex;
          actions.push({ type: "commit", index: core.persistedIndex });
          return;
        }
        original(actions);
      };
    },
  },
  {
    name: "no-unreachable-grace",
    mode: "tcp",
    description:
      "an unreachable member counts as dead at once (unreachableGraceMs 0): right after restarts, before the backups have dialed each other, each can take over alone",
    expect: ["split_brain", "lost", "divergence"],
    timing: { unreachableGraceMs: 0 },
  },
  {
    name: "shell-acks-on-propose",
    mode: "tcp",
    description: "the shell answers the client as soon as the primary has written the entry locally, before it is committed",
    expect: ["lost"],
    shellBugs: ["ack-on-propose"],
  },
  {
    name: "shell-promise-not-durable",
    mode: "tcp",
    description: "the shell does not store the promised epoch durably, so a restarted server forgets its promise",
    expect: ["epoch"],
    shellBugs: ["promise-volatile"],
  },
  {
    name: "no-freeze-detection",
    mode: "tcp",
    description: "freeze detection is off (freezeDetectMs huge): a primary that was frozen resumes serving as if nothing happened",
    expect: ["lost", "divergence", "split_brain"],
    timing: { freezeDetectMs: 1_000_000_000 },
  },
];
