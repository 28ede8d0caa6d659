// Progressive enhancement only: every page reads and works without it.
// Copy buttons for DNS records, "select all" for the queue, CSV file → textarea.
document.addEventListener("click", (e) => {
  const copy = e.target.closest("[data-copy]");
  if (copy) {
    navigator.clipboard.writeText(copy.dataset.copy).then(() => {
      const label = copy.textContent;
      copy.textContent = "Copied";
      setTimeout(() => { copy.textContent = label; }, 1200);
    });
  }
  const all = e.target.closest("[data-select-all]");
  if (all) {
    document.querySelectorAll(`input[name="${all.dataset.selectAll}"]`)
      .forEach((box) => { box.checked = all.checked; });
  }
});
document.addEventListener("change", (e) => {
  const file = e.target.closest("input[data-fill]");
  if (file && file.files[0]) {
    file.files[0].text().then((text) => { document.getElementById(file.dataset.fill).value = text; });
  }
});
