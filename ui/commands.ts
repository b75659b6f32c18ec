// Slash commands of the terminal client: the table /help prints, input parsing, and tab completion.
// Pure: no I/O, so completion and parsing are easy to reason about.

export type CompletionSource = "command" | "user" | "channel" | "conversation";

export type CommandSpec = {
  name: string;
  args: string;
  summary: string;
  /** Longer help for /help <command>. */
  details?: string;
  aliases?: string[];
  /** What the first argument completes to. */
  completes?: CompletionSource;
};

export const commandSpecs: readonly CommandSpec[] = [
  { name: "help", args: "[command]", summary: "list the commands, or explain one", completes: "command" },
  { name: "register", args: "<user>", summary: "create an account and log in (asks for a password)", details: "The password is typed twice, masked. It is never stored: after a failover the client resumes with a session token." },
  { name: "login", args: "<user>", summary: "log in (asks for the password)", completes: "user" },
  { name: "logout", args: "", summary: "end this session and close its windows" },
  { name: "users", args: "[pattern]", summary: "list accounts; * matches any run of characters, ? one character" },
  { name: "msg", args: "<user> <text>", summary: "send a direct message without switching windows", details: "The message shows here as [msg(user)] text, and in the user's window as usual.", completes: "user" },
  { name: "query", args: "<user|#channel>", summary: "open a conversation window and switch to it", completes: "conversation", aliases: ["q"] },
  { name: "join", args: "<channel>", summary: "join a channel and switch to its window", details: "If you are in the channel already, it just switches to its window.", completes: "channel", aliases: ["j"] },
  { name: "leave", args: "[channel]", summary: "leave a channel (default: the current one) and close its window", completes: "channel", aliases: ["part"] },
  { name: "create", args: "<channel> [topic]", summary: "create a channel; you become its admin" },
  { name: "delete", args: "<channel>", summary: "delete a channel you administer", completes: "channel" },
  { name: "topic", args: "[channel] [text]", summary: "show the topic, or set it (admin only)", completes: "channel" },
  { name: "channels", args: "[pattern]", summary: "list channels, their member counts and topics", aliases: ["list"] },
  { name: "history", args: "[count]", summary: "load older messages into this window (default 50)" },
  { name: "read", args: "", summary: "fetch direct messages that arrived while you were offline" },
  { name: "delete-account", args: "", summary: "delete your account (asks for the password)" },
  { name: "win", args: "<number>", summary: "switch to window N (also Alt+N, Ctrl+N / Ctrl+P)", aliases: ["window"] },
  { name: "close", args: "", summary: "close the current window (not the status window)" },
  { name: "quit", args: "", summary: "leave the client", aliases: ["exit"] },
];

export const keyHelp = [
  "Keys: PgUp/PgDn scroll, Ctrl+N/Ctrl+P next/previous window, Alt+1..9 window N,",
  "Tab completes commands, users and channels, Up/Down recall input, Ctrl+U clears the line.",
  "Text that does not start with / is sent to the current conversation (// sends a leading /).",
];

export function findCommand(name: string): CommandSpec | undefined {
  const wanted = name.toLowerCase();
  return commandSpecs.find((spec) => spec.name === wanted || spec.aliases?.includes(wanted));
}

export type ParsedInput = { kind: "empty" } | { kind: "text"; text: string } | { kind: "command"; name: string; args: string[]; rest: string };

/** "/msg bob hi there" → command msg, args [bob, hi, there], rest "bob hi there". "//x" is the text "/x". */
export function parseInput(line: string): ParsedInput {
  if (line.trim().length === 0) return { kind: "empty" };
  if (line.startsWith("//")) return { kind: "text", text: line.slice(1) };
  if (!line.startsWith("/")) return { kind: "text", text: line };
  const body = line.slice(1);
  const match = /^(\S*)\s*(.*)$/s.exec(body)!;
  const rest = match[2];
  return { kind: "command", name: match[1].toLowerCase(), args: rest.split(/\s+/).filter((arg) => arg.length > 0), rest };
}

/** Text after the first `count` arguments of `rest`, with its spacing kept. */
export function afterArgs(rest: string, count: number): string {
  let remaining = rest.trimStart();
  for (let i = 0; i < count; i += 1) remaining = remaining.replace(/^\S+\s*/, "");
  return remaining;
}

export type CompletionSources = { users: readonly string[]; channels: readonly string[] };

/** The word before the cursor and what it can complete to, sorted. */
export function completionCandidates(line: string, cursor: number, sources: CompletionSources): { start: number; word: string; candidates: string[] } {
  const before = line.slice(0, cursor);
  const start = before.lastIndexOf(" ") + 1;
  const word = before.slice(start);
  const lower = word.toLowerCase();
  const matching = (options: Iterable<string>) => [...new Set(options)].filter((option) => option.toLowerCase().startsWith(lower)).sort();
  if (start === 0 && word.startsWith("/")) {
    return { start, word, candidates: matching(commandSpecs.map((spec) => `/${spec.name}`)) };
  }
  const parsed = parseInput(line);
  const command = parsed.kind === "command" ? findCommand(parsed.name) : undefined;
  const argumentIndex = before.trimStart().split(/\s+/).length - 2; // 0 = first argument of a command
  const source = command && argumentIndex === 0 ? command.completes : undefined;
  const channels = sources.channels.map((channel) => `#${channel}`);
  if (source === "command") return { start, word, candidates: matching(commandSpecs.map((spec) => spec.name)) };
  if (source === "channel") return { start, word, candidates: word.startsWith("#") ? matching(channels) : matching(sources.channels) };
  if (source === "user") return { start, word, candidates: matching(sources.users) };
  if (word.startsWith("#")) return { start, word, candidates: matching(channels) };
  if (word.startsWith("@")) return { start, word, candidates: matching(sources.users.map((user) => `@${user}`)) };
  if (source === "conversation") return { start, word, candidates: matching([...sources.users, ...channels]) };
  return { start, word, candidates: matching(sources.users) };
}

export function commonPrefix(words: readonly string[]): string {
  if (words.length === 0) return "";
  let prefix = words[0];
  for (const word of words) {
    while (!word.toLowerCase().startsWith(prefix.toLowerCase())) prefix = prefix.slice(0, -1);
  }
  return prefix;
}

export function helpLines(name?: string): string[] {
  if (name) {
    const spec = findCommand(name.replace(/^\//, ""));
    if (!spec) return [`No command /${name}. /help lists them.`];
    const lines = [`/${spec.name} ${spec.args}`.trimEnd() + ` - ${spec.summary}`];
    if (spec.details) lines.push(spec.details);
    if (spec.aliases?.length) lines.push(`Also: ${spec.aliases.map((alias) => `/${alias}`).join(", ")}`);
    return lines;
  }
  const width = Math.max(...commandSpecs.map((spec) => `/${spec.name} ${spec.args}`.length));
  return ["Commands (/help <command> for more):", ...commandSpecs.map((spec) => `  ${`/${spec.name} ${spec.args}`.padEnd(width)}  ${spec.summary}`), ...keyHelp];
}
