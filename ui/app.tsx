// The full-screen terminal UI (Ink 6 + React 19), irssi style:
//   top bar (conversation and topic) / message pane / status bar / input line.
// All state lives in ChatController; this file renders it and forwards keys.
import { Box, Text, useInput, useStdout, type Key } from "ink";
import { useEffect, useState, useSyncExternalStore } from "react";
import type { ChatController } from "./controller.js";
import { fit, type PaneRow } from "./layout.js";

const clockRefreshMs = 15_000;

const rowColors: Record<PaneRow["kind"], string | undefined> = {
  message: undefined,
  own: "cyan",
  system: "gray",
  error: "red",
  more: "yellow",
};

export function App({ controller }: { controller: ChatController }) {
  useSyncExternalStore(controller.subscribe, controller.getVersion);
  const { stdout } = useStdout();
  const [size, setSize] = useState({ columns: stdout.columns || 80, rows: stdout.rows || 24 });
  const [, setTick] = useState(0);

  useEffect(() => {
    const onResize = () => setSize({ columns: stdout.columns || 80, rows: stdout.rows || 24 });
    stdout.on("resize", onResize);
    const clock = setInterval(() => setTick((tick) => tick + 1), clockRefreshMs);
    return () => {
      stdout.off("resize", onResize);
      clearInterval(clock);
    };
  }, [stdout]);

  useInput((input, key) => onKey(controller, input, key));

  const width = Math.max(10, size.columns);
  // One row is left free: a frame as tall as the terminal makes Ink clear the screen on every update.
  const height = Math.max(4, size.rows - 1);
  const paneHeight = height - 3;
  controller.setViewport(width, paneHeight);
  const rows = controller.paneRows();

  return (
    <Box flexDirection="column" width={width} height={height}>
      <Text backgroundColor="blue" color="white" wrap="truncate">
        {fit(controller.topBar(), width)}
      </Text>
      <Box flexDirection="column" height={paneHeight} overflow="hidden">
        {rows.map((row, index) => (
          <Text key={index} color={rowColors[row.kind]} wrap="truncate">
            {row.text.length > 0 ? row.text : " "}
          </Text>
        ))}
      </Box>
      <Text backgroundColor="blue" color="white" wrap="truncate">
        {fit(controller.statusBar(), width)}
      </Text>
      <InputRow controller={controller} width={width} />
    </Box>
  );
}

function InputRow({ controller, width }: { controller: ChatController; width: number }) {
  const label = `${controller.inputLabel()} `;
  const masked = controller.activePrompt?.masked ?? false;
  const view = controller.input.view(Math.max(1, width - [...label].length - 1));
  const mask = (text: string) => (masked ? "*".repeat([...text].length) : text);
  return (
    <Text wrap="truncate">
      <Text color="green">{label}</Text>
      {mask(view.before)}
      <Text inverse>{view.at === " " ? " " : mask(view.at)}</Text>
      {mask(view.after)}
    </Text>
  );
}

/** Key bindings. Backspace arrives as `delete` in most terminals (0x7f), so both erase backwards. */
export function onKey(controller: ChatController, input: string, key: Key): void {
  const line = controller.input;
  if (key.ctrl && input === "c") return controller.quit();
  if (key.return) return controller.submit();
  if (key.escape) return controller.cancel();
  if (key.tab) return controller.complete();
  if (key.pageUp) return controller.scroll(-1);
  if (key.pageDown) return controller.scroll(1);
  if (key.upArrow) line.previous();
  else if (key.downArrow) line.next();
  else if (key.leftArrow) key.meta ? controller.switchBy(-1) : line.left();
  else if (key.rightArrow) key.meta ? controller.switchBy(1) : line.right();
  else if (key.home) line.home();
  else if (key.end) line.end();
  else if (key.backspace || key.delete) line.backspace();
  else if (key.ctrl) {
    const actions: Record<string, () => void> = {
      a: () => line.home(),
      e: () => line.end(),
      u: () => line.clear(),
      w: () => line.deleteWordBack(),
      d: () => line.deleteForward(),
      n: () => controller.switchBy(1),
      p: () => controller.switchBy(-1),
    };
    actions[input]?.();
  } else if (key.meta && /^[0-9]$/.test(input)) {
    return controller.switchTo(input === "0" ? 9 : Number(input) - 1);
  } else if (input.length > 0) {
    // Fast typing or a paste arrives as one chunk: a line break in it submits what came before it,
    // and a tab in it completes.
    for (const piece of input.split(/(\r\n|\r|\n|\t)/)) {
      if (piece === "\t") controller.complete();
      else if (/^[\r\n]/.test(piece)) controller.submit();
      else if (piece.length > 0) {
        line.insert(piece);
        controller.edited();
      }
    }
    return;
  }
  controller.edited();
}
