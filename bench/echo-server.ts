// A loopback TCP echo server for the round-trip measurement in bench/limits.ts.
// Listens on 127.0.0.1 (a free port), prints "port N" on stdout, echoes every byte it receives.
import net from "node:net";

const server = net.createServer((socket) => {
  socket.setNoDelay(true);
  socket.on("data", (data) => socket.write(data));
  socket.on("error", () => {});
});
server.listen(0, "127.0.0.1", () => {
  process.stdout.write(`port ${(server.address() as net.AddressInfo).port}\n`);
});
