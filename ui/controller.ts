// ChatController: everything the terminal client knows and does, without React or a terminal.
// It keeps the windows (status, channels, direct-message conversations), runs slash commands through
// the ClientConnector, turns push events into lines, and tracks connection state for the status bar.
// ui/app.tsx only renders its state and forwards keys to it.
import type { Logger } from "pino";
import type { ClientConnector, LoginResult, StateChange } from "../connections/connector.js";
import { retryBudgetMs, unreadCountMax } from "../connections/consts.js";
import { ChatError, errorCodes } from "../connections/errors.js";
import type { ChatEvent, MessageView, UnreadSummary } from "../connections/schema.js";
import { ChannelName, Username } from "../schema.js";
import { formatClock } from "../utils.js";
import { afterArgs, commonPrefix, completionCandidates, findCommand, helpLines, parseInput } from "./commands.js";
import { InputLine } from "./input.js";
import { sanitize, visibleRows, type PaneLine, type PaneRow } from "./layout.js";

/** Lines kept per window; older ones are dropped (the server keeps history: /history reloads them). */
export const windowLinesMax = 2000;
/** Conversation windows open at once; the least recently active one closes beyond this. */
export const windowsMax = 60;
export const historyPageDefault = 50;
/** Names offered by tab completion. */
export const completionNamesMax = 2000;
const markReadDelayMs = 300;

export type WindowKind = "status" | "channel" | "dm";

export type ChatWindow = {
  /** "(status)", "#channel" or "@user". */
  name: string;
  kind: WindowKind;
  lines: PaneLine[];
  messageIds: Set<number>;
  unread: number;
  historyLoaded: boolean;
  topic: string | null;
  /** First row shown while scrolled back; null follows the newest line. */
  scrollTop: number | null;
  lastActivity: number;
  markedRead: number;
};

export type Prompt = { label: string; masked: boolean };

export type ControllerOptions = {
  logger: Logger;
  username?: string;
  password?: string;
  /** The connector's retry budget, named when a message could not be sent (default: the connector's default). */
  retryBudgetMs?: number;
  /** Called once the controller has closed the connector. */
  onQuit: () => void;
};

const statusName = "(status)";

export class ChatController {
  readonly input = new InputLine();
  readonly windows: ChatWindow[] = [];
  private currentIndex = 0;
  private version = 0;
  private readonly listeners = new Set<() => void>();
  private user: string | null = null;
  private prompt: (Prompt & { resolve: (value: string | null) => void }) | null = null;
  private completion: { start: number; candidates: string[]; index: number; suffixAt: number } | null = null;
  private readonly users = new Set<string>();
  private readonly channels = new Set<string>();
  private paneWidth = 80;
  private paneHeight = 20;
  private markReadTimer: NodeJS.Timeout | null = null;
  private connection: StateChange = { state: "connecting", serverId: null, previousServerId: null, reason: "starting" };
  private lastReadyServer: number | null = null;
  private quitting = false;
  private sequence = 0;

  constructor(
    private readonly connector: ClientConnector,
    private readonly options: ControllerOptions,
  ) {
    this.windows.push(this.newWindow(statusName, "status"));
    connector.on("state", (change) => this.onConnectorState(change));
    connector.on("event", (event) => this.onChatEvent(event));
    connector.on("session", (session, reason) => this.onSession(session, reason));
    connector.on("lag", () => this.changed());
  }

  // ---- subscription (React's useSyncExternalStore) ----------------------------------------------

  subscribe = (listener: () => void): (() => void) => {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  };
  getVersion = (): number => this.version;

  private changed(): void {
    this.version += 1;
    for (const listener of this.listeners) listener();
  }

  // ---- start and stop ----------------------------------------------------------------------------

  async start(): Promise<void> {
    this.system(statusName, "Chat+ - type /help for commands, /register <name> or /login <name> to start.");
    this.connector.connect().catch((error: Error) => this.system(statusName, `still looking for a server: ${error.message}`));
    const { username, password } = this.options;
    if (!username) return;
    const secret = password ?? (await this.ask(`Password for ${username}:`, true));
    if (secret === null) return;
    await this.run(() => this.login(username, secret));
  }

  quit(): void {
    if (this.quitting) return;
    this.quitting = true;
    if (this.markReadTimer) clearTimeout(this.markReadTimer);
    this.connector.close();
    this.options.onQuit();
  }

  // ---- what the UI renders -----------------------------------------------------------------------

  get current(): ChatWindow {
    return this.windows[this.currentIndex];
  }
  get activePrompt(): Prompt | null {
    return this.prompt ? { label: this.prompt.label, masked: this.prompt.masked } : null;
  }

  setViewport(width: number, paneHeight: number): void {
    this.paneWidth = Math.max(10, width);
    this.paneHeight = Math.max(1, paneHeight);
  }

  paneRows(): PaneRow[] {
    return visibleRows(this.current.lines, this.paneWidth, this.paneHeight, this.current.scrollTop).rows;
  }

  topBar(): string {
    const window = this.current;
    if (window.kind === "status") return "Chat+ status window - /help for commands";
    // A topic is any text an admin chose: control characters would reach the terminal as escape sequences.
    if (window.kind === "channel") return `${window.name}${window.topic ? ` - ${sanitize(window.topic)}` : ""}`;
    return `${window.name} - direct messages`;
  }

  statusBar(): string {
    const clock = formatClock(Date.now());
    const user = this.user ?? "not logged in";
    const lag = this.connector.lagMs;
    const server = this.connection.serverId !== null ? `server ${this.connection.serverId}${lag !== null ? ` lag ${lag}ms` : ""}` : "no server";
    const state = this.connection.state === "ready" ? "ready" : this.connection.state.toUpperCase();
    const activity = this.windows
      .map((window, index) => ({ window, index }))
      .filter(({ window, index }) => index !== this.currentIndex && window.unread > 0)
      // The server's counts stop at unreadCountMax, so anything from there on reads "1000+".
      .map(({ window, index }) => `${index + 1}:${window.name}(${window.unread >= unreadCountMax ? `${unreadCountMax}+` : window.unread})`);
    const parts = [`[${clock}]`, `[${user}]`, `[${this.currentIndex + 1}:${this.current.name}]`, `[${server}]`, `[${state}]`];
    if (activity.length > 0) parts.push(`[Act: ${activity.join(" ")}]`);
    return parts.join(" ");
  }

  inputLabel(): string {
    return this.prompt ? this.prompt.label : `[${this.current.name}]`;
  }

  // ---- keys the UI forwards ------------------------------------------------------------------------

  /** Enter: answers the prompt, or runs the line as a command or a message. */
  submit(): void {
    this.completion = null;
    if (this.prompt) {
      const prompt = this.prompt;
      this.prompt = null;
      prompt.resolve(this.input.take(false));
      this.changed();
      return;
    }
    const line = this.input.take(true);
    this.current.scrollTop = null;
    this.changed();
    void this.run(() => this.execute(line));
  }

  /** Esc: cancels a prompt. */
  cancel(): void {
    this.completion = null;
    if (!this.prompt) return;
    const prompt = this.prompt;
    this.prompt = null;
    this.input.take(false);
    prompt.resolve(null);
    this.changed();
  }

  edited(): void {
    this.completion = null;
    this.changed();
  }

  /** Tab: completes the word before the cursor; repeated Tabs cycle through the candidates. */
  complete(): void {
    if (this.prompt) return;
    if (this.completion && this.completion.candidates.length > 1) {
      const state = this.completion;
      state.index = (state.index + 1) % state.candidates.length;
      this.replaceWord(state.start, state.suffixAt, state.candidates[state.index] + " ");
      state.suffixAt = state.start + [...state.candidates[state.index]].length + 1;
      return this.changed();
    }
    const line = this.input.text;
    const cursor = [...line].slice(0, this.input.cursor).join("").length;
    const found = completionCandidates(line, cursor, { users: [...this.users], channels: [...this.channels] });
    if (found.candidates.length === 0) return;
    const start = [...line.slice(0, found.start)].length;
    if (found.candidates.length === 1) {
      this.replaceWord(start, this.input.cursor, found.candidates[0] + " ");
      this.completion = null;
      return this.changed();
    }
    const prefix = commonPrefix(found.candidates);
    if (prefix.length > found.word.length) {
      this.replaceWord(start, this.input.cursor, prefix);
      this.completion = null;
    } else {
      this.system(this.current.name, `completions: ${found.candidates.slice(0, 30).join(" ")}${found.candidates.length > 30 ? " ..." : ""}`);
      this.replaceWord(start, this.input.cursor, found.candidates[0] + " ");
      this.completion = { start, candidates: found.candidates, index: 0, suffixAt: start + [...found.candidates[0]].length + 1 };
    }
    this.changed();
  }

  private replaceWord(start: number, end: number, replacement: string): void {
    const chars = [...this.input.text];
    const next = [...chars.slice(0, start), ...replacement, ...chars.slice(end)];
    this.input.set(next.join(""), start + [...replacement].length);
  }

  /** PgUp (-1) / PgDn (+1) by a page. */
  scroll(direction: -1 | 1): void {
    const window = this.current;
    const { total, top } = visibleRows(window.lines, this.paneWidth, this.paneHeight, window.scrollTop);
    const page = Math.max(1, this.paneHeight - 2);
    const bottomTop = Math.max(0, total - this.paneHeight);
    if (direction < 0) window.scrollTop = Math.max(0, top - page);
    else if (window.scrollTop !== null) window.scrollTop = top + page >= bottomTop ? null : top + page;
    if (window.scrollTop !== null && window.scrollTop >= bottomTop) window.scrollTop = null;
    if (window.scrollTop === null) this.scheduleMarkRead();
    this.changed();
  }

  switchTo(index: number): void {
    if (index < 0 || index >= this.windows.length) return;
    this.currentIndex = index;
    const window = this.current;
    window.unread = 0;
    window.lastActivity = this.nextSequence();
    this.changed();
    if (window.kind !== "status" && !window.historyLoaded && this.user) void this.run(() => this.loadHistory(window, historyPageDefault));
    this.scheduleMarkRead();
  }

  switchBy(step: 1 | -1): void {
    this.switchTo((this.currentIndex + step + this.windows.length) % this.windows.length);
  }

  // ---- commands ---------------------------------------------------------------------------------

  /** Runs an async action, showing a typed error in the current window instead of throwing. */
  private async run(action: () => Promise<void>): Promise<void> {
    try {
      await action();
    } catch (error) {
      this.showError(this.current.name, error);
    }
  }

  private async execute(line: string): Promise<void> {
    const parsed = parseInput(line);
    if (parsed.kind === "empty") return;
    if (parsed.kind === "text") {
      if (this.current.kind === "status") return this.error(this.current.name, "this is the status window: /query <user|#channel> to talk, /help for commands");
      return this.sendText(this.current.name, parsed.text, this.current);
    }
    const spec = findCommand(parsed.name);
    if (!spec) return this.error(this.current.name, `unknown command /${parsed.name}; /help lists the commands`);
    const [first, second] = parsed.args;
    const here = this.current.name;
    switch (spec.name) {
      case "help":
        for (const text of helpLines(first)) this.system(here, text);
        return;
      case "register":
        return this.commandRegister(first);
      case "login": {
        if (!first) return this.usage(spec.name);
        const secret = await this.ask(`Password for ${first}:`, true);
        if (secret !== null) await this.login(first, secret);
        return;
      }
      case "logout":
        await this.connector.logout();
        return;
      case "users":
        return this.commandUsers(first ?? "*");
      case "msg": {
        const text = afterArgs(parsed.rest, 1);
        if (!first || text.trim().length === 0) return this.usage(spec.name);
        const target = `@${stripPrefix(first, "@")}`;
        if (!validConversation(target)) return this.error(here, `${first} is not a user name`);
        return this.sendText(target, text, this.current);
      }
      case "query": {
        if (!first) return this.usage(spec.name);
        const name = first.startsWith("#") ? `#${stripPrefix(first, "#")}` : `@${stripPrefix(first, "@")}`;
        if (!validConversation(name)) return this.error(here, `${first} is not a user name or #channel`);
        this.switchTo(this.windows.indexOf(this.ensureWindow(name)));
        return;
      }
      case "join": {
        if (!first) return this.usage(spec.name);
        const channel = stripPrefix(first, "#");
        // Already a member (irssi: /join of a channel you are on): just go to its window.
        const joined = await this.connector.joinChannel(channel).catch((error: unknown) => {
          if (error instanceof ChatError && error.code === errorCodes.ALREADY_MEMBER) return null;
          throw error;
        });
        this.channels.add(channel);
        const window = this.ensureWindow(`#${channel}`);
        if (joined) window.topic = joined.topic || null;
        else {
          // A window closed and reopened this way starts blank: fetch the topic its title shows.
          window.topic = (await this.findChannel(channel))?.topic || null;
        }
        this.switchTo(this.windows.indexOf(window));
        if (!joined) this.system(window.name, `already in ${window.name}`);
        else this.system(window.name, `you joined ${window.name}${joined.topic ? ` - topic: ${joined.topic}` : ""}`);
        return;
      }
      case "leave": {
        const channel = first ? stripPrefix(first, "#") : this.current.kind === "channel" ? this.current.name.slice(1) : null;
        if (!channel) return this.usage(spec.name);
        await this.connector.leaveChannel(channel);
        this.closeWindow(`#${channel}`);
        this.system(this.current.name, `you left #${channel}`);
        return;
      }
      case "create": {
        if (!first) return this.usage(spec.name);
        const channel = stripPrefix(first, "#");
        const topic = afterArgs(parsed.rest, 1).trim();
        await this.connector.createChannel(channel, topic);
        this.channels.add(channel);
        const window = this.ensureWindow(`#${channel}`);
        window.topic = topic || null;
        this.switchTo(this.windows.indexOf(window));
        this.system(window.name, `created #${channel}; you are its admin`);
        return;
      }
      case "delete": {
        if (!first) return this.usage(spec.name);
        const channel = stripPrefix(first, "#");
        await this.connector.deleteChannel(channel);
        this.channels.delete(channel);
        this.closeWindow(`#${channel}`);
        this.system(this.current.name, `deleted #${channel}`);
        return;
      }
      case "topic":
        return this.commandTopic(parsed.rest);
      case "channels":
        return this.commandChannels(first ?? "*");
      case "history": {
        if (this.current.kind === "status") return this.error(here, "switch to a conversation first (/query)");
        const count = second === undefined && first !== undefined ? Number(first) : historyPageDefault;
        if (!Number.isInteger(count) || count < 1 || count > 500) return this.error(here, "count must be 1 to 500");
        return this.loadOlder(this.current, count);
      }
      case "read":
        return this.commandRead();
      case "delete-account":
        return this.commandDeleteAccount();
      case "win": {
        const index = Number(first);
        if (!Number.isInteger(index) || index < 1 || index > this.windows.length) return this.error(here, `no window ${first ?? ""}; there are ${this.windows.length}`);
        this.switchTo(index - 1);
        return;
      }
      case "close":
        if (this.current.kind === "status") return this.error(here, "the status window stays open");
        this.closeWindow(this.current.name);
        return;
      case "quit":
        this.quit();
        return;
    }
  }

  /** One channel's listing (topic, flags), or undefined if there is no such channel. */
  private async findChannel(name: string) {
    return (await this.connector.listChannels(name, undefined, 1)).channels.find((item) => item.name === name);
  }

  private async commandRegister(username: string | undefined): Promise<void> {
    if (!username) return this.usage("register");
    const secret = await this.ask(`New password for ${username}:`, true);
    if (secret === null) return;
    const again = await this.ask("Repeat the password:", true);
    if (again === null) return;
    if (again !== secret) return this.error(this.current.name, "the passwords differ; nothing was registered");
    const result = await this.connector.register(username, secret);
    this.onLoggedIn(result, "registered and logged in");
  }

  private async login(username: string, password: string): Promise<void> {
    const result = await this.connector.login(username, password);
    this.onLoggedIn(result, "logged in");
  }

  private async commandUsers(pattern: string): Promise<void> {
    const result = await this.connector.listUsers(pattern, undefined, 500);
    for (const user of result.users) this.rememberUser(user.username);
    const names = result.users.map((user) => `${user.username}${user.online ? "*" : ""}`);
    this.system(this.current.name, `users matching ${pattern} (* = online): ${names.join(" ") || "none"}${result.next ? " ..." : ""}`);
  }

  private async commandChannels(pattern: string): Promise<void> {
    const result = await this.connector.listChannels(pattern, undefined, 500);
    const here = this.current.name;
    if (result.channels.length === 0) return this.system(here, `no channels match ${pattern}`);
    for (const channel of result.channels) {
      this.channels.add(channel.name);
      const flags = [`${channel.members} member${channel.members === 1 ? "" : "s"}`, channel.joined ? "joined" : null, channel.admin ? `admin ${channel.admin}` : null].filter(Boolean);
      this.system(here, `#${channel.name} (${flags.join(", ")})${channel.topic ? ` ${channel.topic}` : ""}`);
    }
  }

  private async commandTopic(rest: string): Promise<void> {
    const args = rest.trim().split(/\s+/).filter(Boolean);
    let channel: string | null = null;
    let text = rest.trim();
    if (args[0]?.startsWith("#")) {
      channel = args[0].slice(1);
      text = afterArgs(rest, 1).trim();
    } else if (this.current.kind === "channel") {
      channel = this.current.name.slice(1);
    }
    if (!channel) return this.usage("topic");
    if (text.length === 0) {
      const found = await this.findChannel(channel);
      if (!found) return this.error(this.current.name, `no channel #${channel}`);
      this.system(this.current.name, `topic of #${channel}: ${found.topic || "(none)"}`);
      return;
    }
    await this.connector.setTopic(channel, text);
  }

  private async commandRead(): Promise<void> {
    const result = await this.connector.readUndelivered(500);
    if (result.messages.length === 0) return this.system(this.current.name, "no undelivered messages");
    const senders = new Map<string, number>();
    for (const message of result.messages) {
      this.addMessage(this.ensureWindow(message.conversation), message);
      senders.set(message.conversation, (senders.get(message.conversation) ?? 0) + 1);
    }
    const summary = [...senders].map(([conversation, count]) => `${conversation} (${count})`).join(", ");
    this.system(this.current.name, `${result.messages.length} message(s) that arrived while you were away: ${summary}${result.remaining > 0 ? `; ${result.remaining} more: /read again` : ""}`);
  }

  private async commandDeleteAccount(): Promise<void> {
    if (!this.user) return this.error(this.current.name, "log in first");
    const secret = await this.ask(`Password of ${this.user} (deletes the account):`, true);
    if (secret === null) return;
    const confirm = await this.ask("Type DELETE to confirm:", false);
    if (confirm !== "DELETE") return this.system(this.current.name, "not deleted");
    await this.connector.deleteAccount(secret);
  }

  private usage(name: string): void {
    for (const text of helpLines(name)) this.error(this.current.name, `usage: ${text}`);
  }

  /** Shows a prompt in the input line; resolves with the answer, or null on Esc. */
  private ask(label: string, masked: boolean): Promise<string | null> {
    this.prompt?.resolve(null);
    return new Promise((resolve) => {
      this.prompt = { label, masked, resolve };
      this.input.clear();
      this.changed();
    });
  }

  // ---- sending ----------------------------------------------------------------------------------

  /**
   * Sends `text` to `target` ("#channel" or "@user") and adds it to that conversation's window (opened if
   * needed). `typedIn` is the window the user typed it in: a failure is shown there, naming the text, and a
   * /msg typed in another window is echoed there as "[msg(bob)] text", as irssi does.
   */
  private async sendText(target: string, text: string, typedIn: ChatWindow): Promise<void> {
    if (!this.user) return this.error(typedIn.name, "log in first (/login <name> or /register <name>)");
    let message: MessageView;
    try {
      message = target.startsWith("#") ? await this.connector.post(target.slice(1), text) : await this.connector.sendDm(target.slice(1), text);
    } catch (error) {
      if (!(error instanceof ChatError)) throw error;
      this.options.logger.info({ code: error.code, message: error.message }, "send failed");
      return this.error(typedIn.name, this.notSent(error, text));
    }
    // The push event for this message may come first or later; addMessage keeps each id once.
    const window = this.ensureWindow(target);
    this.addMessage(window, message);
    if (window.name.toLowerCase() !== typedIn.name.toLowerCase()) this.push(typedIn.name, "own", message.body, { to: target.slice(1) });
  }

  /** What the user sees when a send finally failed: why, and the text to retype (if it needs retyping). */
  private notSent(error: ChatError, text: string): string {
    const seconds = Math.round((this.options.retryBudgetMs ?? retryBudgetMs) / 1000);
    const chars = [...text.replace(/\s+/g, " ").trim()];
    const quoted = `"${chars.length > 60 ? `${chars.slice(0, 57).join("")}...` : chars.join("")}"`;
    if (error.code === errorCodes.OUTCOME_UNKNOWN) return `maybe not sent (no answer within ${seconds} s; it was sent at most once, so it may still appear later): ${quoted}`;
    if (error.code === errorCodes.UNAVAILABLE) return `not sent (no primary answered within ${seconds} s): ${quoted}`;
    return `not sent (${error.code}: ${error.message}): ${quoted}`;
  }

  // ---- session and events -------------------------------------------------------------------------

  private onLoggedIn(result: LoginResult, what: string): void {
    this.resetWindows();
    this.user = result.username;
    this.rememberUser(result.username);
    this.system(statusName, `${what} as ${result.username}`);
    void this.run(() => this.loadConversations(result.unread));
    this.changed();
  }

  private async loadConversations(unread: UnreadSummary): Promise<void> {
    const channels = await this.connector.listChannels("*", undefined, 500);
    for (const channel of channels.channels) {
      this.channels.add(channel.name);
      if (!channel.joined) continue;
      const window = this.ensureWindow(`#${channel.name}`);
      window.topic = channel.topic || null;
    }
    for (const entry of unread.conversations) {
      if (entry.unread === 0) continue;
      const window = this.ensureWindow(entry.conversation);
      if (window !== this.current) window.unread = Math.max(window.unread, entry.unread);
    }
    if (unread.undelivered > 0) this.system(statusName, `${unread.undelivered} direct message(s) arrived while you were away: /read shows them`);
    const users = await this.connector.listUsers("*", undefined, 500);
    for (const user of users.users) this.rememberUser(user.username);
    this.changed();
  }

  private onSession(session: { username: string } | null, reason: string): void {
    if (session) return;
    const had = this.user;
    this.user = null;
    this.resetWindows();
    if (had) this.system(statusName, `session of ${had} ended (${reason})`);
    this.changed();
  }

  private onConnectorState(change: StateChange): void {
    const before = this.connection;
    this.connection = change;
    if (change.state === "failing-over" && before.state === "ready") {
      this.notice(`lost server ${before.serverId}: ${change.reason}; failing over...`);
    } else if (change.state === "ready") {
      if (this.lastReadyServer !== null && this.lastReadyServer !== change.serverId) this.notice(`failover complete: now on server ${change.serverId} (was server ${this.lastReadyServer})`);
      else if (this.lastReadyServer === null) this.system(statusName, `connected to server ${change.serverId}`);
      else this.notice(`reconnected to server ${change.serverId}`);
      this.lastReadyServer = change.serverId;
    }
    this.options.logger.info({ state: change.state, serverId: change.serverId, reason: change.reason }, "connector state");
    this.changed();
  }

  /** A connection notice goes to every window, as irssi prints a disconnect in every window of that server. */
  private notice(text: string): void {
    for (const window of this.windows) this.push(window.name, "system", text);
  }

  private onChatEvent({ event }: ChatEvent): void {
    switch (event.kind) {
      case "message":
        this.rememberUser(event.message.from);
        this.addMessage(this.ensureWindow(event.message.conversation), event.message);
        return;
      case "message_deleted":
        return this.onMessageDeleted(event.messageId);
      case "member_joined":
        this.rememberUser(event.user);
        if (event.user !== this.user) this.system(this.ensureWindow(`#${event.channel}`).name, `${event.user} joined #${event.channel}`);
        return;
      case "member_left":
        if (event.user !== this.user) this.systemIfOpen(`#${event.channel}`, `${event.user} left #${event.channel}`);
        return;
      case "topic_changed": {
        const window = this.windows.find((candidate) => candidate.name === `#${event.channel}`);
        if (window) window.topic = event.topic || null;
        this.systemIfOpen(`#${event.channel}`, `${event.by} set the topic of #${event.channel}: ${event.topic || "(none)"}`);
        return;
      }
      case "channel_deleted":
        this.channels.delete(event.channel);
        this.systemIfOpen(`#${event.channel}`, `#${event.channel} was deleted by ${event.by}`);
        this.system(statusName, `#${event.channel} was deleted by ${event.by}`);
        return;
      case "admin_changed":
        this.systemIfOpen(`#${event.channel}`, `${event.admin ?? "nobody"} is now the admin of #${event.channel}`);
        return;
    }
  }

  private onMessageDeleted(messageId: number): void {
    for (const window of this.windows) {
      if (!window.messageIds.has(messageId)) continue;
      const line = window.lines.find((candidate) => candidate.messageId === messageId);
      if (line) line.text = "(message deleted)";
    }
    this.changed();
  }

  // ---- windows ------------------------------------------------------------------------------------

  private newWindow(name: string, kind: WindowKind): ChatWindow {
    return { name, kind, lines: [], messageIds: new Set(), unread: 0, historyLoaded: kind === "status", topic: null, scrollTop: null, lastActivity: this.nextSequence(), markedRead: 0 };
  }

  private ensureWindow(name: string): ChatWindow {
    const key = name.toLowerCase();
    const found = this.windows.find((window) => window.name.toLowerCase() === key);
    if (found) return found;
    const window = this.newWindow(name, name.startsWith("#") ? "channel" : "dm");
    if (window.kind === "channel") this.channels.add(name.slice(1));
    else this.rememberUser(name.slice(1));
    if (this.windows.length >= windowsMax) this.closeLeastActive();
    this.windows.push(window);
    this.changed();
    return window;
  }

  private closeLeastActive(): void {
    const candidates = this.windows.filter((window) => window.kind !== "status" && window !== this.current);
    candidates.sort((a, b) => a.lastActivity - b.lastActivity);
    if (candidates[0]) this.closeWindow(candidates[0].name);
  }

  private closeWindow(name: string): void {
    const index = this.windows.findIndex((window) => window.name.toLowerCase() === name.toLowerCase());
    if (index <= 0) return;
    const current = this.current;
    this.windows.splice(index, 1);
    const stillThere = this.windows.indexOf(current);
    this.currentIndex = stillThere >= 0 ? stillThere : Math.min(index, this.windows.length - 1);
    this.changed();
  }

  private resetWindows(): void {
    this.windows.splice(1);
    this.currentIndex = 0;
  }

  /** Adds a message once (by id), in id order; counts it as unread unless its window is in view. */
  private addMessage(window: ChatWindow, message: MessageView): void {
    if (window.messageIds.has(message.id)) return;
    window.messageIds.add(message.id);
    const own = message.from === this.user;
    const line: PaneLine = { key: `m${message.id}`, ts: message.ts, kind: own ? "own" : "message", from: message.from, text: message.body, messageId: message.id };
    window.lines.splice(insertionPoint(window.lines, message.id), 0, line);
    this.trim(window);
    window.lastActivity = this.nextSequence();
    if (window === this.current) this.scheduleMarkRead();
    else if (!own) window.unread += 1;
    this.changed();
  }

  private async loadHistory(window: ChatWindow, count: number): Promise<void> {
    window.historyLoaded = true;
    try {
      const messages = await this.connector.history(window.name, { limit: count });
      for (const message of messages) this.addMessageQuietly(window, message);
    } catch (error) {
      window.historyLoaded = false;
      throw error;
    }
    this.scheduleMarkRead();
    this.changed();
  }

  private async loadOlder(window: ChatWindow, count: number): Promise<void> {
    const oldest = window.lines.find((line) => line.messageId !== undefined)?.messageId;
    const messages = await this.connector.history(window.name, oldest !== undefined ? { before: oldest, limit: count } : { limit: count });
    // Messages already shown (an overlapping load) are not counted as loaded.
    const fresh = messages.filter((message) => !window.messageIds.has(message.id));
    for (const message of fresh) this.addMessageQuietly(window, message);
    // The status line below is added after them and pushes out the window's top line if it is full.
    const pushedOut = window.lines.length + 1 > windowLinesMax ? window.lines[0].messageId : undefined;
    const kept = fresh.filter((message) => window.messageIds.has(message.id) && message.id !== pushedOut).length;
    this.system(window.name, describeOlderLoad(fresh.length, kept));
  }

  /** History: added without touching unread counts. */
  private addMessageQuietly(window: ChatWindow, message: MessageView): void {
    const unread = window.unread;
    this.addMessage(window, message);
    window.unread = unread;
  }

  private trim(window: ChatWindow): void {
    const excess = window.lines.length - windowLinesMax;
    if (excess <= 0) return;
    for (const line of window.lines.splice(0, excess)) if (line.messageId !== undefined) window.messageIds.delete(line.messageId);
    if (window.scrollTop !== null) window.scrollTop = Math.max(0, window.scrollTop - excess);
  }

  /** Marks the newest message of the window in view as read on the server, a moment after it shows. */
  private scheduleMarkRead(): void {
    if (this.markReadTimer || !this.user) return;
    this.markReadTimer = setTimeout(() => {
      this.markReadTimer = null;
      const window = this.current;
      if (window.kind === "status" || window.scrollTop !== null || !this.user) return;
      const newest = window.lines.reduce((max, line) => Math.max(max, line.messageId ?? 0), 0);
      if (newest <= window.markedRead) return;
      window.markedRead = newest;
      this.connector.markRead(window.name, newest).catch((error: Error) => this.options.logger.warn({ err: error.message, conversation: window.name }, "mark_read failed"));
    }, markReadDelayMs);
  }

  // ---- lines ----------------------------------------------------------------------------------------

  private system(windowName: string, text: string): void {
    this.push(windowName, "system", text);
  }

  private systemIfOpen(windowName: string, text: string): void {
    if (this.windows.some((window) => window.name.toLowerCase() === windowName.toLowerCase())) this.system(windowName, text);
  }

  private error(windowName: string, text: string): void {
    this.push(windowName, "error", text);
  }

  private showError(windowName: string, error: unknown): void {
    if (error instanceof ChatError) {
      this.options.logger.info({ code: error.code, message: error.message }, "command failed");
      this.error(windowName, `${error.code}: ${error.message}`);
    } else {
      this.options.logger.error({ err: error }, "unexpected error");
      this.error(windowName, `internal error: ${(error as Error).message}`);
    }
  }

  private push(windowName: string, kind: PaneLine["kind"], text: string, extra: Pick<PaneLine, "to"> = {}): void {
    const window = this.windows.find((candidate) => candidate.name.toLowerCase() === windowName.toLowerCase()) ?? this.windows[0];
    window.lines.push({ key: `s${this.nextSequence()}`, ts: Date.now(), kind, text, ...extra });
    this.trim(window);
    this.changed();
  }

  private rememberUser(name: string): void {
    if (this.users.size < completionNamesMax) this.users.add(name);
  }

  private nextSequence(): number {
    this.sequence += 1;
    return this.sequence;
  }
}

function stripPrefix(name: string, prefix: string): string {
  return name.startsWith(prefix) ? name.slice(prefix.length) : name;
}

function validConversation(name: string): boolean {
  return name.startsWith("#") ? ChannelName.safeParse(name.slice(1)).success : Username.safeParse(name.slice(1)).success;
}

/**
 * Where a message goes in a window: after every message line with a lower id. A live message
 * (newer than all) goes at the end, after any system lines; an older one goes above every newer
 * message, past the system lines between them ("loaded 500 older message(s)" stays below).
 */
function insertionPoint(lines: readonly PaneLine[], id: number): number {
  for (let index = lines.length - 1; index >= 0; index -= 1) {
    const newest = lines[index].messageId;
    if (newest === undefined) continue;
    if (newest < id) return lines.length;
    break;
  }
  const firstNewer = lines.findIndex((line) => line.messageId !== undefined && line.messageId > id);
  return firstNewer < 0 ? lines.length : firstNewer;
}

/**
 * What /history says it did. Older messages go to the top of the window, and a window keeps only its
 * newest lines, so in a full window some or all of them are dropped again at once: say so, rather
 * than "loaded" about lines that are not there.
 */
function describeOlderLoad(loaded: number, kept: number): string {
  if (loaded === 0) return "no older messages";
  if (kept === loaded) return `loaded ${loaded} older message(s); PgUp to read them`;
  if (kept === 0) return `window full at ${windowLinesMax} lines: no older messages fit (/close, then /query it again)`;
  return `loaded ${kept} older message(s), ${loaded - kept} did not fit (${windowLinesMax}-line window); PgUp to read them`;
}
