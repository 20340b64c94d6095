// The service manager's data: the server's admin API under /api/admin and the servers root.
import type { ApiClient } from "./http";
import type { JsonSchema } from "../schema";

export interface ServerStatus {
  ae_title: string;
  host: string;
  port: number;
  pid: number;
  uptime_seconds: number;
  associations_active: number;
  connections_open: number;
  pending_requests: number;
  max_associations: number;
  addins: string[];
  [key: string]: unknown;
}

export interface OperationStats {
  [key: string]: unknown;
}

export interface Statistics {
  connections_total: number;
  associations_total: number;
  associations_rejected: number;
  associations_aborted: number;
  associations_released: number;
  outgoing_associations_total: number;
  bytes_in: number;
  bytes_out: number;
  associations_active: number;
  pending_requests: number;
  operations: Record<string, OperationStats>;
  [key: string]: unknown;
}

export interface AeTitle {
  title: string;
  host: string;
  port: number;
  tls?: boolean;
  description?: string;
  allowed_services?: string[] | null;
  [key: string]: unknown;
}

export interface Client {
  id: number;
  calling_ae: string;
  called_ae: string;
  address: string;
  since: string;
  state: string;
  current_operation: unknown;
  operations: number | null;
  bytes_in: number | null;
  bytes_out: number | null;
}

export interface AddIn {
  name: string;
  description: string;
  origin: string;
  loaded: boolean;
  configured: Record<string, unknown>;
  schema: JsonSchema;
  options: Record<string, unknown> | null;
  error?: string;
}

export interface ManagedServer {
  name: string;
  ae_title: string;
  port: number;
  state: string;
  pid: number | null;
}

export interface AdminEvent {
  event: string;
  [key: string]: unknown;
}

const enc = encodeURIComponent;

export class AdminApi {
  constructor(private readonly client: ApiClient) {}

  status(): Promise<ServerStatus> {
    return this.client.get("/api/admin/status");
  }

  statistics(): Promise<Statistics> {
    return this.client.get("/api/admin/statistics");
  }

  aeTitles(): Promise<AeTitle[]> {
    return this.client.get("/api/admin/ae-titles");
  }

  addAeTitle(entry: AeTitle): Promise<AeTitle> {
    return this.client.post("/api/admin/ae-titles", entry);
  }

  editAeTitle(title: string, entry: AeTitle): Promise<AeTitle> {
    return this.client.put(`/api/admin/ae-titles/${enc(title)}`, entry);
  }

  removeAeTitle(title: string): Promise<void> {
    return this.client.delete(`/api/admin/ae-titles/${enc(title)}`);
  }

  clients(): Promise<Client[]> {
    return this.client.get("/api/admin/clients");
  }

  disconnect(id: number): Promise<void> {
    return this.client.delete(`/api/admin/clients/${id}`);
  }

  addins(): Promise<AddIn[]> {
    return this.client.get("/api/admin/addins");
  }

  /** Writes options to server.toml (null resets one to its default); `reload` applies them at once. */
  editAddin(name: string, changes: Record<string, unknown>, reload = false): Promise<Record<string, unknown>> {
    return this.client.patch(`/api/admin/addins/${enc(name)}${reload ? "?reload=true" : ""}`, changes);
  }

  reload(): Promise<{ addins: string[]; restart_needed: string[]; previous_associations: number }> {
    return this.client.post("/api/admin/reload");
  }

  /** The live event feed: connection, operation, error, admin. Returns the closer. */
  events(onEvent: (event: AdminEvent) => void, onError?: () => void, onOpen?: () => void): () => void {
    const handler = (data: unknown) => onEvent(data as AdminEvent);
    return this.client.events(
      "/api/admin/events",
      { connection: handler, operation: handler, error: handler, admin: handler },
      onError,
      onOpen,
    );
  }

  /** The servers of the servers root, or null when this server runs standalone (404). */
  async servers(): Promise<ManagedServer[] | null> {
    try {
      return await this.client.get<ManagedServer[]>("/api/servers");
    } catch (error) {
      if ((error as { status?: number }).status === 404) return null;
      throw error;
    }
  }

  createServer(entry: { name: string; ae_title: string; port: number }): Promise<ManagedServer> {
    return this.client.post("/api/servers", entry);
  }

  serverAction(name: string, action: "start" | "stop" | "restart"): Promise<unknown> {
    return this.client.post(`/api/servers/${enc(name)}/${action}`);
  }
}
