// vpsshell web console: the page's only script (the Content-Security-Policy forbids inline ones).
//
// The console link's token is in the URL's fragment, which the browser never sends to a server.
// It is read once, removed from the address bar and the history, and sent once over the
// WebSocket; vpsshell-web hands it to the helper, which decides everything. This script only
// shows what the helper sends (raw console bytes, and its notice/ping/closed messages) and
// sends keystrokes (UTF-8), window sizes, pongs and a detach.
"use strict";

(function () {
  const body = document.body;
  const $ = (id) => document.getElementById(id);
  const token = window.location.hash.slice(1);
  // no token in the address bar, the history, or a bookmark: a reload cannot reuse it
  window.history.replaceState(null, "", window.location.pathname);

  function setState(state, text) {
    body.dataset.state = state;
    $("state").textContent = text;
    $("state").classList.toggle("ended", state === "ended" || state === "refused");
  }

  function showNotice(text, ended) {
    const notice = $("notice");
    notice.textContent = text;
    notice.hidden = false;
    notice.classList.toggle("ended", Boolean(ended));
  }

  function refuse(text) {
    setState("refused", "refused");
    $("terminal").hidden = true;
    $("refused-text").textContent = text;
    $("refused").hidden = false;
    if (/already used/.test(text)) {
      $("refused-title").textContent = "This console link was already used";
    } else if (/expired/.test(text)) {
      $("refused-title").textContent = "This console link has expired";
    } else if (/not a valid console link|no link/.test(text)) {
      $("refused-title").textContent = "This is not a valid console link";
    }
  }

  if (!token) {
    refuse("There is no console link in this address (a link works once: reloading the page " +
      "after it opened does not open it again).");
    return;
  }

  const term = new window.Terminal({
    cursorBlink: true,
    scrollback: 5000,
    fontFamily: "DejaVu Sans Mono, Menlo, Consolas, monospace",
    fontSize: 15,
  });
  const fit = new window.FitAddon.FitAddon();
  term.loadAddon(fit);
  term.open($("terminal"));
  fit.fit();

  const encoder = new TextEncoder();
  const scheme = window.location.protocol === "https:" ? "wss:" : "ws:";
  const ws = new WebSocket(scheme + "//" + window.location.host + "/ws");
  ws.binaryType = "arraybuffer";
  let writable = false;
  let ended = false;

  function send(message) {
    if (ws.readyState === WebSocket.OPEN) {
      ws.send(typeof message === "string" ? message : JSON.stringify(message));
    }
  }

  function end(text) {
    if (ended) return;
    ended = true;
    writable = false;
    term.options.disableStdin = true;
    setState("ended", "ended");
    showNotice(text, true);
    $("detach").disabled = true;
    $("paste").disabled = true;
  }

  function typed(data) {
    if (writable) ws.send(encoder.encode(data));
  }

  function copySelection() {
    const text = term.getSelection();
    if (text && navigator.clipboard) navigator.clipboard.writeText(text);
  }

  function paste() {
    if (writable && navigator.clipboard) {
      navigator.clipboard.readText().then((text) => term.paste(text));
    }
  }

  term.onData(typed);
  term.onBinary((data) => {
    if (writable) ws.send(Uint8Array.from(data, (c) => c.charCodeAt(0) & 0xff));
  });
  term.onSelectionChange(() => { $("copy").disabled = !term.hasSelection(); });
  term.attachCustomKeyEventHandler((event) => {
    if (event.type === "keydown" && event.ctrlKey && event.shiftKey) {
      if (event.code === "KeyC") { copySelection(); return false; }
      if (event.code === "KeyV") { paste(); return false; }
    }
    return true;
  });
  $("copy").addEventListener("click", copySelection);
  $("paste").addEventListener("click", paste);
  $("detach").addEventListener("click", () => send({ op: "detach" }));
  window.addEventListener("resize", () => {
    fit.fit();
    send({ op: "resize", rows: term.rows, cols: term.cols });
  });

  ws.addEventListener("open", () => {
    send({ op: "redeem", token: token, rows: term.rows, cols: term.cols });
  });

  ws.addEventListener("message", (event) => {
    if (typeof event.data !== "string") {
      term.write(new Uint8Array(event.data));
      return;
    }
    const message = JSON.parse(event.data);
    switch (message.type || message.event) {
      case "attached":
        $("domain").textContent = message.domain;
        $("mode").textContent = message.mode === "watch" ? "watching (read-only)" : "writer";
        $("mode").className = "field " + message.mode;
        $("user").textContent = message.user;
        document.title = message.domain + " console";
        writable = message.mode === "write";
        term.options.disableStdin = !writable;
        $("detach").disabled = false;
        $("paste").disabled = !writable;
        setState("attached", "attached");
        term.focus();
        break;
      case "ping":
        send({ op: "pong" });
        break;
      case "notice":
        showNotice(message.text, false);
        term.write("\r\n[vpsshell: " + message.text + "]\r\n");
        break;
      case "closed":
        end(message.text);
        term.write("\r\n[vpsshell: " + message.text + "]\r\n");
        break;
      case "refused":
        refuse(message.text);
        break;
    }
  });

  ws.addEventListener("close", () => {
    if (body.dataset.state !== "refused") end(ended ? $("notice").textContent : "connection lost");
  });
})();
