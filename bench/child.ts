// Helper processes of the bench (the echo server, the bare pipeline): started with tsx, each prints
// "port N" on stdout once it listens on 127.0.0.1, and is stopped by its PID.
import { execa, type ResultPromise } from "execa";
import { resolve } from "node:path";

export type PortChild = { process: ResultPromise; port: number };

const portTimeoutMs = 20_000;

/** Starts bench/<script> with `args` and resolves once it reported its port. */
export async function spawnWithPort(script: string, args: string[] = []): Promise<PortChild> {
  const child = execa(process.execPath, ["--import", "tsx", resolve(import.meta.dirname, script), ...args], {
    cwd: resolve(import.meta.dirname, ".."),
    stdio: ["ignore", "pipe", "inherit"],
    reject: false,
    cleanup: true,
  });
  const label = [script, ...args.slice(0, 1)].join(" ");
  try {
    const port = await new Promise<number>((done, fail) => {
      let text = "";
      const timer = setTimeout(() => fail(new Error(`${label} did not report its port`)), portTimeoutMs);
      child.stdout!.on("data", (chunk: Buffer) => {
        text += chunk.toString();
        const match = /port (\d+)/.exec(text);
        if (match) {
          clearTimeout(timer);
          done(Number(match[1]));
        }
      });
      void child.then(() => fail(new Error(`${label} exited before listening`)));
    });
    return { process: child, port };
  } catch (error) {
    await stopChildren([{ process: child, port: 0 }]);
    throw error;
  }
}

/** SIGKILL by PID, then wait for each to exit. */
export async function stopChildren(children: PortChild[]): Promise<void> {
  for (const child of children) {
    if (child.process.pid === undefined) continue;
    try {
      process.kill(child.process.pid, "SIGKILL");
    } catch {
      // already gone
    }
  }
  await Promise.all(children.map((child) => child.process));
}
