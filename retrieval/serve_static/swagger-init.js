"use strict";
// Starts Swagger UI on /docs. Everything it loads comes from this server (see retrieval.serve.docs).
window.addEventListener("load", () => {
  const root = document.getElementById("swagger-ui");
  window.ui = SwaggerUIBundle({
    url: root.dataset.spec,
    dom_id: "#swagger-ui",
    layout: "BaseLayout",
    deepLinking: true,
    showExtensions: true,
    showCommonExtensions: true,
    validatorUrl: null,            // the public validator badge would call another site
    persistAuthorization: false,   // the API key stays in this tab's memory only
    presets: [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset],
  });
});
