// Starts Swagger UI on /api/docs. An external file, not an inline script, so the page's
// Content-Security-Policy can be script-src 'self' alone.
window.addEventListener("load", function () {
  var container = document.getElementById("swagger-ui");
  window.ui = SwaggerUIBundle({
    url: container.getAttribute("data-spec-url"),
    dom_id: "#swagger-ui",
    deepLinking: true,
    displayOperationId: true,
    persistAuthorization: false,
    validatorUrl: null
  });
});
