/// The page served at `/`: a chat that streams replies from /v1/chat/completions. Plain HTML and
/// script, no build step; the conversation lives in the page, the API key (if the server wants
/// one) in the browser's local storage.
enum ChatPage {
    static let html = #"""
<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Ember</title>
<style>
  body { font: 16px/1.5 system-ui, sans-serif; max-width: 46rem; margin: 0 auto; padding: 1rem; color: #222; }
  header { display: flex; gap: .5rem; align-items: baseline; justify-content: space-between; }
  h1 { font-size: 1.2rem; margin: 0; }
  #log { display: flex; flex-direction: column; gap: .6rem; margin: 1rem 0; }
  .turn { white-space: pre-wrap; padding: .5rem .75rem; border-radius: .5rem; }
  .user { background: #eef3ff; align-self: flex-end; }
  .assistant { background: #f4f4f4; }
  .error { background: #fde8e8; }
  form { display: flex; gap: .5rem; }
  textarea { flex: 1; font: inherit; min-height: 3rem; }
  input[type=password] { width: 10rem; }
</style>
</head>
<body>
<header><h1>Ember</h1><span id="model"></span>
  <input id="key" type="password" placeholder="API key (if set)"></header>
<div id="log"></div>
<form id="form">
  <textarea id="prompt" placeholder="Message" autofocus></textarea>
  <button id="send" type="submit">Send</button>
</form>
<script>
const log = document.getElementById("log");
const form = document.getElementById("form");
const prompt = document.getElementById("prompt");
const send = document.getElementById("send");
const key = document.getElementById("key");
const messages = [];
key.value = localStorage.getItem("ember-api-key") || "";
key.addEventListener("change", () => localStorage.setItem("ember-api-key", key.value));

function headers() {
  const h = { "Content-Type": "application/json" };
  if (key.value) h["Authorization"] = "Bearer " + key.value;
  return h;
}

function addTurn(role, text) {
  const div = document.createElement("div");
  div.className = "turn " + role;
  div.textContent = text;
  log.appendChild(div);
  return div;
}

fetch("/v1/models", { headers: headers() }).then(r => r.json())
  .then(j => { document.getElementById("model").textContent = j.data[0].id; }).catch(() => {});

prompt.addEventListener("keydown", e => {
  if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); form.requestSubmit(); }
});

form.addEventListener("submit", async e => {
  e.preventDefault();
  const text = prompt.value.trim();
  if (!text) return;
  prompt.value = "";
  messages.push({ role: "user", content: text });
  addTurn("user", text);
  const reply = addTurn("assistant", "");
  send.disabled = true;
  try {
    const response = await fetch("/v1/chat/completions", {
      method: "POST", headers: headers(),
      body: JSON.stringify({ messages, stream: true })
    });
    if (!response.ok) {
      const body = await response.json().catch(() => ({}));
      throw new Error((body.error && body.error.message) || response.statusText);
    }
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        for (const line of event.split("\n")) {
          if (!line.startsWith("data: ")) continue;
          const data = line.slice(6);
          if (data === "[DONE]") continue;
          const chunk = JSON.parse(data);
          if (chunk.error) throw new Error(chunk.error.message);
          const delta = chunk.choices.length ? chunk.choices[0].delta : {};
          if (delta.content) reply.textContent += delta.content;
        }
      }
    }
    messages.push({ role: "assistant", content: reply.textContent });
  } catch (error) {
    reply.className = "turn error";
    reply.textContent = "Error: " + error.message;
    messages.pop();
  } finally {
    send.disabled = false;
    prompt.focus();
  }
});
</script>
</body>
</html>
"""#
}
