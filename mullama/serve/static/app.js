// The mullama page: choose a stored clip (by id, or by words in its captions) or upload audio, play it, ask with
// history (answers stream in through /v1/chat/completions), and browse similar tracks. Plain browser JavaScript,
// no build step.
"use strict";

const state = { model: "", clipId: null, audio: null, label: "", history: [], busy: false, asking: null,
                similar: null, search: null, playing: null };
const $ = (id) => document.getElementById(id);

function headers(json = true) {
  const key = $("api-key").value.trim();
  const result = json ? { "Content-Type": "application/json" } : {};
  if (key) result.Authorization = `Bearer ${key}`;
  return result;
}

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "muted";
}

async function errorText(response) {
  try {
    const body = await response.json();
    return body.error ? body.error.message : response.statusText;
  } catch (_) {
    return `${response.status} ${response.statusText}`;
  }
}

// Starts a request in `slot` (a state key), aborting the one still running there: a newer search, neighbour
// list or conversation always wins over an older one.
function abortable(slot) {
  if (state[slot]) state[slot].abort();
  state[slot] = new AbortController();
  return state[slot].signal;
}

async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: headers(options.method === "POST") });
  if (!response.ok) throw new Error(await errorText(response));
  return response;
}

function listItem(text, buttons) {
  const item = document.createElement("li");
  const name = document.createElement("span");
  name.textContent = text;
  item.appendChild(name);
  const group = document.createElement("span");
  for (const [label, action, cls] of buttons) {
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = label;
    if (cls) button.className = cls;
    button.addEventListener("click", action);
    group.appendChild(button);
  }
  item.appendChild(group);
  return item;
}

function setPlayer(source) {
  if (state.playing) URL.revokeObjectURL(state.playing);
  state.playing = source instanceof Blob ? URL.createObjectURL(source) : null;
  if (state.playing) $("player").src = state.playing;
  else $("player").removeAttribute("src");
}

async function play(clipId) {
  const response = await api(`/v1/audio/${encodeURIComponent(clipId)}`);
  setPlayer(await response.blob());
}

function resetConversation() {
  if (state.asking) state.asking.abort();  // an answer still streaming belongs to the old conversation
  state.history = [];
  $("history").replaceChildren();
}

async function chooseClip(clip) {
  state.clipId = clip.id;
  state.audio = null;
  state.label = clip.id;
  $("track-name").textContent = `Stored clip ${clip.id} (${clip.duration.toFixed(1)} s)`;
  resetConversation();
  setPlayer(null);
  if (clip.playable) play(clip.id).catch((error) => setStatus(error.message, true));
  showSimilar({ clip_id: clip.id });
}

async function showSimilar(track) {
  const list = $("similar");
  list.replaceChildren();
  try {
    const response = await api("/v1/similar", { method: "POST", body: JSON.stringify({ ...track, k: 5 }),
                                                signal: abortable("similar") });
    const neighbours = (await response.json()).data;
    list.replaceChildren();
    for (const neighbour of neighbours) {
      const buttons = [["ask", () => chooseClip({ id: neighbour.clip_id, duration: neighbour.duration,
                                                  playable: neighbour.playable }), "choose"]];
      if (neighbour.playable) buttons.unshift(["play", () => play(neighbour.clip_id).catch(
        (error) => setStatus(error.message, true))]);
      list.appendChild(listItem(`${neighbour.clip_id} (${neighbour.score.toFixed(3)})`, buttons));
    }
  } catch (error) {
    if (error.name !== "AbortError") list.appendChild(listItem(`no similar tracks: ${error.message}`, []));
  }
}

// Clips whose captions match the words (a server started with --text-index); none when it has no text index.
async function wordSearch(text, signal) {
  if (!text) return [];
  const response = await fetch("/v1/search", { method: "POST", headers: headers(), signal,
                                                body: JSON.stringify({ query: text, k: 10 }) });
  return response.ok ? (await response.json()).data : [];
}

let searchTimer = null;
async function search() {
  const list = $("clip-results");
  try {
    const text = $("clip-search").value.trim();
    const signal = abortable("search");
    const response = await api(`/v1/clips?query=${encodeURIComponent(text)}&limit=20`, { signal });
    const clips = (await response.json()).data;
    const found = await wordSearch(text, signal);
    list.replaceChildren();
    for (const clip of clips) {
      list.appendChild(listItem(`${clip.id} (by id)`, [["choose", () => chooseClip(clip), "choose"]]));
    }
    for (const hit of found) {
      const clip = { id: hit.clip_id, duration: hit.duration, playable: hit.playable };
      list.appendChild(listItem(`${hit.clip_id} (by words, ${hit.score.toFixed(3)}): ${hit.captions[0] || ""}`,
                                [["choose", () => chooseClip(clip), "choose"]]));
    }
    if (!list.children.length) list.appendChild(listItem("no stored clip matches", []));
  } catch (error) {
    if (error.name !== "AbortError") list.replaceChildren(listItem(error.message, []));
  }
}

const MAX_UPLOAD_BYTES = 40e6;  // base64 grows it by a third: stays under the server's default 64 MB body

function upload(file) {
  if (file.size > MAX_UPLOAD_BYTES) {
    setStatus(`${file.name} is ${(file.size / 1e6).toFixed(1)} MB; upload at most ${MAX_UPLOAD_BYTES / 1e6} MB`, true);
    return;
  }
  const reader = new FileReader();
  reader.onload = () => {
    const extension = file.name.split(".").pop().toLowerCase();
    const format = ["wav", "mp3", "flac", "ogg"].includes(extension) ? extension : "wav";
    state.audio = { data: reader.result.split(",", 2)[1], format };
    state.clipId = null;
    state.label = file.name;
    $("track-name").textContent = `Uploaded ${file.name}`;
    setPlayer(file);
    resetConversation();
    showSimilar({ input_audio: state.audio });
  };
  reader.readAsDataURL(file);
}

function messages(question) {
  const result = [];
  const turns = [...state.history, [question, null]];
  turns.forEach(([asked, answered], index) => {
    const content = [{ type: "text", text: asked }];
    if (index === 0 && state.audio) content.push({ type: "input_audio", input_audio: state.audio });
    result.push({ role: "user", content });
    if (answered !== null) result.push({ role: "assistant", content: answered });
  });
  return result;
}

function addTurn(question) {
  const turn = document.createElement("div");
  turn.className = "turn";
  const asked = document.createElement("div");
  asked.className = "question";
  asked.textContent = question;
  const answer = document.createElement("div");
  answer.className = "answer";
  answer.dataset.done = "false";
  turn.append(asked, answer);
  $("history").appendChild(turn);
  return answer;
}

async function ask(event) {
  event.preventDefault();
  const question = $("question").value.trim() || $("question").placeholder;
  if (state.busy) return;
  if (!state.clipId && !state.audio) return setStatus("Choose a stored clip or upload audio first.", true);
  const number = (id, fallback) => ($(id).value.trim() === "" ? fallback : Number($(id).value));
  const body = { model: state.model, messages: messages(question), stream: true,
                 temperature: number("temperature", 0.6), top_p: number("top-p", 0.8),
                 max_tokens: number("max-tokens", 256) };
  if (state.clipId) body.clip_id = state.clipId;
  state.busy = true;
  $("ask").disabled = true;
  const answer = addTurn(question);
  setStatus("answering…");
  let text = "";
  const signal = abortable("asking");
  try {
    const response = await api("/v1/chat/completions", { method: "POST", body: JSON.stringify(body), signal });
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const line = buffer.slice(0, end).trim();
        buffer = buffer.slice(end + 2);
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data === "[DONE]") continue;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new Error(chunk.error.message);
        for (const choice of chunk.choices) {
          if (choice.delta && choice.delta.content) {
            text += choice.delta.content;
            answer.textContent = text;
          }
        }
      }
    }
    state.history.push([question, text]);
    $("question").value = "";
    setStatus("done");
  } catch (error) {
    if (error.name === "AbortError") {
      setStatus("stopped: a new conversation began");
    } else {
      answer.classList.add("error");
      answer.textContent = error.message;
      setStatus(error.message, true);
    }
  } finally {
    answer.dataset.done = "true";
    state.busy = false;
    $("ask").disabled = false;
  }
}

async function start() {
  $("api-key").value = localStorage.getItem("mullama-api-key") || "";
  $("api-key").addEventListener("change", () => {
    localStorage.setItem("mullama-api-key", $("api-key").value.trim());
    search();
  });
  $("clip-search").addEventListener("input", () => {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(search, 200);
  });
  $("upload").addEventListener("change", () => { if ($("upload").files[0]) upload($("upload").files[0]); });
  $("ask-form").addEventListener("submit", ask);
  $("new-chat").addEventListener("click", resetConversation);
  try {
    const health = await (await fetch("/health")).json();
    state.model = health.model;
    $("model").textContent = `${health.model} · ${health.stored_clips} stored clips`;
  } catch (error) {
    setStatus(`the server does not answer: ${error.message}`, true);
  }
  search();
}

start();
