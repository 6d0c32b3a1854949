// The create/edit form: its fields are generated from the JSON Schemas the server gives (GET /job-types:
// a job's definition, and each type's payload, plugins' types too), so a new field or type needs no
// change here. The API's 422 field errors (JSON pointers) are shown next to their fields.
"use strict";

const TOP = ["name", "type", "schedule", "timezone", "description", "payload"];
const LONG = ["command", "statement", "text", "html", "body", "description"];

function deref(schema, root) {
  let s = schema || {};
  while (s.$ref) s = root.$defs[s.$ref.split("/").pop()] || {};
  return s;
}

// {type: X} from {anyOf: [X, {type: null}]}, with the outer title/default/description kept
function unwrap(prop, root) {
  let s = deref(prop, root);
  let nullable = false;
  if (s.anyOf) {
    const options = s.anyOf.map((x) => deref(x, root)).filter((x) => x.type !== "null");
    nullable = options.length < s.anyOf.length;
    if (options.length === 1) s = {...options[0], title: s.title, default: s.default, description: s.description};
  }
  const base = deref(prop, root);
  return {...s, nullable, default: base.default !== undefined ? base.default : s.default,
    description: prop.description || base.description || s.description};
}

function kindOf(s, name) {
  if (s.enum) return "select";
  if (s.type === "boolean") return "bool";
  if (s.type === "integer" || s.type === "number") return "number";
  if (s.type === "string") return LONG.includes(name) || (s.maxLength || 0) > 10000 ? "textarea" : "text";
  if (s.type === "array" && s.items && ["string", "integer", "number"].includes(s.items.type)) return "list";
  if (s.type === "object" && s.additionalProperties && s.additionalProperties.type === "string") return "map";
  return "json";
}

function hintOf(kind, s) {
  const parts = [];
  if (s.description) parts.push(s.description);
  if (kind === "list") parts.push("one per line");
  if (kind === "map") parts.push("one per line: name: value");
  if (kind === "json") parts.push("JSON");
  if (s.default !== undefined && s.default !== null && kind !== "bool" && !(Array.isArray(s.default) && !s.default.length)
      && !(typeof s.default === "object" && !Array.isArray(s.default) && !Object.keys(s.default).length)) {
    parts.push(`default: ${typeof s.default === "object" ? JSON.stringify(s.default) : s.default}`);
  }
  return parts.join(" · ");
}

// flat field descriptors of an object schema (nested objects with properties are flattened: retry.delay)
function fieldsOf(schema, root, path, group, skip = []) {
  const out = [];
  const required = new Set(schema.required || []);
  for (const [name, prop] of Object.entries(schema.properties || {})) {
    if (skip.includes(name)) continue;
    const s = unwrap(prop, root);
    const here = [...path, name];
    if (s.type === "object" && s.properties) {
      out.push(...fieldsOf(s, root, here, group));
      continue;
    }
    const kind = kindOf(s, name);
    out.push({pointer: "/" + here.join("/"), path: here, name, label: here.slice(group === "payload" ? 1 : 0).join("."),
      kind, group, required: required.has(name), options: s.enum || [], hint: hintOf(kind, s),
      itemType: s.items ? s.items.type : null, default: s.default});
  }
  return out;
}

function getPath(obj, path) {
  let v = obj;
  for (const k of path) { if (v === null || v === undefined) return undefined; v = v[k]; }
  return v;
}

function setPath(obj, path, value) {
  let o = obj;
  for (const k of path.slice(0, -1)) { if (typeof o[k] !== "object" || o[k] === null) o[k] = {}; o = o[k]; }
  o[path[path.length - 1]] = value;
}

function show(f, v) {
  if (v === undefined || v === null) return f.kind === "bool" ? Boolean(f.default) : "";
  if (f.kind === "bool") return Boolean(v);
  if (f.kind === "list") return v.join("\n");
  if (f.kind === "map") return Object.entries(v).map(([k, x]) => `${k}: ${x}`).join("\n");
  if (f.kind === "json") return JSON.stringify(v, null, 2);
  return String(v);
}

// the value to send, undefined to leave the field out (its default), or throws a message
function parse(f, raw) {
  if (f.kind === "bool") return Boolean(raw);
  const text = typeof raw === "string" ? raw : String(raw ?? "");
  if (!text.trim()) return undefined;
  if (f.kind === "number") return Number.isFinite(Number(text)) ? Number(text) : text;  // the API says why
  if (f.kind === "list") {
    const items = text.split("\n").map((x) => x.trim()).filter(Boolean);
    return f.itemType === "string" ? items : items.map((x) => (Number.isFinite(Number(x)) ? Number(x) : x));
  }
  if (f.kind === "map") {
    const out = {};
    for (const line of text.split("\n")) {
      if (!line.trim()) continue;
      const i = line.indexOf(":");
      if (i < 1) throw new Error(`"${line.trim()}" is not name: value`);
      out[line.slice(0, i).trim()] = line.slice(i + 1).trim();
    }
    return out;
  }
  if (f.kind === "json") {
    try { return JSON.parse(text); } catch (exc) { throw new Error("not valid JSON"); }
  }
  return text;
}

document.addEventListener("alpine:init", () => {
  const app = () => Alpine.store("app");
  const zones = (Intl.supportedValuesOf ? Intl.supportedValuesOf("timeZone") : []);
  if (!zones.includes("UTC")) zones.unshift("UTC");

  Alpine.data("jobForm", () => ({
    editing: null,        // the job being edited (null: a new one)
    types: [],
    jobSchema: null,
    top: {name: "", type: "", schedule: "", timezone: "UTC", description: ""},
    values: {},
    errors: {},
    general: [],
    preview: null,
    previewError: "",
    saving: false,
    loaded: false,
    zones,
    async init() {
      try {
        const types = await api.get("/job-types");
        this.types = types.items;
        this.jobSchema = types.job_schema;
        const id = app().params.id;
        if (id) {
          const job = await api.get(`/jobs/${id}`);
          this.editing = job;
          for (const k of Object.keys(this.top)) this.top[k] = job[k] ?? "";
          for (const f of this.fields) this.values[f.pointer] = show(f, getPath(job, f.path));
        } else {
          const first = this.types.find((t) => t.enabled) || this.types[0];
          this.top.type = first ? first.name : "";
          this.defaults();
          this.top.timezone = Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC";
        }
      } catch (exc) { app().fail(exc); }
      this.loaded = true;
      const refresh = debounce(() => this.refreshPreview(), 300);
      this.$watch("top.schedule", refresh);
      this.$watch("top.timezone", refresh);
      this.$watch("top.type", () => this.defaults());
      this.refreshPreview();
    },
    defaults() {
      for (const f of this.fields) if (!(f.pointer in this.values)) this.values[f.pointer] = show(f, undefined);
    },
    get typeInfo() { return this.types.find((t) => t.name === this.top.type) || null; },
    get payloadFields() {
      const t = this.typeInfo;
      return t ? fieldsOf(t.payload_schema, t.payload_schema, ["payload"], "payload") : [];
    },
    get optionFields() {
      return this.jobSchema ? fieldsOf(this.jobSchema, this.jobSchema, [], "options", TOP) : [];
    },
    get fields() { return [...this.payloadFields, ...this.optionFields]; },
    fid(f) { return "f" + f.pointer.replace(/[^A-Za-z0-9]+/g, "-"); },
    async refreshPreview() {
      try {
        this.preview = await api.get(`/schedules/describe${query({schedule: this.top.schedule,
          timezone: this.top.timezone || "UTC", count: 5})}`);
        this.previewError = "";
        delete this.errors["/schedule"];
        delete this.errors["/timezone"];
      } catch (exc) {
        this.preview = null;
        this.previewError = exc.status === 422 ? Object.values(exc.fields).join("; ") : exc.message;
      }
    },
    zoned(iso) {
      try {
        return new Intl.DateTimeFormat(undefined, {timeZone: this.top.timezone || "UTC", weekday: "short",
          year: "numeric", month: "short", day: "numeric", hour: "2-digit", minute: "2-digit",
          second: "2-digit", timeZoneName: "short"}).format(new Date(iso));
      } catch (exc) { return fmt.time(iso); }
    },
    build() {
      const spec = {name: this.top.name, type: this.top.type, payload: {}};
      if (this.top.schedule.trim()) spec.schedule = this.top.schedule.trim();
      if (this.top.timezone.trim()) spec.timezone = this.top.timezone.trim();
      if (this.top.description.trim()) spec.description = this.top.description;
      const local = {};
      for (const f of this.fields) {
        try {
          const v = parse(f, this.values[f.pointer]);
          if (v !== undefined) setPath(spec, f.path, v);
        } catch (exc) { local[f.pointer] = exc.message; }
      }
      return {spec, local};
    },
    async save() {
      const {spec, local} = this.build();
      this.errors = local;
      this.general = [];
      if (Object.keys(local).length) return;
      this.saving = true;
      try {
        const job = this.editing ? await api.put(`/jobs/${this.editing.id}`, spec) : await api.post("/jobs", spec);
        location.hash = `#/jobs/${job.id}`;
      } catch (exc) {
        if (exc.status === 422 || exc.status === 409) {
          const known = new Set([...TOP.map((k) => `/${k}`), ...this.fields.map((f) => f.pointer)]);
          const errors = {};
          for (const e of exc.problem.errors || []) {
            if (known.has(e.pointer)) errors[e.pointer] = e.reason;
            else this.general.push(`${e.pointer || "job"}: ${e.reason}`);
          }
          if (exc.status === 409) errors["/name"] = exc.message;
          if (!Object.keys(errors).length && !this.general.length) this.general.push(exc.message);
          this.errors = errors;
          this.$nextTick(() => { const el = this.$root.querySelector("[aria-invalid=true]"); if (el) el.focus(); });
        } else app().fail(exc);
      }
      this.saving = false;
    },
  }));
});

function debounce(fn, ms) {
  let timer = null;
  return () => { clearTimeout(timer); timer = setTimeout(fn, ms); };
}
