// Click a header to sort by it (again to reverse). Cells sort by their data-value: numbers as
// numbers, text with numeric-aware comparison, empty cells always last; ties keep the order
// of the leaderboard (data-index).
document.querySelectorAll("table.runs").forEach((table) => {
  const headers = Array.from(table.tHead.rows[0].cells);
  headers.forEach((header, column) => {
    header.addEventListener("click", () => {
      const ascending = header.getAttribute("aria-sort") !== "ascending";
      headers.forEach((h) => h.removeAttribute("aria-sort"));
      header.setAttribute("aria-sort", ascending ? "ascending" : "descending");
      const body = table.tBodies[0];
      const value = (row) => row.cells[column].dataset.value;
      const rows = Array.from(body.rows).sort((a, b) => {
        const x = value(a), y = value(b);
        const order = Number(a.dataset.index) - Number(b.dataset.index);
        if (x === "" || y === "") return (x === "") - (y === "") || order;
        const nx = Number(x), ny = Number(y);
        const c = Number.isNaN(nx) || Number.isNaN(ny)
          ? x.localeCompare(y, undefined, { numeric: true }) : nx - ny;
        return (ascending ? c : -c) || order;
      });
      body.append(...rows);
    });
  });
});
