// The routes between the servers of a test cluster, carried through this
// process so that one server can be cut off from the others and healed: a
// network partition between NATS servers (between datacenters, or a switch
// failing inside one), where the host↔server partitions of `caravan chaos`
// cut a client off instead.
//
// Each server's route port gets one listener here; every server is told to
// route to the others through these listeners and to advertise its own, so
// the routes servers learn by gossip lead through them too. A connection
// names the server that dialled it in the INFO it sends first
// ("server_name"), so a cut holds every connection with the cut server at
// either end, whichever side dialled. While cut, a connection carries nothing
// and drops nothing (bytes wait here until the heal), as a partition that
// heals before TCP gives up; the servers' own timeouts (Raft's election,
// route pings, write deadlines) decide what happens meanwhile.
import { createConnection, createServer, type AddressInfo, type Server, type Socket } from 'node:net';

// The dialler's first INFO is well within this; past it, the dialler stays unknown.
const SNIFF_BYTES = 64 * 1024;
const SERVER_NAME = /"server_name":"([^"]+)"/;

interface RouteConnection {
  readonly acceptor: string;
  dialer: string | undefined;
  sniffed: string;
  readonly toServer: Socket;
  readonly fromDialer: Socket;
  /** Bytes held while the connection is cut, each with the socket it is for. */
  readonly held: Array<{ to: Socket; chunk: Buffer }>;
}

export class RouteLinks {
  private readonly listeners: Server[] = [];
  private readonly connections = new Set<RouteConnection>();
  private readonly cut = new Set<string>();

  /** Listens on a free loopback port for routes to `server` (its route port `routePort`); resolves to that port. */
  async open(server: string, routePort: number): Promise<number> {
    const listener = createServer((socket) => this.accept(server, routePort, socket));
    this.listeners.push(listener);
    await new Promise<void>((resolve, reject) => {
      listener.once('error', reject);
      listener.listen(0, '127.0.0.1', () => resolve());
    });
    return (listener.address() as AddressInfo).port;
  }

  /** Cuts `server` off from every other server (true), or heals it (false): held bytes then flow, in order. */
  partition(server: string, cut: boolean): void {
    if (cut) this.cut.add(server);
    else this.cut.delete(server);
    for (const c of this.connections) this.flush(c);
  }

  /** Whether `server` is cut off now. */
  isCut(server: string): boolean {
    return this.cut.has(server);
  }

  async stop(): Promise<void> {
    for (const c of this.connections) { c.toServer.destroy(); c.fromDialer.destroy(); }
    this.connections.clear();
    await Promise.all(this.listeners.map((l) => new Promise((resolve) => l.close(resolve))));
    this.listeners.length = 0;
  }

  private accept(acceptor: string, routePort: number, fromDialer: Socket): void {
    const toServer = createConnection({ host: '127.0.0.1', port: routePort });
    const c: RouteConnection = { acceptor, dialer: undefined, sniffed: '', toServer, fromDialer, held: [] };
    this.connections.add(c);
    const close = () => {
      this.connections.delete(c);
      toServer.destroy();
      fromDialer.destroy();
    };
    for (const s of [toServer, fromDialer]) {
      s.setNoDelay(true);
      s.on('error', close);
      s.on('close', close);
    }
    fromDialer.on('data', (chunk: Buffer) => {
      if (c.dialer === undefined && c.sniffed.length < SNIFF_BYTES) {
        c.sniffed += chunk.toString('latin1');
        c.dialer = SERVER_NAME.exec(c.sniffed)?.[1];
        if (c.dialer !== undefined) c.sniffed = '';
      }
      this.send(c, toServer, chunk);
    });
    toServer.on('data', (chunk: Buffer) => this.send(c, fromDialer, chunk));
  }

  // A connection whose dialler is not yet known is held while any server is cut: it may be the cut one.
  private blocked(c: RouteConnection): boolean {
    if (this.cut.has(c.acceptor)) return true;
    return c.dialer === undefined ? this.cut.size > 0 : this.cut.has(c.dialer);
  }

  private send(c: RouteConnection, to: Socket, chunk: Buffer): void {
    c.held.push({ to, chunk });
    this.flush(c);
  }

  private flush(c: RouteConnection): void {
    if (this.blocked(c)) return;
    for (const { to, chunk } of c.held.splice(0)) if (!to.destroyed) to.write(chunk);
  }
}
