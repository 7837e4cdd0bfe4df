"use strict";
// Starts ReDoc on /redoc. Everything it loads comes from this server (see retrieval.serve.docs).
window.addEventListener("load", () => {
  const root = document.getElementById("redoc");
  Redoc.init(root.dataset.spec, { hideDownloadButton: false, disableSearch: false }, root);
});
