// Talking to the server: the same /v1 API any OpenAI client uses, with the key the user gave
// this page (kept in this browser only).

const KEY = "cuvee.apiKey";

export function apiKey() {
  return localStorage.getItem(KEY) || "";
}

export function setApiKey(value) {
  if (value) localStorage.setItem(KEY, value);
  else localStorage.removeItem(KEY);
}

function headers() {
  const out = { "Content-Type": "application/json" };
  const key = apiKey();
  if (key) out.Authorization = `Bearer ${key}`;
  return out;
}

// An OpenAI-shaped error answer, or a transport failure, as one exception with a readable message.
export class ApiError extends Error {
  constructor(status, body) {
    const detail = body && body.error ? body.error.message : `HTTP ${status}`;
    super(detail);
    this.status = status;
    this.body = body;
  }
}

async function read(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  if (!response.ok) throw new ApiError(response.status, body);
  return body;
}

export async function getJSON(path) {
  return read(await fetch(path, { headers: headers() }));
}

export async function postJSON(path, body, signal) {
  return read(await fetch(path, { method: "POST", headers: headers(), body: JSON.stringify(body), signal }));
}

// The data objects of a server-sent event stream (a POST of ``body``, or a GET when it is null),
// until [DONE]; an error object in the stream (a failure after the status went out) is thrown
// as an ApiError.
export async function* stream(path, body, signal) {
  const response = await fetch(path, {
    method: body === null ? "GET" : "POST",
    headers: headers(),
    body: body === null ? undefined : JSON.stringify(body),
    signal,
  });
  if (!response.ok) await read(response);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer = (buffer + value).replace(/\r\n/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data === "[DONE]") return;
        const parsed = JSON.parse(data);
        if (parsed.error) throw new ApiError(200, parsed);
        yield parsed;
      }
    }
  }
}
