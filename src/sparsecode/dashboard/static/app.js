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
