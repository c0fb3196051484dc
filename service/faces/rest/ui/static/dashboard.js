// The tuneforge dashboard: a job list (/ui) and a job page (/ui/jobs/<id>).
//
// Rules this file keeps:
// - Everything a job provides (names, tags, messages, events) reaches the page through
//   textContent or setAttribute, never innerHTML: a name like "<script>" shows as text.
// - Every API call goes through api(), which adds "Authorization: Bearer <key>" when the
//   user pasted a key; the key lives in sessionStorage only (gone with the tab).
// - The pages poll every POLL_MS while something can still change, and stop once the job
//   is terminal (after one last read, so the final metrics are drawn).
"use strict";

(function () {
  const POLL_MS = 2000;
  const KEY_STORAGE = "tuneforge.apiKey";
  const TERMINAL = new Set(["COMPLETED", "FAILED", "STOPPED"]);
  const JOB_PATH = /^\/ui\/jobs\/([0-9a-z]{16})\/?$/;

  // -- the API ----------------------------------------------------------------------

  function apiKey() {
    return sessionStorage.getItem(KEY_STORAGE) || "";
  }

  async function api(path) {
    const headers = { Accept: "application/json" };
    const key = apiKey();
    if (key) {
      headers.Authorization = "Bearer " + key;
    }
    const response = await fetch(path, { headers: headers, cache: "no-store" });
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

  // -- the API key form ---------------------------------------------------------------

  function setUpKeyForm(refresh) {
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
  function poll(load) {
    let timer = null;
    let running = false;
    const tick = async function () {
      if (running) {
        return;
      }
      running = true;
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
      if (!done) {
        timer = setTimeout(tick, POLL_MS);
      }
    };
    tick();
    return tick;
  }

  // -- the job list -------------------------------------------------------------------

  async function loadJobList() {
    const page = await api("/v1/jobs?limit=100");
    const body = document.querySelector("#job-table tbody");
    const rows = page.jobs.map(function (job) {
      const row = document.createElement("tr");
      row.setAttribute("data-job-id", job.jobId);
      const link = element("a", job.jobName);
      link.href = "/ui/jobs/" + encodeURIComponent(job.jobId);
      const name = document.createElement("td");
      name.appendChild(link);
      const state = document.createElement("td");
      state.appendChild(stateBadge(job.state));
      const progress = document.createElement("td");
      progress.appendChild(progressCell(job));
      row.append(name, state, progress, element("td", formatTime(job.createdAt)));
      return row;
    });
    body.replaceChildren.apply(body, rows);
    document.getElementById("no-jobs").hidden = rows.length > 0;
    return false; // new jobs can appear at any time
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
      ["Validation token accuracy", (progress.validationMetrics || {}).token_accuracy],
      // Preference (DPO) jobs: the share of validation pairs whose chosen answer the model
      // now prefers more than the base model does, and the mean reward margin.
      ["Validation reward accuracy", (progress.validationMetrics || {}).reward_accuracy],
      ["Validation reward margin", (progress.validationMetrics || {}).reward_margin],
      ["Created", formatTime(job.createdAt)],
      ["Started", formatTime(job.startedAt)],
      ["Ended", formatTime(job.endedAt)],
      ["Output", job.output ? job.output.outputS3Uri : ""],
    ];
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
  function chartData(metrics) {
    const training = new Map();
    const validation = new Map();
    metrics.training.forEach(function (row) {
      training.set(row.step, row.trainingLoss);
    });
    metrics.validation.forEach(function (row) {
      validation.set(row.step, row.validationLoss);
    });
    const steps = Array.from(new Set([...training.keys(), ...validation.keys()]));
    steps.sort(function (a, b) {
      return a - b;
    });
    return [
      steps,
      steps.map(function (step) {
        return training.has(step) ? training.get(step) : null;
      }),
      steps.map(function (step) {
        return validation.has(step) ? validation.get(step) : null;
      }),
    ];
  }

  function makeChart(container) {
    const options = {
      width: Math.max(320, container.clientWidth || 800),
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
    const state = { chart: null };
    return async function load() {
      const [job, events, metrics] = await Promise.all([
        api("/v1/jobs/" + jobId),
        api("/v1/jobs/" + jobId + "/events"),
        api("/v1/jobs/" + jobId + "/metrics"),
      ]);
      renderSummary(job);
      renderHyperparameters(job);
      renderEvents(events.events);
      renderChart(state, metrics);
      return TERMINAL.has(job.state);
    };
  }

  // -- start --------------------------------------------------------------------------

  function start() {
    const match = JOB_PATH.exec(window.location.pathname);
    const view = document.getElementById(match ? "job-view" : "job-list-view");
    view.hidden = false;
    const refresh = poll(match ? jobPage(match[1]) : loadJobList);
    setUpKeyForm(refresh);
  }

  start();
})();
