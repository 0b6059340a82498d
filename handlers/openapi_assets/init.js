// Renders /api/openapi.json with Swagger UI. A file of its own, not an inline script, so that the page's
// Content-Security-Policy can allow scripts from our origin only.
"use strict";

window.ui = SwaggerUIBundle({
  // Relative to /api/docs/, so the page also works behind a proxy that mounts the API under a prefix.
  url: new URL("../openapi.json", window.location.href).href,
  dom_id: "#swagger-ui",
  deepLinking: true,
  // The default validator badge would send the document to validator.swagger.io.
  validatorUrl: null,
  presets: [SwaggerUIBundle.presets.apis],
  layout: "BaseLayout",
  tryItOutEnabled: false,
  persistAuthorization: false,
});
