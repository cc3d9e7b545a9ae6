// dfshield moderator UI: progressive enhancement only. Everything works without it.
// - timeline: Left/Right/Home/End move between frames, Enter follows the link;
// - grid: arrow keys move between face cards;
// - a running analysis polls status.json and reloads when a frame or the status changes.
"use strict";

function arrowNav(container, selector, keys) {
  if (!container) return;
  container.addEventListener("keydown", (ev) => {
    const items = Array.from(container.querySelectorAll(selector));
    const at = items.indexOf(document.activeElement);
    if (at < 0) return;
    let to = null;
    if (keys.next.includes(ev.key)) to = Math.min(at + 1, items.length - 1);
    else if (keys.prev.includes(ev.key)) to = Math.max(at - 1, 0);
    else if (ev.key === "Home") to = 0;
    else if (ev.key === "End") to = items.length - 1;
    if (to === null) return;
    ev.preventDefault();
    items[to].focus();
  });
}

function pollProgress(box) {
  if (!box) return;
  const url = box.dataset.statusUrl;
  let last = null;
  const label = box.querySelector("label");
  const bar = box.querySelector("progress");
  async function tick() {
    try {
      const resp = await fetch(url, { credentials: "same-origin", cache: "no-store" });
      if (!resp.ok) return;
      const s = await resp.json();
      const key = s.status + ":" + s.frames_done;
      if (bar) { bar.max = s.frames_total || 1; bar.value = s.frames_done; }
      if (label) label.textContent = s.status + ": " + s.frames_done + " of " + (s.frames_total ?? "?") + " frames";
      if (last !== null && key !== last) { window.location.reload(); return; }
      last = key;
      if (s.status === "done" || s.status === "failed") { window.location.reload(); return; }
    } catch (e) { /* network hiccup: try again */ }
    window.setTimeout(tick, 1500);
  }
  window.setTimeout(tick, 1000);
}

document.addEventListener("DOMContentLoaded", () => {
  arrowNav(document.getElementById("timeline"), "a.cell",
           { next: ["ArrowRight", "ArrowDown"], prev: ["ArrowLeft", "ArrowUp"] });
  arrowNav(document.getElementById("grid"), "article.card",
           { next: ["ArrowRight", "ArrowDown"], prev: ["ArrowLeft", "ArrowUp"] });
  pollProgress(document.getElementById("progress"));
});
