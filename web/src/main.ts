// Entry point of the single-page app served at /ui/.
const root = document.getElementById("app");
if (root) root.textContent = "pacskit workstation";
