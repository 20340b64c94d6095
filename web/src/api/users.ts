// Users of the workstation (/api/users, admin).
import type { ApiClient } from "./http";
import type { Role } from "./session";

export interface User {
  username: string;
  role: Role;
}

const enc = encodeURIComponent;

export class UsersApi {
  constructor(private readonly client: ApiClient) {}

  list(): Promise<User[]> {
    return this.client.get("/api/users");
  }

  add(username: string, password: string, role: Role): Promise<User> {
    return this.client.post("/api/users", { username, password, role });
  }

  update(username: string, changes: { password?: string; role?: Role }): Promise<User> {
    return this.client.put(`/api/users/${enc(username)}`, changes);
  }

  remove(username: string): Promise<void> {
    return this.client.delete(`/api/users/${enc(username)}`);
  }
}
