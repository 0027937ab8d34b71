// The page's client of the vecserve HTTP/JSON API: Connect unary calls (POST /vecserve.v1.Service/Method
// with a JSON body), the same requests curl can make. The bearer token, when the server needs one, lives
// only in this tab's sessionStorage.

const TOKEN_KEY = "vecserve.token";
// Vocabulary calls ask the server to answer within this time, so a vocabulary still being built is
// reported (with its progress) instead of holding the call for a minute.
const VOCABULARY_TIMEOUT_MS = 15000;
const BUILD_RETRY_MS = 2000;

const CODE_WORDS = {
  canceled: "Cancelled",
  unknown: "Unknown error",
  invalid_argument: "Invalid input",
  deadline_exceeded: "Timed out",
  not_found: "Not found",
  already_exists: "Already exists",
  permission_denied: "Not allowed",
  resource_exhausted: "Too much at once",
  failed_precondition: "Not ready",
  aborted: "Aborted",
  out_of_range: "Out of range",
  unimplemented: "Not supported",
  internal: "Server error",
  unavailable: "Unavailable",
  data_loss: "Data loss",
  unauthenticated: "Token needed",
};

// Connect's codes for HTTP statuses, for answers without a Connect error body (a proxy's, say).
const HTTP_CODES = {
  400: "invalid_argument",
  401: "unauthenticated",
  403: "permission_denied",
  404: "unimplemented",
  408: "deadline_exceeded",
  429: "unavailable",
  502: "unavailable",
  503: "unavailable",
  504: "unavailable",
};

export class CallError extends Error {
  constructor(code, message) {
    super(message);
    this.code = code;
  }

  /** The error in words: what kind of failure, then the server's own message. */
  get words() {
    return `${CODE_WORDS[this.code] ?? this.code}: ${this.message}`;
  }

  get vocabularyBuilding() {
    return this.code === "failed_precondition" && this.message.includes("still being built");
  }
}

export const token = {
  get: () => sessionStorage.getItem(TOKEN_KEY),
  set: (value) => sessionStorage.setItem(TOKEN_KEY, value),
  clear: () => sessionStorage.removeItem(TOKEN_KEY),
};

/** One Connect unary call; resolves to the response message as JSON, or rejects with a CallError. */
export async function call(service, method, request, { timeoutMs } = {}) {
  const headers = { "content-type": "application/json" };
  const bearer = token.get();
  if (bearer) headers.authorization = `Bearer ${bearer}`;
  if (timeoutMs) headers["connect-timeout-ms"] = String(timeoutMs);
  let response;
  try {
    response = await fetch(`/vecserve.v1.${service}/${method}`, {
      method: "POST",
      headers,
      body: JSON.stringify(request),
    });
  } catch (error) {
    throw new CallError("unavailable", `the server cannot be reached (${error.message})`);
  }
  const text = await response.text();
  let body = null;
  try {
    body = text ? JSON.parse(text) : {};
  } catch {
    // not JSON: reported below by its HTTP status
  }
  if (!response.ok) {
    const code = body?.code ?? HTTP_CODES[response.status] ?? "unknown";
    throw new CallError(code, body?.message ?? `HTTP ${response.status} ${response.statusText}`);
  }
  if (body === null) throw new CallError("internal", "the server's answer is not JSON");
  return body;
}

/**
 * A call that needs the analogy vocabulary: while the server is still building it, `onWait` gets the
 * server's progress message and the call is retried, until it answers or `isCurrent()` turns false.
 */
export async function vocabularyCall(service, method, request, { onWait, isCurrent }) {
  for (;;) {
    try {
      return await call(service, method, request, { timeoutMs: VOCABULARY_TIMEOUT_MS });
    } catch (error) {
      if (!(error instanceof CallError && error.vocabularyBuilding) || !isCurrent()) throw error;
      onWait(error.message);
      await new Promise((resolve) => setTimeout(resolve, BUILD_RETRY_MS));
      if (!isCurrent()) throw error;
    }
  }
}
