// Small conveniences; every page works without JavaScript.
document.addEventListener("click", (event) => {
  // a click anywhere on a feature-list row opens that feature
  const row = event.target.closest("table#features tbody tr[data-id]");
  if (row && !event.target.closest("a")) window.location = "/features/" + row.dataset.id;
});
document.addEventListener("keydown", (event) => {
  // "/" focuses the search box
  if (event.key === "/" && document.activeElement.tagName !== "INPUT" && document.activeElement.tagName !== "TEXTAREA") {
    const box = document.querySelector(".search input");
    if (box) { event.preventDefault(); box.focus(); }
  }
});
// "what fires here?": hovering a feature shades the pasted text by that feature's activation on each token
document.querySelectorAll(".feature-chip").forEach((chip) => {
  const tokens = document.querySelectorAll(".fires-text .tok");
  const acts = JSON.parse(chip.dataset.acts);
  const top = Math.max(...acts);
  chip.addEventListener("mouseenter", () => tokens.forEach((t, i) => {
    t.style.setProperty("--a", top > 0 ? Math.max(acts[i], 0) / top : 0);
    t.dataset.act = acts[i].toFixed(3);
  }));
  chip.addEventListener("mouseleave", () => tokens.forEach((t) => {
    t.style.setProperty("--a", 0);
    delete t.dataset.act;
  }));
});
