// The tuneforge dashboard: a job list (/ui), a job page (/ui/jobs/<id>) and several jobs'
// loss curves on one chart (/ui/compare?jobs=<id>,<id>).
//
// Rules this file keeps:
// - Everything a job provides (names, tags, messages, events) reaches the page through
//   textContent or setAttribute, never innerHTML: a name like "<script>" shows as text.
// - Every API call goes through api(), which adds "Authorization: Bearer <key>" when the
//   user pasted a key; the key lives in sessionStorage only (gone with the tab). The
//   job page's Stop / Pause / Resume buttons POST through it too.
// - The pages poll every POLL_MS while something can still change, and stop once the job
//   is terminal (after one last read, so the final metrics are drawn).
// - What the list shows (state filter, page size, page) is in its URL (?state=, ?limit=,
//   ?pageToken= and ?previous=, the earlier pages' tokens): a reload or a shared link
//   shows the same page. The list is filtered and paged by the API, never here.
"use strict";

(function () {
  const POLL_MS = 2000;
  const KEY_STORAGE = "tuneforge.apiKey";
  const TERMINAL = new Set(["COMPLETED", "FAILED", "STOPPED"]);
  const STATES = new Set([
    "QUEUED",
    "VALIDATING",
    "RUNNING",
    "PAUSED",
    "STOPPING",
    "STOPPED",
    "COMPLETED",
    "FAILED",
  ]);
  const JOB_ID = /^[0-9a-z]{16}$/;
  const JOB_PATH = /^\/ui\/jobs\/([0-9a-z]{16})\/?$/;
  const COMPARE_PATH = /^\/ui\/compare\/?$/;
  // The API's page tokens are unpadded URL-safe base64 (service/core/paging.py).
  const PAGE_TOKEN = /^[A-Za-z0-9_-]{1,64}$/;
  const DEFAULT_PAGE_SIZE = 20;
  const MAX_PAGE_SIZE = 100; // the REST list's limit
  const MAX_COMPARED = 10;
  const PALETTE = [
    "#2f6fde",
    "#e4572e",
    "#1e7b34",
    "#9c27b0",
    "#d08c00",
    "#00838f",
    "#6d4c41",
    "#c2185b",
    "#546e7a",
    "#7cb342",
  ];

  // The view's poll (set by start()): call it to read again at once.
  let refresh = function () {};

  // -- the API ----------------------------------------------------------------------

  function apiKey() {
    return sessionStorage.getItem(KEY_STORAGE) || "";
  }

  // GET `path` (or POST it, with method "POST"); the answer's JSON, or an Error with the
  // API's own message (error.message of its error body) when it refuses.
  async function api(path, method) {
    const headers = { Accept: "application/json" };
    const key = apiKey();
    if (key) {
      headers.Authorization = "Bearer " + key;
    }
    const response = await fetch(path, {
      method: method || "GET",
      headers: headers,
      cache: "no-store",
    });
    if (!response.ok) {
      let message = "HTTP " + response.status;
      try {
        const body = await response.json();
        if (body && body.error && body.error.message) {
          message = body.error.message;
        }
      } catch (notJson) {
        message += " (" + response.statusText + ")";
      }
      if (response.status === 401 || response.status === 403) {
        message += ". Paste an API key above.";
      }
      throw new Error(message);
    }
    return response.json();
  }

  // -- small DOM helpers (text only) ----------------------------------------------------

  function element(tag, text, className) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) {
      node.textContent = String(text);
    }
    if (className) {
      node.className = className;
    }
    return node;
  }

  function showError(error) {
    const box = document.getElementById("error");
    box.textContent = error ? String(error.message || error) : "";
    box.hidden = !error;
  }

  function formatTime(iso) {
    if (!iso) {
      return "";
    }
    const date = new Date(iso);
    return isNaN(date.getTime()) ? String(iso) : date.toLocaleString();
  }

  function stateBadge(state) {
    const safe = /^[A-Z]+$/.test(state) ? state : "UNKNOWN";
    return element("span", state, "state state-" + safe);
  }

  function progressCell(job) {
    const cell = document.createElement("span");
    const progress = job.progress || {};
    const bar = document.createElement("progress");
    const total = progress.totalSteps || 0;
    if (job.state === "COMPLETED") {
      bar.max = 1;
      bar.value = 1;
    } else if (total > 0) {
      bar.max = total;
      bar.value = Math.min(progress.step || 0, total);
    } else if (TERMINAL.has(job.state)) {
      bar.max = 1;
      bar.value = 0;
    } // else indeterminate: not started yet
    cell.appendChild(bar);
    const text = total > 0 ? "step " + (progress.step || 0) + "/" + total : "";
    cell.appendChild(element("span", text, "progress-text"));
    return cell;
  }

  function formatNumber(value) {
    if (value === null || value === undefined || value === "") {
      return "";
    }
    const number = Number(value);
    return isFinite(number) ? String(Number(number.toPrecision(4))) : String(value);
  }

  // Metric column names as people read them (the CSV's and validationMetrics' keys).
  const METRIC_LABELS = {
    accuracy: "accuracy",
    precision: "precision",
    recall: "recall",
    f1: "F1",
    token_accuracy: "token accuracy",
    reward_accuracy: "reward accuracy",
    reward_margin: "reward margin",
    chosen_reward: "chosen reward",
    rejected_reward: "rejected reward",
  };
  const METRIC_ORDER = Object.keys(METRIC_LABELS);

  function metricLabel(name) {
    return METRIC_LABELS[name] || String(name).replace(/_/g, " ");
  }

  function capitalised(text) {
    return text.charAt(0).toUpperCase() + text.slice(1);
  }

  // The known metrics first, in METRIC_ORDER, then any other the trainer reports, by name.
  function orderedMetricNames(names) {
    return Array.from(new Set(names)).sort(function (a, b) {
      const i = METRIC_ORDER.indexOf(a);
      const j = METRIC_ORDER.indexOf(b);
      if (i !== j) {
        return (i < 0 ? METRIC_ORDER.length : i) - (j < 0 ? METRIC_ORDER.length : j);
      }
      return a < b ? -1 : a > b ? 1 : 0;
    });
  }

  // -- the API key form ---------------------------------------------------------------

  function setUpKeyForm() {
    const form = document.getElementById("api-key-form");
    const input = document.getElementById("api-key");
    const state = document.getElementById("api-key-state");
    const show = function () {
      state.textContent = apiKey() ? "key in use (this tab only)" : "";
      input.value = "";
    };
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      if (input.value.trim()) {
        sessionStorage.setItem(KEY_STORAGE, input.value.trim());
      }
      show();
      refresh();
    });
    document.getElementById("api-key-forget").addEventListener("click", function () {
      sessionStorage.removeItem(KEY_STORAGE);
      show();
      refresh();
    });
    show();
  }

  // -- polling ------------------------------------------------------------------------

  // Calls load() now and every POLL_MS until it returns true (nothing more will change).
  // Calling the returned function reads again at once; called while a read is under way,
  // it reads again as soon as that one ends (the URL or the job may have changed since).
  function poll(load) {
    let timer = null;
    let running = false;
    let again = false;
    const tick = async function () {
      if (running) {
        again = true;
        return;
      }
      running = true;
      again = false;
      clearTimeout(timer);
      let done = false;
      try {
        done = await load();
        showError(null);
      } catch (error) {
        showError(error);
      } finally {
        running = false;
      }
      if (again) {
        tick();
      } else if (!done) {
        timer = setTimeout(tick, POLL_MS);
      }
    };
    tick();
    return tick;
  }

  // -- the job list -------------------------------------------------------------------

  // What the list shows, from the page's URL (anything malformed reads as the default).
  function listQuery() {
    const params = new URLSearchParams(window.location.search);
    const state = params.get("state") || "";
    let limit = Number(params.get("limit") || DEFAULT_PAGE_SIZE);
    if (!Number.isInteger(limit) || limit < 1 || limit > MAX_PAGE_SIZE) {
      limit = DEFAULT_PAGE_SIZE;
    }
    const token = params.get("pageToken") || "";
    const previous = (params.get("previous") || "").split(",").filter(function (each) {
      return PAGE_TOKEN.test(each);
    });
    const paged = PAGE_TOKEN.test(token);
    return {
      state: STATES.has(state) ? state : "",
      limit: limit,
      token: paged ? token : "",
      previous: paged ? previous : [],
    };
  }

  function listUrl(query) {
    const params = new URLSearchParams();
    if (query.state) {
      params.set("state", query.state);
    }
    if (query.limit !== DEFAULT_PAGE_SIZE) {
      params.set("limit", String(query.limit));
    }
    if (query.token) {
      params.set("pageToken", query.token);
      if (query.previous.length > 0) {
        params.set("previous", query.previous.join(","));
      }
    }
    const text = params.toString();
    return "/ui" + (text ? "?" + text : "");
  }

  function jobList() {
    const selected = new Map(); // job id -> name, kept across pages until the page is left
    let nextToken = null;
    const filter = document.getElementById("state-filter");
    const size = document.getElementById("page-size");
    const previousButton = document.getElementById("page-previous");
    const nextButton = document.getElementById("page-next");
    const compareButton = document.getElementById("compare-button");

    const go = function (query) {
      window.history.pushState(null, "", listUrl(query));
      refresh();
    };
    filter.addEventListener("change", function () {
      // Another filter starts again at its first page.
      go({ state: filter.value, limit: listQuery().limit, token: "", previous: [] });
    });
    size.addEventListener("change", function () {
      go({ state: listQuery().state, limit: Number(size.value), token: "", previous: [] });
    });
    nextButton.addEventListener("click", function () {
      const query = listQuery();
      if (!nextToken) {
        return;
      }
      const previous = query.token ? query.previous.concat([query.token]) : [];
      go({ state: query.state, limit: query.limit, token: nextToken, previous: previous });
    });
    previousButton.addEventListener("click", function () {
      const query = listQuery();
      const previous = query.previous.slice(0, -1);
      const token = query.previous.length > 0 ? query.previous[query.previous.length - 1] : "";
      go({ state: query.state, limit: query.limit, token: token, previous: previous });
    });
    window.addEventListener("popstate", function () {
      refresh();
    });

    const showSelection = function () {
      compareButton.disabled = selected.size < 2;
      document.getElementById("compare-count").textContent =
        selected.size > 0 ? selected.size + " selected (at most " + MAX_COMPARED + ")" : "";
    };
    compareButton.addEventListener("click", function () {
      const ids = Array.from(selected.keys());
      window.location.assign("/ui/compare?jobs=" + ids.map(encodeURIComponent).join(","));
    });

    const syncControls = function (query) {
      filter.value = query.state;
      const wanted = String(query.limit);
      if (!Array.from(size.options).some(function (option) {
          return option.value === wanted;
        })) {
        const option = element("option", wanted);
        option.value = wanted;
        size.appendChild(option);
      }
      size.value = wanted;
    };

    const row = function (job) {
      const tr = document.createElement("tr");
      tr.setAttribute("data-job-id", job.jobId);
      const pick = document.createElement("input");
      pick.type = "checkbox";
      pick.className = "compare-pick";
      pick.setAttribute("aria-label", "compare " + job.jobName);
      pick.checked = selected.has(job.jobId);
      pick.addEventListener("change", function () {
        if (pick.checked && selected.size >= MAX_COMPARED) {
          pick.checked = false;
        } else if (pick.checked) {
          selected.set(job.jobId, job.jobName);
        } else {
          selected.delete(job.jobId);
        }
        showSelection();
      });
      const pickCell = element("td", null, "select-cell");
      pickCell.appendChild(pick);
      const link = element("a", job.jobName);
      link.href = "/ui/jobs/" + encodeURIComponent(job.jobId);
      const name = document.createElement("td");
      name.appendChild(link);
      const state = document.createElement("td");
      state.appendChild(stateBadge(job.state));
      const progress = document.createElement("td");
      progress.appendChild(progressCell(job));
      tr.append(pickCell, name, state, progress, element("td", formatTime(job.createdAt)));
      return tr;
    };

    showSelection();
    return async function load() {
      const search = window.location.search;
      const query = listQuery();
      syncControls(query);
      let path = "/v1/jobs?limit=" + query.limit;
      if (query.state) {
        path += "&status=" + encodeURIComponent(query.state);
      }
      if (query.token) {
        path += "&pageToken=" + encodeURIComponent(query.token);
      }
      const page = await api(path);
      if (window.location.search !== search) {
        return false; // the user moved on meanwhile: the next read draws where they are
      }
      const body = document.querySelector("#job-table tbody");
      const rows = page.jobs.map(row);
      body.replaceChildren.apply(body, rows);
      const empty = document.getElementById("no-jobs");
      empty.hidden = rows.length > 0;
      if (query.token) {
        empty.textContent = "No more jobs.";
      } else if (query.state) {
        empty.textContent = "No " + query.state + " jobs.";
      } else {
        empty.textContent = "No jobs yet.";
      }
      nextToken = page.nextPageToken || null;
      nextButton.disabled = !nextToken;
      previousButton.disabled = !query.token;
      const number = query.token ? query.previous.length + 2 : 1;
      const pager = document.getElementById("pager");
      pager.setAttribute("data-page", String(number));
      document.getElementById("page-number").textContent = "Page " + number;
      pager.hidden = number === 1 && !nextToken;
      return false; // new jobs can appear at any time
    };
  }

  // -- the job page -------------------------------------------------------------------

  function renderSummary(job) {
    document.title = job.jobName + " - tuneforge";
    document.getElementById("job-name").textContent = job.jobName;
    const progress = job.progress || {};
    const fields = [
      ["Job id", job.jobId],
      ["State", null],
      ["Progress", null],
      ["Type", job.customizationType],
      ["Base model", job.baseModelIdentifier],
      ["Training loss", progress.trainingLoss],
      ["Validation loss", progress.validationLoss],
      // Causal-LM jobs: the share of target tokens predicted right (none for a classifier).
      ["Training token accuracy", progress.trainingTokenAccuracy ?? undefined],
    ];
    // The last evaluation's scores: a causal-LM job's token accuracy; a classifier's
    // accuracy, precision, recall, F1; a preference (DPO) job's reward accuracy (the share
    // of validation pairs whose chosen answer the model prefers more than the base model
    // does) and reward margin. Every evaluation's are in the validation metrics table.
    const scores = progress.validationMetrics || {};
    orderedMetricNames(Object.keys(scores)).forEach(function (name) {
      fields.push(["Validation " + metricLabel(name), formatNumber(scores[name])]);
    });
    fields.push(
      ["Created", formatTime(job.createdAt)],
      ["Started", formatTime(job.startedAt)],
      ["Ended", formatTime(job.endedAt)],
      ["Output", job.output ? job.output.outputS3Uri : ""]
    );
    if (job.queuePosition) {
      fields.push(["Queue position", job.queuePosition]);
    }
    if (job.failure) {
      fields.push(["Failure", job.failure.reason + ": " + job.failure.message]);
    }
    Object.keys(job.tags || {}).forEach(function (key) {
      fields.push(["Tag " + key, job.tags[key]]);
    });
    const list = document.getElementById("job-summary");
    const children = [];
    fields.forEach(function (field) {
      if (field[1] === undefined || field[1] === "") {
        return;
      }
      const value = element("dd", field[1]);
      if (field[0] === "State") {
        value.appendChild(stateBadge(job.state));
      } else if (field[0] === "Progress") {
        value.appendChild(progressCell(job));
      }
      children.push(element("dt", field[0]), value);
    });
    list.replaceChildren.apply(list, children);
  }

  // Which of Stop / Pause / Resume the job's state allows (service/core/jobs.py decides;
  // a refusal, e.g. when the page is behind the job, shows the API's message):
  // - Stop: any job not ended and not already stopping (a paused job too);
  // - Pause: a QUEUED, VALIDATING or RUNNING job with no pause asked for yet;
  // - Resume: a job whose pause was asked for (PAUSED, or still pausing).
  function allowedActions(job) {
    const live = !TERMINAL.has(job.state) && !job.stopRequested && job.state !== "STOPPING";
    return {
      stop: live,
      pause: live && !job.pauseRequested && job.state !== "PAUSED",
      resume: live && (job.pauseRequested || job.state === "PAUSED"),
    };
  }

  const ACTION_WORDS = { stop: "Stopping", pause: "Pausing", resume: "Resuming" };

  function renderActions(view) {
    const job = view.job;
    const allowed = job ? allowedActions(job) : { stop: false, pause: false, resume: false };
    ["stop", "pause", "resume"].forEach(function (action) {
      const button = document.getElementById("job-" + action);
      button.hidden = !allowed[action];
      button.disabled = view.busy !== null;
    });
    const box = document.getElementById("job-actions");
    box.setAttribute("data-busy", view.busy || "");
    let note = "";
    if (view.busy) {
      note = ACTION_WORDS[view.busy] + "...";
    } else if (job && job.pauseRequested && job.state !== "PAUSED" && allowed.resume) {
      note = "Pausing: the trainer saves a checkpoint, then the job is PAUSED.";
    } else if (job && job.state === "STOPPING") {
      note = "Stopping: the trainer is asked to end.";
    }
    document.getElementById("job-action-note").textContent = note;
  }

  function setUpActions(view, jobId) {
    const errorBox = document.getElementById("job-action-error");
    const act = async function (action) {
      if (view.busy !== null || view.job === null) {
        return;
      }
      if (
        action === "stop" &&
        !window.confirm(
          'Stop job "' + view.job.jobName + '"? A stopped job ends and cannot be resumed.'
        )
      ) {
        return;
      }
      view.busy = action;
      errorBox.hidden = true;
      errorBox.textContent = "";
      renderActions(view);
      try {
        view.job = await api("/v1/jobs/" + encodeURIComponent(jobId) + "/" + action, "POST");
        renderSummary(view.job);
      } catch (error) {
        errorBox.textContent = "Could not " + action + " the job: " + (error.message || error);
        errorBox.hidden = false;
      } finally {
        view.busy = null;
        renderActions(view);
        refresh();
      }
    };
    ["stop", "pause", "resume"].forEach(function (action) {
      document.getElementById("job-" + action).addEventListener("click", function () {
        act(action);
      });
    });
    renderActions(view);
  }

  function renderHyperparameters(job) {
    const body = document.querySelector("#hyperparameters tbody");
    const hyper = job.hyperParameters || {};
    const rows = Object.keys(hyper).sort().map(function (name) {
      const value = hyper[name];
      const row = document.createElement("tr");
      row.append(
        element("td", name),
        element("td", typeof value === "object" && value !== null ? JSON.stringify(value) : value)
      );
      return row;
    });
    body.replaceChildren.apply(body, rows);
  }

  // Every evaluation's row of validation_metrics.csv: loss, perplexity, and each score the
  // job reports (the row's `metrics`), one column each.
  function renderValidationMetrics(metrics) {
    const table = document.getElementById("validation-metrics");
    const rows = metrics.validation;
    const names = orderedMetricNames(
      [].concat.apply(
        [],
        rows.map(function (row) {
          return Object.keys(row.metrics || {});
        })
      )
    );
    const perplexity = rows.some(function (row) {
      return row.perplexity !== null && row.perplexity !== undefined;
    });
    const columns = [
      ["step", "Step"],
      ["epoch", "Epoch"],
      ["validation_loss", "Validation loss"],
    ];
    if (perplexity) {
      columns.push(["perplexity", "Perplexity"]);
    }
    names.forEach(function (name) {
      columns.push([name, capitalised(metricLabel(name))]);
    });
    const head = document.createElement("tr");
    columns.forEach(function (column) {
      const th = element("th", column[1]);
      th.setAttribute("data-metric", column[0]);
      head.appendChild(th);
    });
    const body = rows.map(function (row) {
      const tr = document.createElement("tr");
      tr.setAttribute("data-step", String(row.step));
      columns.forEach(function (column) {
        let value;
        if (column[0] === "step") {
          value = row.step;
        } else if (column[0] === "epoch") {
          value = row.epoch;
        } else if (column[0] === "validation_loss") {
          value = row.validationLoss;
        } else if (column[0] === "perplexity") {
          value = row.perplexity;
        } else {
          value = (row.metrics || {})[column[0]];
        }
        const td = element("td", formatNumber(value));
        td.setAttribute("data-metric", column[0]);
        td.setAttribute("data-value", value === null || value === undefined ? "" : String(value));
        tr.appendChild(td);
      });
      return tr;
    });
    table.tHead.replaceChildren(head);
    table.tBodies[0].replaceChildren.apply(table.tBodies[0], body);
    table.setAttribute("data-rows", String(rows.length));
    table.hidden = rows.length === 0;
    document.getElementById("validation-metrics-empty").hidden = rows.length > 0;
  }

  function renderEvents(events) {
    const list = document.getElementById("events");
    const items = events.map(function (event) {
      const item = document.createElement("li");
      item.append(
        element("span", formatTime(event.time), "event-time"),
        element("span", event.type, "event-type"),
        element("span", event.message, "event-message")
      );
      return item;
    });
    list.replaceChildren.apply(list, items);
  }

  // uPlot wants one x array shared by all series: the union of the steps, with null
  // where a series has no value (validation runs only at some steps).
  function alignedData(seriesValues) {
    const steps = new Set();
    seriesValues.forEach(function (values) {
      values.forEach(function (value, step) {
        steps.add(step);
      });
    });
    const xs = Array.from(steps).sort(function (a, b) {
      return a - b;
    });
    return [xs].concat(
      seriesValues.map(function (values) {
        return xs.map(function (step) {
          return values.has(step) ? values.get(step) : null;
        });
      })
    );
  }

  function lossByStep(rows, field) {
    const values = new Map();
    rows.forEach(function (row) {
      values.set(row.step, row[field]);
    });
    return values;
  }

  function chartData(metrics) {
    return alignedData([
      lossByStep(metrics.training, "trainingLoss"),
      lossByStep(metrics.validation, "validationLoss"),
    ]);
  }

  function chartWidth(container) {
    return Math.max(320, container.clientWidth || 800);
  }

  function makeChart(container) {
    const options = {
      width: chartWidth(container),
      height: 320,
      scales: { x: { time: false } },
      axes: [{ label: "step" }, { label: "loss" }],
      series: [
        { label: "step" },
        { label: "training loss", stroke: "#2f6fde", width: 1.5, spanGaps: true },
        {
          label: "validation loss",
          stroke: "#e4572e",
          width: 2,
          spanGaps: true,
          points: { show: true, size: 7 },
        },
      ],
    };
    return new uPlot(options, [[], [], []], container);
  }

  function renderChart(state, metrics) {
    const container = document.getElementById("loss-chart");
    const points = metrics.training.length + metrics.validation.length;
    container.setAttribute("data-training-points", String(metrics.training.length));
    container.setAttribute("data-validation-points", String(metrics.validation.length));
    container.setAttribute("data-points", String(points));
    document.getElementById("loss-chart-empty").hidden = points > 0;
    if (points === 0) {
      return;
    }
    if (state.chart === null) {
      state.chart = makeChart(container);
    }
    state.chart.setData(chartData(metrics));
  }

  function jobPage(jobId) {
    const view = { chart: null, job: null, busy: null };
    setUpActions(view, jobId);
    return async function load() {
      const [job, events, metrics] = await Promise.all([
        api("/v1/jobs/" + jobId),
        api("/v1/jobs/" + jobId + "/events"),
        api("/v1/jobs/" + jobId + "/metrics"),
      ]);
      if (view.busy === null) {
        view.job = job; // while a button's call is under way, its answer is the newer
      }
      renderSummary(view.job);
      renderActions(view);
      renderHyperparameters(job);
      renderEvents(events.events);
      renderChart(view, metrics);
      renderValidationMetrics(metrics);
      return TERMINAL.has(job.state);
    };
  }

  // -- several jobs' loss curves on one chart -------------------------------------------

  function comparedIds() {
    const listed = new URLSearchParams(window.location.search).get("jobs") || "";
    const ids = listed.split(",").filter(function (id) {
      return JOB_ID.test(id);
    });
    return Array.from(new Set(ids)).slice(0, MAX_COMPARED);
  }

  async function readCompared(jobId) {
    try {
      const [job, metrics] = await Promise.all([
        api("/v1/jobs/" + jobId),
        api("/v1/jobs/" + jobId + "/metrics"),
      ]);
      return { jobId: jobId, job: job, metrics: metrics };
    } catch (error) {
      return { jobId: jobId, error: error };
    }
  }

  function renderComparedJobs(results) {
    const list = document.getElementById("compare-jobs");
    const items = results.map(function (result, index) {
      const item = document.createElement("li");
      item.setAttribute("data-job-id", result.jobId);
      const swatch = element("span", null, "swatch");
      swatch.style.backgroundColor = PALETTE[index % PALETTE.length];
      item.appendChild(swatch);
      if (result.error) {
        item.append(
          element("span", result.jobId),
          element("span", String(result.error.message || result.error), "error-text")
        );
        return item;
      }
      const link = element("a", result.job.jobName);
      link.href = "/ui/jobs/" + encodeURIComponent(result.jobId);
      item.append(link, element("span", result.jobId, "muted"), stateBadge(result.job.state));
      return item;
    });
    list.replaceChildren.apply(list, items);
  }

  // One training-loss series per job, and a validation-loss series for each job that has
  // evaluated; a job keeps its colour (validation dashed, with points).
  function comparedSeries(results) {
    const series = [];
    results.forEach(function (result, index) {
      if (result.error) {
        return;
      }
      const colour = PALETTE[index % PALETTE.length];
      const name = result.job.jobName + " (" + result.jobId + ")";
      series.push({
        jobId: result.jobId,
        kind: "training",
        values: lossByStep(result.metrics.training, "trainingLoss"),
        options: { label: name + " training loss", stroke: colour, width: 1.5, spanGaps: true },
      });
      if (result.metrics.validation.length > 0) {
        series.push({
          jobId: result.jobId,
          kind: "validation",
          values: lossByStep(result.metrics.validation, "validationLoss"),
          options: {
            label: name + " validation loss",
            stroke: colour,
            width: 2,
            dash: [6, 4],
            spanGaps: true,
            points: { show: true, size: 6 },
          },
        });
      }
    });
    return series;
  }

  // What the chart holds, for people with a screen reader and for tests: each series'
  // label, job, kind and number of points, read back from the chart itself.
  function describeChart(chart, series) {
    return chart.series.slice(1).map(function (drawn, index) {
      return {
        label: drawn.label,
        jobId: series[index].jobId,
        kind: series[index].kind,
        points: chart.data[index + 1].filter(function (value) {
          return value !== null && value !== undefined;
        }).length,
      };
    });
  }

  function comparePage() {
    const ids = comparedIds();
    const view = { chart: null, key: "" };
    const container = document.getElementById("compare-chart");
    return async function load() {
      if (ids.length === 0) {
        throw new Error("No jobs to compare: pick them with the boxes on the job list.");
      }
      const results = await Promise.all(ids.map(readCompared));
      renderComparedJobs(results);
      const series = comparedSeries(results);
      const data = alignedData(
        series.map(function (each) {
          return each.values;
        })
      );
      const points = series.reduce(function (sum, each) {
        return sum + each.values.size;
      }, 0);
      container.setAttribute("data-points", String(points));
      document.getElementById("compare-chart-empty").hidden = points > 0;
      const key = JSON.stringify(
        series.map(function (each) {
          return each.options.label;
        })
      );
      if (points === 0) {
        container.setAttribute("data-series", "[]");
      } else {
        if (view.chart !== null && view.key !== key) {
          view.chart.destroy(); // a job has evaluated since: one more series
          view.chart = null;
        }
        if (view.chart === null) {
          const options = {
            width: chartWidth(container),
            height: 420,
            scales: { x: { time: false } },
            axes: [{ label: "step" }, { label: "loss" }],
            series: [{ label: "step" }].concat(
              series.map(function (each) {
                return each.options;
              })
            ),
          };
          view.chart = new uPlot(options, data, container);
          view.key = key;
        } else {
          view.chart.setData(data);
        }
        container.setAttribute("data-series", JSON.stringify(describeChart(view.chart, series)));
      }
      return results.every(function (result) {
        return !result.error && TERMINAL.has(result.job.state);
      });
    };
  }

  // -- start --------------------------------------------------------------------------

  function start() {
    const path = window.location.pathname;
    const match = JOB_PATH.exec(path);
    let viewId = "job-list-view";
    let load;
    if (match) {
      viewId = "job-view";
      load = jobPage(match[1]);
    } else if (COMPARE_PATH.test(path)) {
      viewId = "compare-view";
      load = comparePage();
    } else {
      load = jobList();
    }
    document.getElementById(viewId).hidden = false;
    refresh = poll(load);
    setUpKeyForm();
  }

  start();
})();
