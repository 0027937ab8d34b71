// The vecserve page: six views over the HTTP/JSON API. Each view's inputs live in the URL's query, so
// any result can be linked; typing updates the URL (history.replaceState) and, after a short pause,
// the result. Each result element says what it shows: data-state (idle, loading, ready, error) and
// data-for (the query it was computed for).

import { CallError, call, token, vocabularyCall } from "./api.js";
import { cosine, project2d } from "./pca.js";

const TYPING_PAUSE_MS = 350;
const ANALOGY_ANSWERS = 10;
const METHOD_NAMES = {
  ANALOGY_METHOD_COSMUL:
    "3CosMul (Levy & Goldberg 2014): the product of shifted cosines to b and c over that to a",
  ANALOGY_METHOD_COSADD: "3CosAdd: cos(x, b) − cos(x, a) + cos(x, c)",
};
const KIND_NAMES = {
  INDEX_KIND_FLAT: "flat (exact)",
  INDEX_KIND_HNSW: "HNSW",
  INDEX_KIND_IVF_FLAT: "IVF flat",
  INDEX_KIND_IVF_PQ: "IVF-PQ",
  INDEX_KIND_SQ8: "SQ8",
};
const METRIC_NAMES = {
  METRIC_COSINE: "cosine similarity (higher is closer)",
  METRIC_INNER_PRODUCT: "inner product (higher is closer)",
  METRIC_L2: "squared L2 distance (lower is closer)",
};
// The search setting each index kind takes per request.
const KIND_SETTINGS = {
  INDEX_KIND_HNSW: "ef_search",
  INDEX_KIND_IVF_FLAT: "nprobe",
  INDEX_KIND_IVF_PQ: "nprobe",
};
const NUMBER = /^-?(0|[1-9]\d*)(\.\d+)?([eE][-+]?\d+)?$/;
const FILTER = /^([^=<>]+?)\s*(>=|<=|>|<|=)\s*(.*)$/s;
const RANGE_FIELDS = { ">": "gt", ">=": "gte", "<": "lt", "<=": "lte" };

// -- small helpers ----------------------------------------------------------------------------------

/** An element with attributes (`text` sets its text) and children. */
function el(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "text") element.textContent = value;
    else element.setAttribute(name, value === true ? "" : value);
  }
  element.append(...children.filter((child) => child !== null && child !== undefined));
  return element;
}

function svg(tag, attributes = {}, ...children) {
  const element = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (name === "text") element.textContent = value;
    else element.setAttribute(name, String(value));
  }
  element.append(...children);
  return element;
}

const score = (value) => (value ?? 0).toFixed(3);

/** A bar of `fraction` (0 to 1) of the cell's width, drawn beside a score. */
function bar(fraction) {
  const fill = el("span", { class: "bar-fill" });
  fill.style.width = `${Math.round(Math.max(0, Math.min(1, fraction)) * 100)}%`;
  return el("span", { class: "bar", "aria-hidden": "true" }, fill);
}

/** How the server writes a word before comparing it: NFKC, single spaces, lower case. */
const normalizeWord = (word) => word.normalize("NFKC").split(/\s+/).filter(Boolean).join(" ").toLowerCase();

const splitList = (text) =>
  text
    .split(/[,\n]/)
    .map((item) => item.trim())
    .filter(Boolean);

/** "first:second" items (commas or new lines between them); an item without ":" is an input error. */
function parsePairs(text) {
  return splitList(text).map((item) => {
    const colon = item.indexOf(":");
    const first = item.slice(0, colon).trim();
    const second = item.slice(colon + 1).trim();
    if (colon < 0 || !first || !second) {
      throw new CallError("invalid_argument", `cannot read the pair "${item}": write it as first:second`);
    }
    return { first, second };
  });
}

function metadataValue(raw) {
  if (NUMBER.test(raw)) return { numberValue: Number(raw) };
  if (/^(true|false)$/i.test(raw)) return { boolValue: raw.toLowerCase() === "true" };
  return { stringValue: raw };
}

/** Comma-separated filter values; one in double quotes stays a string, commas included. */
function filterValues(raw) {
  const values = [];
  let inside = "";
  let outside = "";
  let quoted = false;
  let inQuotes = false;
  for (const char of [...raw, null]) {
    if (char === '"') {
      inQuotes = !inQuotes;
      quoted = true;
    } else if (char === null || (char === "," && !inQuotes)) {
      values.push(quoted ? { stringValue: inside } : metadataValue(outside.trim()));
      inside = "";
      outside = "";
      quoted = false;
    } else if (inQuotes) inside += char;
    else outside += char;
  }
  if (inQuotes) throw new CallError("invalid_argument", `unclosed quote in the filter value ${raw}`);
  return values;
}

/** A Filter message from lines as the CLI's --filter takes them: key=value, key=a,b, key>=n, … */
function parseFilter(lines) {
  const conditions = lines.map((line) => {
    const match = FILTER.exec(line.trim());
    if (!match || !match[1].trim()) {
      throw new CallError(
        "invalid_argument",
        `cannot read the filter "${line}": use key=value, key=a,b or key>=number`,
      );
    }
    const [, rawKey, operator, raw] = match;
    const key = rawKey.trim();
    if (operator in RANGE_FIELDS) {
      if (!NUMBER.test(raw.trim()))
        throw new CallError("invalid_argument", `the filter "${line}": ${operator} needs a number`);
      return { key, range: { [RANGE_FIELDS[operator]]: Number(raw) } };
    }
    const values = filterValues(raw);
    return values.length === 1 ? { key, equals: values[0] } : { key, anyOf: { values } };
  });
  return { conditions };
}

function metadataText(value) {
  if ("stringValue" in value) return value.stringValue;
  if ("boolValue" in value) return String(value.boolValue);
  return String(value.numberValue ?? 0);
}

/** A table with a header row and body rows of cells (strings or elements). */
function table(headers, rows, className) {
  return el(
    "table",
    { class: className },
    el("thead", {}, el("tr", {}, ...headers.map((header) => el("th", { scope: "col", text: header })))),
    el("tbody", {}, ...rows),
  );
}

function scoredWordRows(words) {
  const best = Math.max(...words.map((item) => item.score ?? 0), 1e-9);
  return words.map((item, rank) =>
    el(
      "tr",
      {},
      el("td", { class: "rank", text: String(rank + 1) }),
      el("td", { class: "word", text: item.word }),
      el("td", { class: "score", text: score(item.score) }),
      el("td", { class: "bar-cell" }, bar((item.score ?? 0) / best)),
    ),
  );
}

// -- the views --------------------------------------------------------------------------------------
// Each view names its fields and how each is kept in the URL: `text` as typed, `list` comma-separated
// (shown with spaces), `lines` one item per line in the page and comma-separated in the URL, `repeated`
// one line per repeated parameter. `ready` says whether the inputs are enough to run; `run` calls the
// API and returns the result's content.

const VIEWS = {
  analogy: {
    title: "Analogy",
    fields: { a: "text", b: "text", c: "text", method: "text" },
    defaults: { method: "cosmul" },
    ready: (p) => p.get("a") && p.get("b") && p.get("c"),
    hint: "Fill in a, b and c: the answer is to c what b is to a.",
    async run(p, progress) {
      const [a, b, c] = ["a", "b", "c"].map((name) => p.get(name));
      const method = p.get("method") === "cosadd" ? "ANALOGY_METHOD_COSADD" : "ANALOGY_METHOD_COSMUL";
      const answer = await vocabularyCall(
        "AnalogyService",
        "SolveAnalogy",
        { positive: [b, c], negative: [a], method, k: ANALOGY_ANSWERS },
        progress,
      );
      const answers = answer.answers ?? [];
      return [
        el(
          "p",
          { class: "headline" },
          `${a} : ${b} :: ${c} : `,
          el("strong", { class: "answer", text: answers[0]?.word ?? "?" }),
        ),
        el(
          "p",
          { class: "method muted" },
          "Scored by ",
          el("span", { class: "method-name", text: METHOD_NAMES[answer.method] ?? answer.method }),
        ),
        table(["#", "word", "score", ""], scoredWordRows(answers), "scores"),
      ];
    },
  },

  relate: {
    title: "Relations",
    fields: { a: "text", b: "text", pairs: "lines" },
    ready: (p) => p.get("a") && p.get("b") && p.get("pairs"),
    hint: "Give a reference pair and at least one candidate pair.",
    async run(p, progress) {
      const candidates = parsePairs(p.get("pairs"));
      const reference = { first: p.get("a"), second: p.get("b") };
      // The percentiles and ranks are computed over the vocabulary, so this waits while it is built.
      const answer = await vocabularyCall(
        "AnalogyService",
        "CompareRelations",
        { reference, candidates },
        progress,
      );
      const rows = (answer.comparisons ?? []).map((item) =>
        el(
          "tr",
          {},
          el("td", { class: "pair", text: `${item.candidate.first} → ${item.candidate.second}` }),
          el("td", { class: "score offset", text: score(item.offsetSimilarity) }),
          el("td", { class: "bar-cell" }, bar(item.offsetSimilarity ?? 0)),
          el("td", { class: "score own", text: score(item.pairSimilarity) }),
          el("td", { class: "score percentile", text: (item.offsetPercentile ?? 0).toFixed(1) }),
          el("td", { class: "score rank", text: String(item.answerRank ?? "–") }),
        ),
      );
      return [
        el(
          "p",
          { class: "headline" },
          `${reference.first} → ${reference.second}: the pair's own similarity is `,
          el("strong", { class: "reference-similarity", text: score(answer.referencePairSimilarity) }),
        ),
        table(
          ["candidate pair", "offset similarity", "", "pair's own similarity", "percentile", "rank of d"],
          rows,
          "scores relations",
        ),
        el(
          "p",
          { class: "muted" },
          `Percentile: the share of ${answer.nullPairCount ?? "the"} random vocabulary pairs whose ` +
            "offset is less like the reference's. Rank of d: where the candidate's second word comes " +
            "when a : b :: c : ? is solved over the vocabulary.",
        ),
      ];
    },
  },

  similar: {
    title: "Similar words",
    fields: { word: "text", k: "text" },
    ready: (p) => p.get("word"),
    hint: "Give a word or a phrase.",
    async run(p, progress) {
      const answer = await vocabularyCall(
        "AnalogyService",
        "FindSimilarWords",
        { queries: [p.get("word")], k: Number(p.get("k") || 10) },
        progress,
      );
      const words = answer.results?.[0]?.words ?? [];
      return [
        el("p", { class: "headline" }, "Nearest to ", el("strong", { text: p.get("word") })),
        table(["#", "word", "cosine", ""], scoredWordRows(words), "scores"),
      ];
    },
  },

  map: {
    title: "Map",
    fields: { words: "list", pairs: "list" },
    ready: (p) => p.get("words") || p.get("pairs"),
    hint: "Give words, or pairs of words, to place on the map.",
    async run(p, progress) {
      const pairs = parsePairs(p.get("pairs") ?? "").map(({ first, second }) => ({
        first: normalizeWord(first),
        second: normalizeWord(second),
      }));
      const words = [
        ...new Set([
          ...splitList(p.get("words") ?? "").map(normalizeWord),
          ...pairs.flatMap((pair) => [pair.first, pair.second]),
        ]),
      ];
      if (words.length < 2)
        throw new CallError("invalid_argument", "give at least two words to place on the map");
      const vocabulary = await vocabularyCall("AnalogyService", "GetVocabulary", {}, progress);
      // The vectors the analogy answers come from: each word written as the server writes it.
      const template = vocabulary.wordTemplate ?? "{}";
      const embedded = await call("EmbeddingService", "Embed", {
        texts: words.map((word) => template.split("{}").join(word)),
      });
      const vectors = embedded.embeddings.map((embedding) => embedding.values);
      const { points, explained } = project2d(vectors);
      const position = new Map(words.map((word, i) => [word, points[i]]));
      const vector = new Map(words.map((word, i) => [word, vectors[i]]));
      const offset = (pair) => vector.get(pair.second).map((value, d) => value - vector.get(pair.first)[d]);
      const rows = pairs.map((pair, i) =>
        el(
          "tr",
          {},
          el("td", { class: `pair pair-${i % 8}`, text: `${pair.first} → ${pair.second}` }),
          el("td", { class: "score", text: i === 0 ? "—" : score(cosine(offset(pair), offset(pairs[0]))) }),
        ),
      );
      const [across, up] = explained.map((share) => `${(share * 100).toFixed(0)}%`);
      const written = template.split("{}").join("word");
      const caption = el(
        "p",
        { class: "muted" },
        `Principal components of the ${words.length} words' vectors, embedded as ${written}: ` +
          `the horizontal axis keeps ${across} of their variance, the vertical ${up}.`,
      );
      return [
        drawMap(words, position, pairs),
        caption,
        pairs.length > 1
          ? table(
              ["pair", `offset cosine with ${pairs[0].first} → ${pairs[0].second} (all dimensions)`],
              rows,
              "scores pairs",
            )
          : null,
      ].filter(Boolean);
    },
  },

  tokenize: {
    title: "Tokenizer",
    fields: { text: "text" },
    ready: (p) => p.get("text"),
    hint: "Type a text to see its tokens.",
    async run(p) {
      const text = p.get("text");
      const answer = await call("EmbeddingService", "Tokenize", { texts: [text] });
      const result = answer.results?.[0] ?? {};
      const tokens = result.tokens ?? [];
      return [
        highlightTokens(text, tokens),
        el(
          "p",
          { class: "muted token-count" },
          `${tokens.length} tokens, ${tokens.filter((item) => item.special).length} of them special.`,
          result.exceedsMaxLength
            ? " Longer than the model's maximum: Embed would cut it (or refuse it without truncate)."
            : "",
        ),
        table(
          ["#", "token", "id", "offsets"],
          tokens.map((item, i) =>
            el(
              "tr",
              { class: item.special ? "special" : null },
              el("td", { class: "rank", text: String(i) }),
              el(
                "td",
                { class: "token" },
                el("code", { text: item.text }),
                item.special ? el("span", { class: "tag", text: "special" }) : null,
              ),
              el("td", { class: "id", text: String(item.id ?? 0) }),
              el("td", {
                class: "offsets",
                text: item.special ? "—" : `${item.start ?? 0}–${item.end ?? 0}`,
              }),
            ),
          ),
          "tokens",
        ),
      ];
    },
  },

  search: {
    title: "Search",
    fields: { index: "text", q: "text", k: "text", ef_search: "text", nprobe: "text", filter: "repeated" },
    ready: (p) => p.get("index") && p.get("q"),
    hint: "Choose an index and type what to look for.",
    async run(p) {
      const request = {
        indexName: p.get("index"),
        queries: [{ text: p.get("q") }],
        k: Number(p.get("k") || 10),
      };
      const filters = p.getAll("filter");
      if (filters.length) request.filter = parseFilter(filters);
      if (p.get("ef_search")) request.efSearch = Number(p.get("ef_search"));
      if (p.get("nprobe")) request.nprobe = Number(p.get("nprobe"));
      const answer = await call("IndexService", "Search", request);
      const hits = answer.results?.[0]?.hits ?? [];
      if (!hits.length) return [el("p", { class: "headline", text: "No document matches." })];
      return [
        el(
          "ol",
          { class: "hits" },
          ...hits.map((hit) =>
            el(
              "li",
              { class: "hit" },
              el(
                "div",
                { class: "hit-head" },
                el("span", { class: "hit-id", text: hit.id }),
                el("span", { class: "score", text: score(hit.score) }),
              ),
              hit.text ? el("p", { class: "hit-text", text: hit.text }) : null,
              el(
                "div",
                { class: "metadata" },
                ...Object.entries(hit.metadata ?? {})
                  .sort()
                  .map(([key, value]) =>
                    el("span", { class: "chip", text: `${key}=${metadataText(value)}` }),
                  ),
              ),
            ),
          ),
        ),
      ];
    },
  },
};

function drawMap(words, position, pairs) {
  const width = 760;
  const height = 460;
  const padding = 56;
  const xs = words.map((word) => position.get(word)[0]);
  const ys = words.map((word) => position.get(word)[1]);
  const [minX, maxX, minY, maxY] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
  // One scale for both axes: angles, and so parallel arrows, are kept.
  const scale = Math.min(
    (width - 2 * padding) / Math.max(maxX - minX, 1e-9),
    (height - 2 * padding) / Math.max(maxY - minY, 1e-9),
  );
  const place = (word) => {
    const [x, y] = position.get(word);
    return [width / 2 + (x - (minX + maxX) / 2) * scale, height / 2 - (y - (minY + maxY) / 2) * scale];
  };
  const markers = pairs.map((_, i) =>
    svg(
      "marker",
      {
        id: `arrow-${i % 8}`,
        viewBox: "0 0 10 10",
        refX: 9,
        refY: 5,
        markerWidth: 7,
        markerHeight: 7,
        orient: "auto-start-reverse",
        class: `pair-${i % 8}`,
      },
      svg("path", { d: "M0,0 L10,5 L0,10 z" }),
    ),
  );
  const arrows = pairs.map((pair, i) => {
    const [x1, y1] = place(pair.first);
    const [x2, y2] = place(pair.second);
    const length = Math.hypot(x2 - x1, y2 - y1) || 1;
    const shorten = Math.min(9, length / 3); // stop at the point's edge, not on its centre
    return svg("line", {
      x1,
      y1,
      x2: x2 - ((x2 - x1) / length) * shorten,
      y2: y2 - ((y2 - y1) / length) * shorten,
      class: `arrow pair-${i % 8}`,
      "marker-end": `url(#arrow-${i % 8})`,
      "data-pair": `${pair.first}:${pair.second}`,
    });
  });
  const inPair = new Map();
  pairs.forEach((pair, i) => {
    for (const word of [pair.first, pair.second]) if (!inPair.has(word)) inPair.set(word, i % 8);
  });
  const points = words.map((word) => {
    const [x, y] = place(word);
    const colour = inPair.has(word) ? `pair-${inPair.get(word)}` : "lone";
    return svg(
      "g",
      { class: `point ${colour}`, "data-word": word },
      svg("circle", { cx: x, cy: y, r: 5 }, svg("title", { text: word })),
      svg("text", { x: x + 8, y: y - 8, class: "label", text: word }),
    );
  });
  return svg(
    "svg",
    {
      viewBox: `0 0 ${width} ${height}`,
      class: "map",
      role: "img",
      "aria-label": `Map of ${words.join(", ")}`,
    },
    svg("defs", {}, ...markers),
    ...arrows,
    ...points,
  );
}

/** The text with each token's span marked (offsets count code points, as the server's do). */
function highlightTokens(text, tokens) {
  const characters = Array.from(text);
  const line = el("p", { class: "token-text" });
  let at = 0;
  tokens
    .filter((item) => !item.special)
    .forEach((item, i) => {
      const [start, end] = [item.start ?? 0, item.end ?? 0];
      if (start > at) line.append(characters.slice(at, start).join(""));
      line.append(
        el("mark", {
          class: `tok tok-${i % 2}`,
          title: `${item.text} (id ${item.id ?? 0})`,
          text: characters.slice(start, end).join(""),
        }),
      );
      at = Math.max(at, end);
    });
  line.append(characters.slice(at).join(""));
  return line;
}

// -- state in the URL -------------------------------------------------------------------------------

const section = (name) => document.getElementById(`view-${name}`);
const form = (name) => section(name).querySelector("form.query");
const result = (name) => section(name).querySelector(".result");

/** The view's parameters as the form holds them (defaults left out, so links stay short). */
function formParams(name) {
  const view = VIEWS[name];
  const fields = form(name).elements;
  const params = new URLSearchParams();
  for (const [field, kind] of Object.entries(view.fields)) {
    const value = fields[field].value.trim();
    if (kind === "repeated") {
      for (const line of value
        .split("\n")
        .map((item) => item.trim())
        .filter(Boolean))
        params.append(field, line);
    } else if (kind === "lines") {
      const items = value
        .split("\n")
        .map((line) =>
          line
            .split(":")
            .map((part) => part.trim())
            .join(":"),
        )
        .filter(Boolean);
      if (items.length) params.set(field, items.join(","));
    } else if (kind === "list") {
      const items = splitList(value);
      if (items.length) params.set(field, items.join(","));
    } else if (value && value !== view.defaults?.[field]) params.set(field, value);
  }
  return params;
}

function fillForm(name, params) {
  const view = VIEWS[name];
  const fields = form(name).elements;
  for (const [field, kind] of Object.entries(view.fields)) {
    const input = fields[field];
    if (kind === "repeated") input.value = params.getAll(field).join("\n");
    else if (kind === "lines")
      input.value = splitList(params.get(field) ?? "")
        .map((item) => item.replace(":", " : "))
        .join("\n");
    else if (kind === "list") input.value = splitList(params.get(field) ?? "").join(", ");
    else {
      const value = params.get(field) ?? view.defaults?.[field] ?? "";
      if (
        input.tagName === "SELECT" &&
        value &&
        ![...input.options].some((option) => option.value === value)
      ) {
        input.append(el("option", { value, text: value }));
      }
      input.value = value;
    }
  }
}

/** The query as links write it: spaces as %20, and ":" and "," left readable. */
function queryString(params) {
  return [...params]
    .map(([key, value]) => `${key}=${encodeURIComponent(value).replace(/%3A/gi, ":").replace(/%2C/gi, ",")}`)
    .join("&");
}

const urlOf = (name, params) => {
  const query = queryString(params);
  return `/${name}${query ? `?${query}` : ""}`;
};

function viewOfPath(path) {
  const name = path.replace(/^\/+|\/+$/g, "");
  return name in VIEWS ? name : "analogy";
}

// -- running a view ---------------------------------------------------------------------------------

const runs = Object.fromEntries(Object.keys(VIEWS).map((name) => [name, 0]));
const typingTimers = {};
const lastQuery = {};
let currentView = null;

function setResult(name, state, forQuery, ...content) {
  const out = result(name);
  out.dataset.state = state;
  out.dataset.for = forQuery;
  if (content.length) out.replaceChildren(...content);
}

async function runView(name, params) {
  const view = VIEWS[name];
  const forQuery = queryString(params);
  const run = ++runs[name];
  const isCurrent = () => runs[name] === run;
  if (!view.ready(params)) {
    setResult(name, "idle", forQuery, el("p", { class: "muted hint", text: view.hint }));
    return;
  }
  setResult(name, "loading", forQuery);
  result(name).prepend(el("p", { class: "working muted", text: "Working…" }));
  const progress = {
    isCurrent,
    onWait: (message) => {
      if (!isCurrent()) return;
      result(name).querySelector(".working")?.remove();
      result(name).prepend(
        el("p", {
          class: "working muted",
          text: `The server is still building its vocabulary: ${message}. This page asks again by itself.`,
        }),
      );
    },
  };
  try {
    const content = await view.run(params, progress);
    if (isCurrent()) setResult(name, "ready", forQuery, ...content);
  } catch (error) {
    if (!isCurrent()) return;
    const failure =
      error instanceof CallError ? error : new CallError("internal", String(error?.message ?? error));
    setResult(name, "error", forQuery, el("p", { class: "error", role: "alert", text: failure.words }));
    if (failure.code === "unauthenticated")
      askForToken(failure.message, () => runView(name, formParams(name)));
  }
}

function showView(name, params) {
  currentView = name;
  lastQuery[name] = params;
  for (const other of Object.keys(VIEWS)) section(other).hidden = other !== name;
  for (const link of document.querySelectorAll("nav a[data-view]")) {
    if (link.dataset.view === name) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  document.title = `${VIEWS[name].title} · vecserve`;
  fillForm(name, params);
  if (name === "search") loadIndexes();
  runView(name, params);
}

function showLocation() {
  showView(viewOfPath(location.pathname), new URLSearchParams(location.search));
}

function onTyping(name) {
  const params = formParams(name);
  lastQuery[name] = params;
  history.replaceState(null, "", urlOf(name, params));
  if (name === "search") showIndexSettings();
  clearTimeout(typingTimers[name]);
  typingTimers[name] = setTimeout(() => runView(name, params), TYPING_PAUSE_MS);
}

// -- the search view's indexes ----------------------------------------------------------------------

let indexes = null;

async function loadIndexes() {
  if (indexes) return;
  const select = form("search").elements.index;
  const info = section("search").querySelector(".index-info");
  const found = [];
  try {
    let pageToken = "";
    do {
      const page = await call("IndexService", "ListIndexes", { pageSize: 1000, pageToken });
      found.push(...(page.indexes ?? []));
      pageToken = page.nextPageToken ?? "";
    } while (pageToken);
  } catch (error) {
    info.textContent = `The indexes cannot be listed. ${error.words ?? error.message}`;
    if (error.code === "unauthenticated") askForToken(error.message, loadIndexes);
    return;
  }
  indexes = new Map(found.map((index) => [index.name, index]));
  const chosen = select.value;
  select.replaceChildren(
    el("option", { value: "", text: found.length ? "choose an index" : "no index yet" }),
  );
  for (const name of new Set([...indexes.keys(), chosen].filter(Boolean)))
    select.append(el("option", { value: name, text: name }));
  select.value = chosen;
  if (!found.length)
    info.textContent = "This server has no index yet: create one (vecserve index create) and add documents.";
  showIndexSettings();
}

/** The chosen index described, and only the search setting its kind takes shown. */
function showIndexSettings() {
  const name = form("search").elements.index.value;
  const index = indexes?.get(name);
  const setting = index ? KIND_SETTINGS[index.kind] : undefined;
  for (const label of section("search").querySelectorAll("[data-setting]")) {
    const input = label.querySelector("input");
    label.hidden = index ? label.dataset.setting !== setting && !input.value : false;
  }
  if (index) {
    const kind = KIND_NAMES[index.kind] ?? index.kind;
    const scoring = METRIC_NAMES[index.metric] ?? index.metric;
    section("search").querySelector(".index-info").textContent =
      `${index.name}: ${kind}, ${index.documentCount ?? 0} documents of ${index.dimension} dimensions, ` +
      `scored by ${scoring}.`;
  }
}

// -- the token --------------------------------------------------------------------------------------

const waitingForToken = [];

function askForToken(reason, retry) {
  if (retry) waitingForToken.push(retry);
  const dialog = document.getElementById("token-dialog");
  dialog.querySelector(".token-reason").textContent = reason;
  document.getElementById("token-button").hidden = false;
  if (!dialog.open) dialog.showModal();
}

function setUpTokenDialog() {
  const dialog = document.getElementById("token-dialog");
  const input = dialog.querySelector("input[name=token]");
  dialog.addEventListener("close", () => {
    if (dialog.returnValue === "use" && input.value.trim()) {
      token.set(input.value.trim());
      input.value = "";
      for (const retry of waitingForToken.splice(0)) retry();
    } else waitingForToken.length = 0;
  });
  const button = document.getElementById("token-button");
  button.hidden = !token.get();
  button.addEventListener("click", () =>
    askForToken("Give another token, or cancel to keep the one in use."),
  );
}

// -- start ------------------------------------------------------------------------------------------

function start() {
  for (const name of Object.keys(VIEWS)) {
    const viewForm = form(name);
    viewForm.addEventListener("input", () => onTyping(name));
    // A menu chosen by script or some assistive tools sends only "change".
    viewForm.addEventListener("change", (event) => {
      if (event.target.tagName === "SELECT") onTyping(name);
    });
    viewForm.addEventListener("submit", (event) => {
      event.preventDefault();
      clearTimeout(typingTimers[name]);
      const params = formParams(name);
      history.replaceState(null, "", urlOf(name, params));
      runView(name, params);
    });
  }
  document.addEventListener("click", (event) => {
    const link = event.target.closest("a[href^='/']");
    if (!link || event.metaKey || event.ctrlKey || event.shiftKey || event.button !== 0) return;
    const url = new URL(link.href);
    const name = viewOfPath(url.pathname);
    event.preventDefault();
    // A tab keeps the inputs its view had; an example link brings its own.
    const params =
      link.dataset.view && !url.search ? (lastQuery[name] ?? new URLSearchParams()) : url.searchParams;
    history.pushState(null, "", urlOf(name, params));
    showView(name, params);
  });
  window.addEventListener("popstate", showLocation);
  setUpTokenDialog();
  showLocation();
}

start();
