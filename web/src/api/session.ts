// The session API (/api/session): login, who is logged in, logout.
import type { ApiClient } from "./http";

export type Role = "viewer" | "operator" | "admin";

export interface Session {
  user: string;
  role: Role;
  csrf_token: string;
  expires_at: string;
}

export class SessionApi {
  constructor(private readonly client: ApiClient) {}

  /** Logs in; the server sets the HttpOnly session cookie, the CSRF token is kept by the client. */
  async login(username: string, password: string): Promise<Session> {
    const session = await this.client.json<Session>("POST", "/api/session", { username, password });
    this.client.csrfToken = session.csrf_token;
    return session;
  }

  /** The current session, or null when there is none (401). */
  async current(): Promise<Session | null> {
    try {
      const response = await this.client.request("GET", "/api/session");
      const session = (await response.json()) as Session;
      this.client.csrfToken = session.csrf_token;
      return session;
    } catch (error) {
      if (error instanceof Error && "status" in error && (error as { status: number }).status === 401) return null;
      throw error;
    }
  }

  async logout(): Promise<void> {
    await this.client.delete("/api/session");
    this.client.csrfToken = null;
  }
}
