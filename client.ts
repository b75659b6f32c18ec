// The Chat+ terminal client.
//   npm run client -- [--user NAME] [--config FILE]             full-screen chat (Ink)
//   npm run client -- --user NAME [--json] <command> [args]       one command, for scripts
// Passwords come from CHATPLUS_PASSWORD, --password-file, or a masked prompt: never from argv.
// Logs go to --log-file (default: <tmpdir>/chatplus-client.log), never to the terminal UI.
import { readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import pino, { type Logger } from "pino";
import { ClientConnector } from "./connections/connector.js";
import { loadClusterConfig, type ClusterConfig } from "./connections/consts.js";
import { ChatError, errorCodes } from "./connections/errors.js";
import type { MessageView } from "./connections/schema.js";
import { formatClock } from "./utils.js";

const usage = `Usage:
  npm run client -- [options]                      full-screen chat
  npm run client -- --user NAME [options] COMMAND  run one command and exit

Options:
  --config FILE         cluster config JSON (default: 3 servers on 127.0.0.1, see connections/consts.ts)
  --user NAME           account to use (full screen: logs in at start)
  --password-file FILE  read the password from the first line of FILE
                        (or set CHATPLUS_PASSWORD; never pass a password as an argument)
  --log-file FILE       JSON log file (default: ${join(tmpdir(), "chatplus-client.log")})
  --json                print command results as JSON
  -h, --help            show this help

Commands (one per run; exit code 0 on success, 1 with the error code on stderr on failure):
  register                   create the account --user with the password
  send USER TEXT...          send a direct message
  post CHANNEL TEXT...       post in a channel
  read                       fetch direct messages that arrived while you were offline
  history @USER|#CHANNEL     show the latest messages of a conversation
  users [PATTERN]            list accounts (* and ? are wildcards)
  channels [PATTERN]         list channels
  join CHANNEL | leave CHANNEL | create CHANNEL [TOPIC...] | topic CHANNEL TEXT...

Full-screen mode: type /help for the slash commands.
`;

type Options = {
  config?: string;
  user?: string;
  "password-file"?: string;
  "log-file"?: string;
  json?: boolean;
  help?: boolean;
};

class UsageError extends Error {}

async function main(): Promise<void> {
  let values: Options;
  let positionals: string[];
  try {
    ({ values, positionals } = parseArgs({
      strict: true,
      allowPositionals: true,
      options: {
        config: { type: "string" },
        user: { type: "string" },
        "password-file": { type: "string" },
        "log-file": { type: "string" },
        json: { type: "boolean" },
        help: { type: "boolean", short: "h" },
      },
    }));
  } catch (error) {
    process.stderr.write(`error: ${(error as Error).message}\n\n${usage}`);
    process.exitCode = 2;
    return;
  }
  if (values.help) {
    process.stdout.write(usage);
    return;
  }
  let cluster: ClusterConfig;
  let password: string | undefined;
  try {
    cluster = loadClusterConfig(values.config);
    password = readPassword(values["password-file"]);
  } catch (error) {
    process.stderr.write(`error: ${(error as Error).message}\n`);
    process.exitCode = 2;
    return;
  }
  const logFile = values["log-file"] ?? join(tmpdir(), "chatplus-client.log");
  const logger = pino({ level: process.env.CHATPLUS_LOG_LEVEL ?? "info", base: { app: "chatplus-client", pid: process.pid } }, pino.destination({ dest: logFile, mkdir: true, sync: false }));
  if (positionals.length > 0) return runCommand(cluster, logger, values, password, positionals);
  if (values.json) {
    process.stderr.write("error: --json needs a command\n");
    process.exitCode = 2;
    return;
  }
  return runFullScreen(cluster, logger, values.user, password);
}

function readPassword(file: string | undefined): string | undefined {
  if (file !== undefined) {
    let text: string;
    try {
      text = readFileSync(file, "utf8");
    } catch (error) {
      throw new Error(`cannot read --password-file ${file}: ${(error as Error).message}`);
    }
    return text.split(/\r?\n/)[0];
  }
  return process.env.CHATPLUS_PASSWORD;
}

// ---- scriptable mode ----------------------------------------------------------------------------

async function runCommand(cluster: ClusterConfig, logger: Logger, options: Options, password: string | undefined, words: string[]): Promise<void> {
  const connector = new ClientConnector(cluster, { logger });
  const json = options.json === true;
  try {
    if (!options.user) throw new UsageError("--user NAME is required for commands");
    if (password === undefined) throw new UsageError("no password: set CHATPLUS_PASSWORD or pass --password-file FILE");
    const [command, ...args] = words;
    checkArguments(command, args);
    await connector.connect();
    if (command === "register") await connector.register(options.user, password);
    else await connector.login(options.user, password);
    const result = await execute(connector, command, args, options.user);
    print(result, json);
    await endSession(connector);
  } catch (error) {
    reportFailure(error, json);
  } finally {
    connector.close();
  }
}

/** Best effort: one-shot runs should not leave sessions behind. */
async function endSession(connector: ClientConnector): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  await Promise.race([connector.logout().catch(() => {}), new Promise<void>((resolve) => (timer = setTimeout(resolve, 2000)))]);
  clearTimeout(timer);
}

const argumentCounts: Record<string, [number, number]> = {
  register: [0, 0],
  send: [2, Infinity],
  post: [2, Infinity],
  read: [0, 0],
  history: [1, 1],
  users: [0, 1],
  channels: [0, 1],
  join: [1, 1],
  leave: [1, 1],
  create: [1, Infinity],
  topic: [2, Infinity],
};

function checkArguments(command: string, args: string[]): void {
  const counts = argumentCounts[command];
  if (!counts) throw new UsageError(`unknown command ${JSON.stringify(command)}; --help lists them`);
  if (args.length < counts[0] || args.length > counts[1]) throw new UsageError(`wrong number of arguments for ${command}; --help shows the usage`);
  if (command === "history" && !/^[@#]/.test(args[0])) throw new UsageError("history needs @user or #channel");
}

type Result = { kind: "messages"; data: Record<string, unknown>; messages: MessageView[] } | { kind: "lines"; data: Record<string, unknown>; lines: string[] };

async function execute(connector: ClientConnector, command: string, args: string[], user: string): Promise<Result> {
  const channel = (name: string) => name.replace(/^#/, "");
  const text = args.slice(1).join(" ");
  switch (command) {
    case "register":
      return { kind: "lines", data: { username: user }, lines: [`registered ${user}`] };
    case "send": {
      const message = await connector.sendDm(args[0].replace(/^@/, ""), text);
      return { kind: "messages", data: { message }, messages: [message] };
    }
    case "post": {
      const message = await connector.post(channel(args[0]), text);
      return { kind: "messages", data: { message }, messages: [message] };
    }
    case "read": {
      const result = await connector.readUndelivered(500);
      return { kind: "messages", data: result, messages: result.messages };
    }
    case "history": {
      const messages = await connector.history(args[0], { limit: 100 });
      return { kind: "messages", data: { conversation: args[0], messages }, messages };
    }
    case "users": {
      const result = await connector.listUsers(args[0] ?? "*", undefined, 500);
      return { kind: "lines", data: result, lines: result.users.map((item) => `${item.username}${item.online ? " (online)" : ""}`) };
    }
    case "channels": {
      const result = await connector.listChannels(args[0] ?? "*", undefined, 500);
      return {
        kind: "lines",
        data: result,
        lines: result.channels.map((item) => `#${item.name} ${item.members} member(s)${item.joined ? " joined" : ""}${item.topic ? ` - ${item.topic}` : ""}`),
      };
    }
    case "join": {
      const result = await connector.joinChannel(channel(args[0]));
      return { kind: "lines", data: result, lines: [`joined #${result.channel}${result.topic ? ` - ${result.topic}` : ""}`] };
    }
    case "leave":
      await connector.leaveChannel(channel(args[0]));
      return { kind: "lines", data: { channel: channel(args[0]) }, lines: [`left #${channel(args[0])}`] };
    case "create":
      await connector.createChannel(channel(args[0]), text);
      return { kind: "lines", data: { channel: channel(args[0]), topic: text }, lines: [`created #${channel(args[0])}`] };
    case "topic":
      await connector.setTopic(channel(args[0]), text);
      return { kind: "lines", data: { channel: channel(args[0]), topic: text }, lines: [`topic of #${channel(args[0])}: ${text}`] };
  }
  throw new UsageError(`unknown command ${command}`);
}

function print(result: Result, json: boolean): void {
  if (json) {
    process.stdout.write(`${JSON.stringify(result.data)}\n`);
    return;
  }
  const lines = result.kind === "lines" ? result.lines : result.messages.map(formatMessage);
  if (lines.length > 0) process.stdout.write(`${lines.join("\n")}\n`);
}

function formatMessage(message: MessageView): string {
  // Bodies are printed as they are; strip terminal control characters first.
  const body = message.body.replace(/[\u0000-\u0009\u000b-\u001f\u007f-\u009f]/g, "?");
  return `${formatClock(message.ts)} ${message.conversation} <${message.from}> ${body}`;
}

function reportFailure(error: unknown, json: boolean): void {
  const code = error instanceof ChatError ? error.code : error instanceof UsageError ? "CHAT_ERR_USAGE" : errorCodes.INTERNAL;
  const message = (error as Error).message;
  if (json) process.stdout.write(`${JSON.stringify({ error: { code, message } })}\n`);
  process.stderr.write(`error: ${code}: ${message}\n`);
  process.exitCode = error instanceof UsageError ? 2 : 1;
}

// ---- full-screen mode ---------------------------------------------------------------------------

async function runFullScreen(cluster: ClusterConfig, logger: Logger, user: string | undefined, password: string | undefined): Promise<void> {
  if (!process.stdin.isTTY || !process.stdout.isTTY) {
    process.stderr.write("error: the full-screen client needs a terminal; give a command for scripted use (--help)\n");
    process.exitCode = 2;
    return;
  }
  // Ink stops drawing interactively when it thinks it runs in CI (CI=true); a terminal is a terminal.
  delete process.env.CI;
  delete process.env.CONTINUOUS_INTEGRATION;
  const [{ render }, React, { App }, { ChatController }] = await Promise.all([import("ink"), import("react"), import("./ui/app.js"), import("./ui/controller.js")]);
  const connector = new ClientConnector(cluster, { logger });
  let unmount = () => {};
  const controller = new ChatController(connector, { logger: logger.child({ component: "ui" }), username: user, password, onQuit: () => unmount() });
  const restoreScreen = () => process.stdout.write("\x1b[?1049l");
  process.stdout.write("\x1b[?1049h\x1b[2J\x1b[H");
  process.once("exit", restoreScreen);
  const instance = render(React.createElement(App, { controller }), { exitOnCtrlC: false, patchConsole: true });
  unmount = () => instance.unmount();
  void controller.start().catch((error: Error) => logger.error({ err: error }, "start failed"));
  try {
    await instance.waitUntilExit();
  } finally {
    controller.quit();
    restoreScreen();
    process.off("exit", restoreScreen);
    logger.info("client exited");
  }
}

main().catch((error: Error) => {
  process.stderr.write(`error: ${error.stack ?? error.message}\n`);
  process.exitCode = 1;
});
