// A fault proxy for one peer link (server i dials server j through it). It forwards whole frames
// (newline-delimited), so it can drop single messages without corrupting the stream, delay them
// (keeping order), or cut one direction entirely while the TCP connection stays open — the way a
// dead NIC or a one-way firewall rule looks to the servers: no FIN, just silence.
import net from "node:net";

export type DirectionFaults = {
  /** Probability of dropping each frame. */
  dropRate: number;
  /** Added delay per frame, in ms. */
  delayMs: number;
  /** Forward nothing in this direction. */
  cut: boolean;
};

export const healthy = (): DirectionFaults => ({ dropRate: 0, delayMs: 0, cut: false });

export class LinkProxy {
  /** Faults for frames from the dialing server to the accepting one ("forward") and back. */
  readonly forward: DirectionFaults = healthy();
  readonly backward: DirectionFaults = healthy();
  private server: net.Server | undefined;
  private readonly sockets = new Set<net.Socket>();
  port = 0;
  dropped = 0;

  constructor(
    readonly from: number,
    readonly to: number,
    private readonly targetPort: number,
    private readonly random: () => number,
  ) {}

  async listen(port = 0): Promise<number> {
    this.server = net.createServer((client) => this.accept(client));
    await new Promise<void>((done) => this.server!.listen(port, "127.0.0.1", () => done()));
    this.port = (this.server.address() as net.AddressInfo).port;
    return this.port;
  }

  heal(): void {
    Object.assign(this.forward, healthy());
    Object.assign(this.backward, healthy());
  }

  close(): void {
    for (const socket of this.sockets) socket.destroy();
    this.server?.close();
  }

  private accept(client: net.Socket): void {
    const upstream = net.connect({ host: "127.0.0.1", port: this.targetPort });
    for (const socket of [client, upstream]) {
      this.sockets.add(socket);
      socket.setNoDelay(true);
      socket.on("error", () => {});
      socket.on("close", () => {
        this.sockets.delete(socket);
        client.destroy();
        upstream.destroy();
      });
    }
    this.pipe(client, upstream, this.forward);
    this.pipe(upstream, client, this.backward);
  }

  private pipe(source: net.Socket, sink: net.Socket, faults: DirectionFaults): void {
    let partial = "";
    let lastRelease = 0;
    source.on("data", (data: Buffer) => {
      const text = partial + data.toString("utf8");
      const lines = text.split("\n");
      partial = lines.pop()!;
      for (const line of lines) {
        if (faults.cut) continue;
        if (faults.dropRate > 0 && this.random() < faults.dropRate) {
          this.dropped += 1;
          continue;
        }
        const frame = `${line}\n`;
        if (faults.delayMs <= 0) {
          sink.write(frame);
          continue;
        }
        // Keep order: a frame is released no earlier than the one before it.
        const releaseAt = Math.max(Date.now() + faults.delayMs, lastRelease);
        lastRelease = releaseAt;
        setTimeout(() => sink.destroyed || sink.write(frame), releaseAt - Date.now());
      }
    });
  }
}
