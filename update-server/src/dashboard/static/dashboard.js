// Platte dashboard: progressive enhancement only; every page works without this script.
// 1. Times are shown in the browser's time zone (the UTC text stays as the tooltip).
// 2. Pages whose <body> carries data-refresh="N" reload every N seconds, unless the user
//    is typing in or has ticked something in a form on the page.
"use strict";
(function () {
  for (const t of document.querySelectorAll("time[datetime]")) {
    const d = new Date(t.getAttribute("datetime"));
    if (!isNaN(d.getTime())) {
      t.title = t.textContent;
      t.textContent = d.toLocaleString();
    }
  }
  const secs = parseInt(document.body.dataset.refresh || "", 10);
  if (secs > 0) {
    let touched = false;
    document.addEventListener("input", function () { touched = true; });
    setInterval(function () {
      const a = document.activeElement;
      const busy = a && (a.tagName === "INPUT" || a.tagName === "SELECT" || a.tagName === "TEXTAREA");
      if (!touched && !busy && document.visibilityState === "visible") {
        location.reload();
      }
    }, secs * 1000);
  }
})();
