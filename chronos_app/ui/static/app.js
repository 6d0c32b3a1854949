// The Chronos dashboard: Alpine.js components over the REST API and one EventSource per page.
// No build step: this file is served as it is. Pages are addressed by the URL fragment (#/jobs/ID).
"use strict";

const TOKEN_KEY = "chronos.token";

// ------------------------------------------------------------------------------------------- API

class ApiError extends Error {
  constructor(status, problem) {
    super((problem && (problem.detail || problem.title)) || `HTTP ${status}`);
    this.status = status;
    this.problem = problem || {};
  }
  // {"/payload/command": "reason", ...} from a 422 problem's errors
  get fields() {
    const out = {};
    for (const e of this.problem.errors || []) out[e.pointer] = e.reason;
    return out;
  }
}

const api = {
  token() { return sessionStorage.getItem(TOKEN_KEY) || ""; },

  async request(method, path, body, contentType = "application/json") {
    const headers = {Accept: "application/json"};
    const token = this.token();
    if (token) headers.Authorization = `Bearer ${token}`;
    if (body !== undefined) headers["Content-Type"] = contentType;
    let response;
    try {
      response = await fetch(path, {method, headers, body: body === undefined ? undefined : JSON.stringify(body)});
    } catch (exc) {
      throw new ApiError(0, {title: "The server does not answer", detail: String(exc)});
    }
    const text = await response.text();
    let data = null;
    if (text && (response.headers.get("content-type") || "").includes("json")) data = JSON.parse(text);
    else if (text) data = text;
    if (!response.ok) {
      const error = new ApiError(response.status, typeof data === "object" ? data : {detail: data});
      if (response.status === 401) Alpine.store("app").unauthorized();
      throw error;
    }
    return data;
  },
  get(path) { return this.request("GET", path); },
  post(path, body) { return this.request("POST", path, body); },
  put(path, body) { return this.request("PUT", path, body); },
  patch(path, body, type) { return this.request("PATCH", path, body, type); },
  del(path) { return this.request("DELETE", path); },
};

function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== null && v !== undefined && v !== "") q.set(k, v);
  const s = q.toString();
  return s ? `?${s}` : "";
}

// -------------------------------------------------------------------------------- live (one SSE)

// One EventSource for the page: `path` is a /monitor stream. The browser reconnects by itself (sending
// Last-Event-ID); the header shows "reconnecting…" meanwhile. onEvent(type, body) gets every event.
function openStream(path, onEvent, types) {
  const app = Alpine.store("app");
  app.closeStream();
  const params = {types: types ? types.join(",") : null, token: api.token() || null};
  const source = new EventSource(path + query(params));
  app.stream = source;
  app.live = "connecting";
  let reconnecting = false;
  source.onopen = () => {
    app.live = "live";
    if (reconnecting) onEvent("reconnected", null);
    reconnecting = false;
  };
  source.onerror = () => {
    if (app.stream !== source) return;
    if (source.readyState === EventSource.CLOSED) {
      app.live = "reconnecting";  // e.g. a 401 or 5xx answer: EventSource gives up; we retry ourselves
      setTimeout(() => { if (app.stream === source) openStream(path, onEvent, types); }, 3000);
    } else {
      app.live = "reconnecting";
      reconnecting = true;
    }
  };
  const handler = (e) => {
    let body = null;
    try { body = JSON.parse(e.data); } catch (exc) { return; }
    onEvent(e.type, body);
  };
  const all = ["run.queued", "run.started", "run.log", "run.succeeded", "run.failed", "run.timed_out",
    "run.cancelled", "run.retry_scheduled", "run.skipped", "run.missed", "run.cancel_requested",
    "job.created", "job.updated", "job.deleted", "job.paused", "job.resumed"];
  for (const t of types || all) source.addEventListener(t, handler);
  return source;
}

// Calls fn at most once per `ms` (trailing): live events refresh a page's data without a storm.
function throttle(fn, ms) {
  let timer = null;
  let again = false;
  const run = () => {
    timer = null;
    if (again) { again = false; fn(); timer = setTimeout(run, ms); }
  };
  return () => {
    if (timer === null) { fn(); timer = setTimeout(run, ms); } else again = true;
  };
}

// ------------------------------------------------------------------------------------ formatting

const fmt = {
  // times in the browser's zone; the UTC time goes in the title (hover)
  // one formatter (creating one per call costs more than the whole row)
  local: new Intl.DateTimeFormat(undefined, {year: "numeric", month: "short", day: "numeric", hour: "2-digit",
    minute: "2-digit", second: "2-digit"}),
  time(iso) { return iso ? fmt.local.format(new Date(iso)) : "—"; },
  utc(iso) { return iso ? new Date(iso).toISOString().replace(".000Z", "Z") + " (UTC)" : ""; },
  ago(iso) {
    if (!iso) return "";
    const s = (Date.now() - new Date(iso).getTime()) / 1000;
    const future = s < 0;
    const a = Math.abs(s);
    const text = a < 60 ? `${Math.round(a)} s` : a < 3600 ? `${Math.round(a / 60)} min`
      : a < 86400 ? `${Math.round(a / 3600)} h` : `${Math.round(a / 86400)} d`;
    return future ? `in ${text}` : `${text} ago`;
  },
  duration(seconds) {
    if (seconds === null || seconds === undefined) return "—";
    if (seconds < 1) return `${Math.round(seconds * 1000)} ms`;
    if (seconds < 60) return `${seconds.toFixed(1)} s`;
    const m = Math.floor(seconds / 60);
    return m < 60 ? `${m} min ${Math.round(seconds % 60)} s` : `${Math.floor(m / 60)} h ${m % 60} min`;
  },
  runDuration(run) {
    if (!run.started_at) return null;
    const end = run.finished_at ? new Date(run.finished_at) : new Date();
    return (end - new Date(run.started_at)) / 1000;
  },
};
window.fmt = fmt;

// ----------------------------------------------------------------------------------------- pages

function route() {
  const parts = (location.hash.replace(/^#\/?/, "") || "").split("?")[0].split("/").filter(Boolean)
    .map(decodeURIComponent);
  if (parts.length === 0) return {page: "overview", params: {}};
  if (parts[0] === "jobs" && parts.length === 1) return {page: "jobs", params: {}};
  if (parts[0] === "jobs" && parts.length === 2) return {page: "job", params: {id: parts[1]}};
  if (parts[0] === "jobs" && parts.length === 3 && parts[2] === "edit") return {page: "edit", params: {id: parts[1]}};
  if (parts[0] === "new" && parts.length === 1) return {page: "new", params: {}};
  if (parts[0] === "runs" && parts.length === 1) return {page: "runs", params: {}};
  if (parts[0] === "runs" && parts.length === 2) return {page: "run", params: {id: parts[1]}};
  return {page: "notfound", params: {}};
}

document.addEventListener("alpine:init", () => {
  Alpine.store("app", {
    page: null,
    params: {},
    ready: false,        // /auth/me answered: the pages may load
    needToken: false,
    loginError: "",
    authEnabled: false,
    canWrite: false,
    error: "",
    live: "off",
    stream: null,

    async init() {
      window.addEventListener("hashchange", () => this.navigate());
      await this.whoami();
      this.navigate();
    },
    navigate() {
      const r = route();
      this.closeStream();
      this.error = "";
      this.params = r.params;
      // a new page even when only its id changes (run → chained run): unmount, then mount again
      this.page = null;
      Alpine.nextTick(() => { this.page = r.page; window.scrollTo(0, 0); });
    },
    async whoami() {
      try {
        const me = await api.get("/auth/me");
        this.authEnabled = me.auth_enabled;
        this.canWrite = me.can_write;
        this.needToken = false;
        this.ready = true;
        return true;
      } catch (exc) {
        if (exc.status !== 401) this.error = `The API does not answer: ${exc.message}`;
        return false;
      }
    },
    unauthorized() {
      this.closeStream();
      this.ready = false;
      this.needToken = true;
    },
    async login(token) {
      sessionStorage.setItem(TOKEN_KEY, token.trim());
      this.loginError = "";
      if (!(await this.whoami())) {
        sessionStorage.removeItem(TOKEN_KEY);
        this.loginError = "That token is not valid here.";
        this.needToken = true;
        return;
      }
      this.navigate();
    },
    logout() {
      sessionStorage.removeItem(TOKEN_KEY);
      this.unauthorized();
    },
    closeStream() {
      if (this.stream) this.stream.close();
      this.stream = null;
      this.live = "off";
    },
    fail(exc) {
      if (exc.status !== 401) this.error = exc.message;
    },
  });

  registerPages();
});
