// What each role may do, mirroring the server's checks (the server refuses with 403 anyway: the UI
// only hides what would be refused).
import type { Role } from "./api/session";

export type Action =
  | "search"
  | "view"
  | "retrieve"
  | "send"
  | "manage-jobs"
  | "logs"
  | "manager-read"
  | "manager-write"
  | "users";

const RANK: Record<Role, number> = { viewer: 0, operator: 1, admin: 2 };

const NEEDS: Record<Action, Role> = {
  search: "viewer",
  view: "viewer",
  retrieve: "operator",
  send: "operator",
  "manage-jobs": "operator",
  logs: "operator",
  "manager-read": "operator",
  "manager-write": "admin",
  users: "admin",
};

export function can(role: Role | null | undefined, action: Action): boolean {
  if (!role || !(role in RANK)) return false;
  return RANK[role] >= RANK[NEEDS[action]];
}
