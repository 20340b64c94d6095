// The login form: user name + password → a session (cookie + CSRF token held by the ApiClient).
import { type ApiClient, ApiError } from "../api/http";
import { type Session, SessionApi } from "../api/session";
import { type Mounted, errorText, h, message } from "../dom";

export interface LoginOptions {
  client: ApiClient;
  onLogin: (session: Session) => void;
  /** Shown above the form, e.g. "Your session expired". */
  notice?: string;
}

export function mountLogin(root: HTMLElement, options: LoginOptions): Mounted {
  const sessions = new SessionApi(options.client);
  const username = h("input", { name: "username", autocomplete: "username", required: true, autofocus: true });
  const password = h("input", { name: "password", type: "password", autocomplete: "current-password", required: true });
  const status = h("div", { class: "form-status" });
  const submit = h("button", { type: "submit", class: "primary" }, "Log in");
  const form = h(
    "form",
    { class: "login", "aria-label": "Log in" },
    h("h1", null, "pacskit"),
    options.notice ? message(options.notice, "info") : null,
    h("label", null, "User name", username),
    h("label", null, "Password", password),
    submit,
    status,
  );
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    submit.disabled = true;
    status.replaceChildren();
    sessions
      .login(username.value.trim(), password.value)
      .then((session) => options.onLogin(session))
      .catch((error: unknown) => {
        const text = error instanceof ApiError && error.status === 401 ? "Wrong user name or password." : errorText(error);
        status.replaceChildren(message(text));
        password.value = "";
        password.focus();
      })
      .finally(() => {
        submit.disabled = false;
      });
  });
  root.replaceChildren(form);
  return { destroy: () => form.remove() };
}
