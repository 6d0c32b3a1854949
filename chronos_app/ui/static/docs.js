// Swagger UI over this server's /openapi.json. "Authorize" takes a bearer token; the dashboard's token
// (sessionStorage, same origin) is filled in when there is one.
window.addEventListener("load", () => {
  const ui = SwaggerUIBundle({
    url: "/openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    tryItOutEnabled: false,
    persistAuthorization: false,
    validatorUrl: null,
    onComplete: () => {
      const token = sessionStorage.getItem("chronos.token");
      if (token) {
        ui.authActions.authorize({bearer: {name: "bearer", schema: {type: "http", scheme: "bearer"},
                                           value: token}});
      }
    },
  });
  window.ui = ui;
});
