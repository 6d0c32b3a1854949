// The dashboard's pages (Alpine components); the job form is in form.js.
"use strict";

const FINAL = ["succeeded", "failed", "timed_out", "cancelled", "skipped", "missed"];
const ACTIVE = ["queued", "running"];
const RUN_STATUSES = [...ACTIVE, ...FINAL];
// what the tables listen to: every status change, no log lines
const STATUS_EVENTS = ["run.queued", "run.started", "run.succeeded", "run.failed", "run.timed_out",
  "run.cancelled", "run.skipped", "run.missed", "run.retry_scheduled", "job.created", "job.updated",
  "job.deleted", "job.paused", "job.resumed"];
const JOB_EVENTS = ["job.created", "job.updated", "job.deleted", "job.paused", "job.resumed"];
window.RUN_STATUSES = RUN_STATUSES;

function esc(text) {
  return String(text).replace(/[&<>"']/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"})[c]);
}

function statusOf(type) { return type.startsWith("run.") ? type.slice(4).replace("started", "running") : null; }

function registerPages() {
  const app = () => Alpine.store("app");

  // ----------------------------------------------------------------------------------- overview
  Alpine.data("overviewPage", () => ({
    stats: null,
    loads: 0,
    running: [],
    failures: [],
    skipped: [],
    window: "hour",
    chartRuns: null,
    truncated: false,
    chart: null,
    async init() {
      const refresh = throttle(() => this.load(), 2000);
      await this.load();
      openStream("/monitor/logs", () => refresh(), STATUS_EVENTS);
    },
    destroy() { if (this.chart) this.chart.destroy(); },
    async load() {
      const n = ++this.loads;
      try {
        const since = new Date(Date.now() - (this.window === "hour" ? 3600e3 : 86400e3)).toISOString();
        const [stats, running, failures, skipped, recent] = await Promise.all([
          api.get("/stats"),
          api.get("/runs?status=running,queued&limit=10"),
          api.get("/runs?status=failed,timed_out&limit=8"),
          api.get("/runs?status=missed,skipped&limit=8"),
          api.get(`/runs${query({since, limit: 500})}`),
        ]);
        this.stats = stats;
        await names([...running.items, ...failures.items, ...skipped.items]);
        if (n !== this.loads) return;
        this.running = running.items;
        this.failures = failures.items;
        this.skipped = skipped.items;
        this.truncated = recent.next_cursor !== null;
        this.draw(recent.items);
      } catch (exc) { app().fail(exc); }
    },
    setWindow(w) { this.window = w; this.load(); },
    // runs by status per bucket (5 min over the hour, 1 h over the day), stacked bars
    draw(runs) {
      const bucket = this.window === "hour" ? 300 : 3600;
      const now = Math.floor(Date.now() / 1000);
      const start = Math.floor((now - (this.window === "hour" ? 3600 : 86400)) / bucket) * bucket;
      const xs = [];
      for (let t = start; t <= now; t += bucket) xs.push(t);
      const groups = {succeeded: ["succeeded"], failed: ["failed", "timed_out"],
        other: ["cancelled", "skipped", "missed"], active: ["queued", "running"]};
      const counts = Object.fromEntries(Object.keys(groups).map((g) => [g, xs.map(() => 0)]));
      for (const r of runs) {
        const t = new Date(r.finished_at || r.scheduled_for).getTime() / 1000;
        const i = Math.floor((t - start) / bucket);
        if (i < 0 || i >= xs.length) continue;
        for (const [g, sts] of Object.entries(groups)) if (sts.includes(r.status)) counts[g][i] += 1;
      }
      // stacked: each series is the sum of itself and those below it; drawn tallest first (behind)
      const order = ["succeeded", "failed", "other", "active"];
      const stacked = {};
      let acc = xs.map(() => 0);
      for (const g of order) { acc = acc.map((v, i) => v + counts[g][i]); stacked[g] = acc; }
      const colors = {succeeded: "#1e8e3e", failed: "#c5221f", other: "#b06000", active: "#1a73e8"};
      const el = this.$refs.chart;
      if (!el) return;
      if (this.chart) this.chart.destroy();
      const bars = uPlot.paths.bars({size: [0.8, 40]});
      const drawn = [...order].reverse();
      const series = [{}, ...drawn.map((g) => ({label: g, stroke: colors[g], fill: colors[g], paths: bars,
        points: {show: false}, value: (u, v, si, di) => (di === null || di === undefined ? "" : counts[g][di])}))];
      this.chart = new uPlot({width: Math.max(300, el.clientWidth - 10), height: 200, series,
        scales: {y: {range: (u, min, max) => [0, Math.max(1, max)]}}, axes: [{}, {label: "runs"}]},
      [xs, ...drawn.map((g) => stacked[g])], el);
    },
  }));

  // ---------------------------------------------------------------------------------------- jobs
  Alpine.data("jobsPage", () => ({
    filters: {name: "", status: "", type: "", last_status: ""},
    limit: 50,
    cursors: [null],
    items: [],
    digests: {},
    next: null,
    total: null,
    types: [],
    selected: [],
    loading: true,
    loads: 0,
    inFlight: false,
    busy: false,
    async init() {
      const saved = sessionStorage.getItem("chronos.jobs.filters");
      if (saved) Object.assign(this.filters, JSON.parse(saved));
      this.reload = throttle(() => this.load(), 1500);
      await this.load();
      api.get("/job-types").then((t) => { this.types = t.items.map((x) => x.name); }).catch(() => {});
      openStream("/monitor/logs", (type, body) => this.onEvent(type, body), STATUS_EVENTS);
    },
    get filtered() { return Object.values(this.filters).some((v) => v); },
    // Each load is numbered: an answer to an older one (a slow unfiltered load finishing after the
    // search that followed it) is dropped instead of overwriting the newer page.
    async load() {
      const n = ++this.loads;
      const current = () => n === this.loads;
      this.inFlight = true;
      try {
        const page = await api.get(`/jobs${query({...this.filters, after: this.cursors[this.cursors.length - 1],
          limit: this.limit})}`);
        if (!current()) return;
        this.items = page.items;  // on screen now; the strips and the words follow with the digests
        this.next = page.next_cursor;
        const ids = new Set(this.items.map((j) => j.id));
        this.selected = this.selected.filter((id) => ids.has(id));
        this.loading = false;
        const digests = page.items.length
          ? await api.get(`/job-digests?ids=${page.items.map((j) => j.id).join(",")}`) : {items: []};
        if (!current()) return;
        this.digests = Object.fromEntries(digests.items.map((d) => [d.job_id, d]));
        this.inFlight = false;
        // the total for "1–50 of N" comes after the rows (it competes with them for the server)
        const total = this.filtered ? null : (await api.get("/stats")).jobs.total;
        if (current()) this.total = total;
      } catch (exc) {
        if (current()) app().fail(exc);
      } finally {
        if (current()) { this.loading = false; this.inFlight = false; }
      }
    },
    search() {
      sessionStorage.setItem("chronos.jobs.filters", JSON.stringify(this.filters));
      this.cursors = [null];
      this.load();
    },
    clear() { for (const k of Object.keys(this.filters)) this.filters[k] = ""; this.search(); },
    nextPage() { this.cursors.push(this.next); this.load(); },
    prevPage() { this.cursors.pop(); this.load(); },
    get first() { return (this.cursors.length - 1) * this.limit + 1; },
    onEvent(type, body) {
      if (type === "reconnected" || JOB_EVENTS.includes(type)) { this.reload(); return; }
      const status = statusOf(type);
      const job = body && this.items.find((j) => j.id === body.job_id);
      if (!job) {
        // a job this page is loading (just created, say) may have ended a run meanwhile: load again
        if (this.inFlight && FINAL.includes(status)) this.reload();
        return;
      }
      const d = this.digests[job.id];
      if (d && status && RUN_STATUSES.includes(status)) {  // the strip at once; the row when it ends
        const i = d.outcomes.findIndex((o) => o.run_id === body.run_id);
        const o = {run_id: body.run_id, status, scheduled_for: body.data.scheduled_for,
          finished_at: body.data.finished_at};
        if (i >= 0) d.outcomes[i] = o; else d.outcomes = [...d.outcomes, o].slice(-20);
      }
      if (FINAL.includes(status)) this.reload();
    },
    // The table body as one piece of HTML, every value escaped: 50 rows of Alpine bindings (a strip alone
    // is 20 links) took ~200 ms to render, this takes a few. Rendered again when the page's data changes;
    // the focused link or checkbox keeps its focus.
    renderRows() {
      const tbody = this.$refs.rows;
      const write = Alpine.store("app").canWrite;
      const selected = new Set(Alpine.raw(this.selected));
      const html = this.items.map((j) => {
        const d = this.digests[j.id];
        const last = j.last_run
          ? `<a href="#/runs/${esc(j.last_run.id)}" class="badge ${esc(j.last_run.status)}" title="${
            esc(fmt.utc(j.last_run.finished_at))}" data-testid="last-status">${esc(j.last_run.status)}</a>`
          : `<span class="muted small">never</span>`;
        return `<tr data-job="${esc(j.name)}">`
          + (write ? `<td><input type="checkbox" value="${esc(j.id)}" aria-label="Select ${esc(j.name)}"${
            selected.has(j.id) ? " checked" : ""} data-key="c${esc(j.id)}"></td>` : "")
          + `<td class="name"><a href="#/jobs/${esc(j.id)}" data-key="l${esc(j.id)}">${esc(j.name)}</a></td>`
          + `<td class="hide-narrow">${esc(j.type)}</td>`
          + `<td class="small" title="${esc(j.schedule || "")}">${esc(d ? d.schedule_text : (j.schedule || "manual"))}</td>`
          + `<td class="small hide-narrow" title="${esc(fmt.utc(j.next_run_at))}">${esc(j.next_run_at ? fmt.time(j.next_run_at) : "—")}</td>`
          + `<td>${last}</td>`
          + `<td class="hide-narrow"><span class="strip" data-testid="strip">${this.strip(d)}</span></td>`
          + `<td class="num hide-narrow">${j.consecutive_failures || ""}</td>`
          + `<td><span class="badge ${esc(j.status)}" data-testid="job-status">${esc(j.status)}</span></td></tr>`;
      }).join("");
      const focused = document.activeElement && tbody.contains(document.activeElement)
        ? document.activeElement.dataset.key : null;
      tbody.innerHTML = html;
      if (focused) { const el = tbody.querySelector(`[data-key="${CSS.escape(focused)}"]`); if (el) el.focus(); }
    },
    onCheck(event) {
      const box = event.target;
      if (box.type !== "checkbox") return;
      const others = this.selected.filter((id) => id !== box.value);
      this.selected = box.checked ? [...others, box.value] : others;
    },
    // the outcome strip as one piece of HTML (20 links with 4 bindings each, times 50 rows, is most of
    // what Alpine would spend on the table); every value in it is escaped
    strip(digest) {
      if (!digest) return "";
      return digest.outcomes.map((o) => `<a href="#/runs/${esc(o.run_id)}" class="${esc(o.status)}" title="${
        esc(`${o.status}, ${fmt.time(o.scheduled_for)}`)}" aria-label="run ${esc(o.status)}"></a>`).join("");
    },
    toggleAll(on) {
      this.selected = on ? this.items.map((j) => j.id) : [];
      for (const box of this.$refs.rows.querySelectorAll("input[type=checkbox]")) box.checked = on;
    },
    async bulk(status) {
      this.busy = true;
      const ids = [...this.selected];
      const failed = [];
      for (const id of ids) {
        try { await api.patch(`/jobs/${id}/status`, {status}); } catch (exc) { failed.push(exc.message); }
      }
      if (failed.length) app().error = `${failed.length} of ${ids.length} not changed: ${failed[0]}`;
      this.selected = [];
      this.busy = false;
      await this.load();
    },
  }));

  // ----------------------------------------------------------------------------------------- job
  Alpine.data("jobPage", () => ({
    job: null,
    history: [],
    historyStatus: "",
    cursors: [null],
    next: null,
    slots: [],
    confirmDelete: false,
    confirmClear: false,
    finishedRuns: 0,
    loads: 0,
    notFound: false,
    chart: null,
    busy: false,
    get id() { return app().params.id; },
    async init() {
      this.reload = throttle(() => this.load(), 1500);
      await this.load();
      if (this.job) openStream(`/monitor/logs/${this.id}`, (type) => {
        if (type === "job.deleted") { location.hash = "#/jobs"; return; }
        this.reload();
      }, STATUS_EVENTS);
    },
    destroy() { if (this.chart) this.chart.destroy(); },
    async load() {
      const n = ++this.loads;
      try {
        const [job, history, slots, recent] = await Promise.all([
          api.get(`/jobs/${this.id}`),
          api.get(`/jobs/${this.id}/history${query({status: this.historyStatus,
            before: this.cursors[this.cursors.length - 1], limit: 20})}`),
          api.get(`/jobs/${this.id}/history?status=missed,skipped&limit=10`),
          api.get(`/jobs/${this.id}/history?limit=200`),
        ]);
        const digest = await api.get(`/job-digests?ids=${this.id}`);
        if (n !== this.loads) return;  // a newer load (filter, page) is under way
        job.schedule_text = digest.items.length ? digest.items[0].schedule_text : job.schedule;
        this.job = job;
        this.history = history.items;
        this.next = history.next_cursor;
        this.slots = slots.items;
        this.$nextTick(() => this.draw(recent.items));
      } catch (exc) {
        if (exc.status === 404) this.notFound = true; else app().fail(exc);
      }
    },
    filter() { this.cursors = [null]; this.load(); },
    nextPage() { this.cursors.push(this.next); this.load(); },
    prevPage() { this.cursors.pop(); this.load(); },
    get payload() { return this.job ? JSON.stringify(this.job.payload, null, 2) : ""; },
    // the job as GET shows it, without what the engines keep about its runs
    get definition() {
      if (!this.job) return "";
      const skip = ["schedule_text", "last_run", "last_success_at", "last_failure_at", "consecutive_failures",
        "next_runs", "consecutive_failed_slots"];
      return JSON.stringify(Object.fromEntries(Object.entries(this.job).filter(([k]) => !skip.includes(k))),
        null, 2);
    },
    async act(fn) {
      this.busy = true;
      try { await fn(); } catch (exc) { app().fail(exc); }
      this.busy = false;
    },
    runNow() {
      return this.act(async () => {
        const run = await api.post(`/jobs/${this.id}/run`);
        location.hash = `#/runs/${run.id}`;
      });
    },
    setStatus(status) {
      return this.act(async () => { this.job = {...this.job, ...(await api.patch(`/jobs/${this.id}/status`, {status})),
        schedule_text: this.job.schedule_text}; });
    },
    clearHistory() {
      return this.act(async () => {
        await api.del(`/jobs/${this.id}/history`);
        this.confirmClear = false;
        this.cursors = [null];
        await this.load();
      });
    },
    remove() {
      return this.act(async () => { await api.del(`/jobs/${this.id}`); location.hash = "#/jobs"; });
    },
    // durations of the last 200 runs over time: succeeded and failed as separate point series
    async draw(runs) {
      const el = this.$refs.chart;
      if (!el) return;
      if (this.chart) { this.chart.destroy(); this.chart = null; }
      const done = runs.filter((r) => r.started_at && r.finished_at).reverse();
      this.finishedRuns = done.length;
      if (!done.length) return;
      const xs = done.map((r) => new Date(r.started_at).getTime() / 1000);
      const dur = done.map((r) => fmt.runDuration(r));
      const ok = done.map((r, i) => r.status === "succeeded" ? dur[i] : null);
      const bad = done.map((r, i) => r.status !== "succeeded" ? dur[i] : null);
      const pts = (color) => ({show: true, size: 7, fill: color, stroke: color});
      await this.$nextTick();  // shown now (x-show): its width is known
      this.chart = new uPlot({width: Math.max(300, el.clientWidth - 10), height: 200,
        series: [{}, {label: "succeeded (s)", stroke: "#1e8e3e", paths: () => null, points: pts("#1e8e3e")},
          {label: "failed (s)", stroke: "#c5221f", paths: () => null, points: pts("#c5221f")}],
        axes: [{}, {label: "seconds"}]}, [xs, ok, bad], el);
    },
  }));

  // ----------------------------------------------------------------------------------------- run
  Alpine.data("runPage", () => ({
    run: null,
    job: null,
    attempts: [],
    lastSeq: 0,
    lineCount: 0,
    cut: false,
    follow: true,
    ended: false,
    notFound: false,
    busy: false,
    notices: [],
    noticeTimer: null,
    noticeReads: 0,
    get id() { return app().params.id; },
    destroy() { clearTimeout(this.noticeTimer); },
    async init() {
      try {
        this.run = await api.get(`/runs/${this.id}`);
      } catch (exc) {
        if (exc.status === 404) this.notFound = true; else app().fail(exc);
        return;
      }
      this.loadRelated();
      this.loadNotices();
      // the stream starts with the run's state and its output so far, then live lines; it ends with the run
      openStream(`/monitor/runs/${this.id}`, (type, body) => this.onEvent(type, body));
    },
    // What the outcome set off (notifications, chained runs, an auto-pause) and how delivery went; read
    // again every 2 s while one is pending (the notifier sends with backoff; there is no event for it).
    async loadNotices() {
      clearTimeout(this.noticeTimer);
      try {
        const [notices, run] = await Promise.all([api.get(`/runs/${this.id}/notifications`),
          api.get(`/runs/${this.id}`)]);
        this.notices = notices.items;
        this.run = {...this.run, parent_run_id: run.parent_run_id, children: run.children};
        if (this.notices.some((n) => n.status === "pending") && this.noticeReads++ < 30) {
          this.noticeTimer = setTimeout(() => this.loadNotices(), 2000);
        }
      } catch (exc) { if (exc.status !== 404) app().fail(exc); }
    },
    target(n) {
      const t = n.target || {};
      if (t.url) return t.url;
      if (t.to) return [].concat(t.to).join(", ");
      if (t.job) return t.job;
      return Object.values(t).join(" ");
    },
    async loadRelated() {
      try {
        const [job, attempts] = await Promise.all([
          api.get(`/jobs/${this.run.job_id}`).catch((exc) => (exc.status === 404 ? null : Promise.reject(exc))),
          api.get(`/runs${query({job_id: this.run.job_id, since: this.run.scheduled_for,
            until: this.run.scheduled_for, limit: 100})}`),
        ]);
        this.job = job;
        this.attempts = attempts.items.sort((a, b) => a.attempt - b.attempt);
      } catch (exc) { app().fail(exc); }
    },
    onEvent(type, body) {
      if (!body) return;
      const data = body.data || {};
      if (type === "run.log") {
        if (data.seq > this.lastSeq) { this.append([data.line], data.stream); this.lastSeq = data.seq; }
        return;
      }
      if (data.replayed && typeof data.output === "string") {
        this.appendOutput(data.output, data.output_lines);
      }
      const status = statusOf(type);
      if (status && RUN_STATUSES.includes(status)) {
        const fields = ["status", "started_at", "finished_at", "exit_code", "error", "attempt"];
        const changed = {};
        for (const f of fields) if (f in data) changed[f] = data[f];
        this.run = {...this.run, ...changed, status};
        const a = this.attempts.find((x) => x.id === this.run.id);
        if (a) Object.assign(a, changed, {status});
      }
      if (type === "run.retry_scheduled" || FINAL.includes(status)) this.loadRelated();
      if (FINAL.includes(status)) {
        this.ended = true;
        app().closeStream();
        app().live = "off";
        // the stored outcome has every line (a line published just before the stream subscribed and
        // stored only at the end may not have come live)
        if (!data.replayed) {
          this.noticeReads = 0;
          this.loadNotices();
          api.get(`/runs/${this.id}`).then((run) => this.appendOutput(run.output, run.output_lines),
            () => {});
        }
      }
    },
    // the stored tail: its last line is line `upTo`; lines already shown are not added again
    appendOutput(output, upTo) {
      const lines = output.split("\n");
      if (lines.length && lines[lines.length - 1] === "") lines.pop();
      const first = upTo - lines.length + 1;
      if (first > this.lastSeq + 1 && this.lastSeq === 0 && first > 1) this.cut = true;
      const fresh = lines.filter((_, i) => first + i > this.lastSeq);
      this.append(fresh, "stdout");
      this.lastSeq = Math.max(this.lastSeq, upTo);
    },
    append(lines, stream) {
      const pre = this.$refs.log;
      if (!pre || !lines.length) return;
      const frag = document.createDocumentFragment();
      for (const line of lines) {
        const span = document.createElement("span");
        if (stream === "stderr") span.className = "stderr";
        span.textContent = line + "\n";
        frag.appendChild(span);
      }
      pre.appendChild(frag);
      this.lineCount += lines.length;
      if (this.follow) pre.scrollTop = pre.scrollHeight;
    },
    toggleFollow() {
      this.follow = !this.follow;
      if (this.follow) this.$refs.log.scrollTop = this.$refs.log.scrollHeight;
    },
    get active() { return this.run && ACTIVE.includes(this.run.status); },
    async cancel() {
      this.busy = true;
      try { await api.post(`/runs/${this.id}/cancel`); } catch (exc) { app().fail(exc); }
      this.busy = false;
    },
  }));

  // ---------------------------------------------------------------------------------------- runs
  Alpine.data("runsPage", () => ({
    status: "",
    loads: 0,
    cursors: [null],
    items: [],
    next: null,
    loading: true,
    async init() {
      this.reload = throttle(() => this.load(), 1500);
      await this.load();
      openStream("/monitor/logs", () => { if (this.cursors.length === 1) this.reload(); }, STATUS_EVENTS);
    },
    async load() {
      const n = ++this.loads;
      try {
        const page = await api.get(`/runs${query({status: this.status, before: this.cursors[this.cursors.length - 1],
          limit: 50})}`);
        await names(page.items);
        if (n !== this.loads) return;
        this.items = page.items;
        this.next = page.next_cursor;
      } catch (exc) { app().fail(exc); }
      this.loading = false;
    },
    filter() { this.cursors = [null]; this.load(); },
    nextPage() { this.cursors.push(this.next); this.load(); },
    prevPage() { this.cursors.pop(); this.load(); },
  }));
}

// job names for runs (a run carries its job's id only), cached per page load
const jobNames = {};
async function names(runs) {
  const missing = [...new Set(runs.map((r) => r.job_id))].filter((id) => !(id in jobNames));
  await Promise.all(missing.map((id) => api.get(`/jobs/${id}`).then((j) => { jobNames[id] = j.name; },
    () => { jobNames[id] = "(deleted job)"; })));
  for (const r of runs) r.job_name = jobNames[r.job_id];
}
window.jobNames = jobNames;
